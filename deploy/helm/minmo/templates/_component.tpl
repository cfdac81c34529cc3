{{/*
The per-component objects. Each takes the component context (dict "root" $ "name" NAME "c" VALUES) and is
rendered once per enabled component by the loop files (deployments.yaml, services.yaml, ...).
*/}}

{{- define "minmo.deployment" -}}
{{- $root := .root }}{{ $c := .c }}{{ $name := .name }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "minmo.componentName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  # A rollout adds a pod before it drains one, so capacity never dips below the replica count.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "minmo.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "minmo.labels" $root | nindent 8 }}
        {{- include "minmo.selectorLabels" . | nindent 8 }}
      {{- with $c.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "minmo.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- include "minmo.podSecurityContext" (dict "uid" $root.Values.security.runAsUser "gid" $root.Values.security.runAsGroup) | nindent 8 }}
      # Longer than preStop + MINMO_GRACE_S, so the drain finishes before the kubelet kills the process.
      terminationGracePeriodSeconds: {{ include "minmo.terminationGrace" $root }}
      containers:
        - name: {{ $name }}
          image: {{ include "minmo.image" . | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["minmo"]
          args: ["serve", {{ $name | quote }}]
          ports:
            - name: grpc
              containerPort: {{ $c.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $c.metricsPort }}
              protocol: TCP
          env:
            {{- include "minmo.env" . | trim | nindent 12 }}
          resources:
            {{- include "minmo.resources" . | trim | nindent 12 }}
          # Model loading and warm-up can take minutes; liveness and readiness start after it.
          startupProbe:
            {{- include "minmo.probeAction" . | nindent 12 }}
            periodSeconds: 5
            timeoutSeconds: 5
            failureThreshold: 120
          readinessProbe:
            {{- include "minmo.probeAction" . | nindent 12 }}
            periodSeconds: 5
            timeoutSeconds: 5
            failureThreshold: 2
          livenessProbe:
            {{- include "minmo.probeAction" . | nindent 12 }}
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          lifecycle:
            # Wait for the endpoints to drop this pod before SIGTERM starts the drain: no new sessions arrive
            # while the old ones finish (SIGTERM -> NOT_SERVING -> MINMO_GRACE_S).
            preStop:
              exec:
                command: ["sleep", {{ $root.Values.drain.preStopSeconds | quote }}]
          securityContext:
            {{- include "minmo.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: cache
              mountPath: /home/minmo/.cache
            {{- if $root.Values.tls.enabled }}
            - name: tls
              mountPath: {{ include "minmo.tlsDir" . }}
              readOnly: true
            {{- end }}
            {{- if and (eq $name "duplex") $root.Values.auth.apiKeysSecret }}
            - name: api-keys
              mountPath: {{ include "minmo.apiKeysDir" . }}
              readOnly: true
            {{- end }}
      volumes:
        # The root file system is read-only: scratch space and library caches live in emptyDirs.
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        - name: cache
          emptyDir:
            sizeLimit: 2Gi
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ required "tls.secretName is required when tls.enabled" $root.Values.tls.secretName }}
        {{- end }}
        {{- if and (eq $name "duplex") $root.Values.auth.apiKeysSecret }}
        - name: api-keys
          secret:
            secretName: {{ $root.Values.auth.apiKeysSecret }}
        {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        {{- include "minmo.affinity" . | nindent 8 }}
{{- end }}

{{/* The ClusterIP Service (stable name, metrics scraping, the front door) and the headless one (client LB). */}}
{{- define "minmo.services" -}}
{{- $root := .root }}{{ $c := .c }}{{ $name := .name }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "minmo.componentName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
    minmo.io/scrape: "true"
  {{- if and (eq $name "duplex") $root.Values.frontDoor.annotations }}
  annotations:
    {{- toYaml $root.Values.frontDoor.annotations | nindent 4 }}
  {{- end }}
spec:
  type: {{ ternary $root.Values.frontDoor.serviceType "ClusterIP" (eq $name "duplex") }}
  selector:
    {{- include "minmo.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $c.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $c.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "minmo.headlessName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  clusterIP: None
  # Only ready pods get DNS records: a draining pod (NOT_SERVING) leaves the callers' round_robin lists.
  publishNotReadyAddresses: false
  selector:
    {{- include "minmo.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $c.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}

{{/* CPU HPA (autoscaling/v2): the front door always, the model components when KEDA is off. */}}
{{- define "minmo.hpa" -}}
{{- $root := .root }}{{ $c := .c }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "minmo.componentName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "minmo.componentName" . }}
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    {{- include "minmo.scalingBehavior" $root | nindent 4 }}
{{- end }}

{{/*
KEDA ScaledObject of a model component, on its serving signal: active streams per pod against the per-pod capacity
(MINMO_MAX_SESSIONS) at the target utilisation, raced against the rate of refused sessions (RESOURCE_EXHAUSTED):
KEDA scales to the larger of the two. GPU utilisation is a dashboard, not a signal (a GPU can be busy and keep up).
*/}}
{{- define "minmo.scaledObject" -}}
{{- $root := .root }}{{ $c := .c }}
{{- $keda := $root.Values.autoscaling.keda }}
{{- $service := include "minmo.componentName" . }}
{{- $selector := printf "namespace=%q,service=%q" $root.Release.Namespace $service }}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $service }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $service }}
  minReplicaCount: {{ $c.autoscaling.minReplicas }}
  maxReplicaCount: {{ $c.autoscaling.maxReplicas }}
  pollingInterval: {{ $keda.pollingInterval }}
  cooldownPeriod: {{ $root.Values.autoscaling.scaleDownStabilizationSeconds }}
  advanced:
    horizontalPodAutoscalerConfig:
      name: {{ $service }}
      behavior:
        {{- include "minmo.scalingBehavior" $root | nindent 8 }}
  triggers:
    - type: prometheus
      name: active-sessions
      metricType: AverageValue
      metadata:
        serverAddress: {{ $keda.prometheusAddress | quote }}
        query: {{ printf "sum(minmo_active_sessions{%s})" $selector | quote }}
        threshold: {{ printf "%g" (mulf $c.maxSessions $c.autoscaling.targetSessionUtilization) | quote }}
    - type: prometheus
      name: refusals
      metricType: AverageValue
      metadata:
        serverAddress: {{ $keda.prometheusAddress | quote }}
        query: {{ printf "sum(rate(minmo_errors_total{%s,code=\"RESOURCE_EXHAUSTED\"}[2m]))" $selector | quote }}
        threshold: {{ printf "%g" (float64 $keda.refusalRateThreshold) | quote }}
{{- end }}

{{- define "minmo.pdb" -}}
{{- $root := .root }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "minmo.componentName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  maxUnavailable: {{ .c.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "minmo.selectorLabels" . | nindent 6 }}
{{- end }}

{{/*
Who may reach a component: the duplex from anywhere (it is the front door), every other component only from the
duplex pods of the release; metrics ports from the monitoring namespace.
*/}}
{{- define "minmo.networkPolicy" -}}
{{- $root := .root }}{{ $c := .c }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "minmo.componentName" . }}
  labels:
    {{- include "minmo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  podSelector:
    matchLabels:
      {{- include "minmo.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - ports:
        - port: grpc
          protocol: TCP
      {{- if ne .name "duplex" }}
      from:
        - podSelector:
            matchLabels:
              {{- include "minmo.selectorLabels" (dict "root" $root "name" "duplex") | nindent 14 }}
      {{- end }}
    - ports:
        - port: metrics
          protocol: TCP
      from:
        - namespaceSelector:
            matchLabels:
              {{- toYaml $root.Values.networkPolicy.metricsNamespaceLabels | nindent 14 }}
{{- end }}
