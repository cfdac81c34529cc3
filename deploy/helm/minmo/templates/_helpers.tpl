{{/*
Shared templates of the MinMo chart. The five components (duplex, encoder, llm, voicelm, vocoder) are one shape,
so every per-component object (Deployment, Services, HPA, ScaledObject, PDB, NetworkPolicy) is one template here,
called in a loop by the files next to this one with the component context: dict "root" $ "name" NAME "c" VALUES.
*/}}

{{/* All components, in the order of the data flow; the first is the front door. */}}
{{- define "minmo.components" -}}duplex encoder llm voicelm vocoder{{- end }}

{{/* The components that run a model (they take a runtime, a device and a dtype); the duplex holds only the VAD. */}}
{{- define "minmo.modelComponents" -}}encoder llm voicelm vocoder{{- end }}

{{- define "minmo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "minmo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "minmo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Argument: the root context. */}}
{{- define "minmo.labels" -}}
helm.sh/chart: {{ include "minmo.chart" . }}
app.kubernetes.io/name: {{ include "minmo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: minmo
{{- end }}

{{/* Pod selector of one component. Argument: dict root, name. */}}
{{- define "minmo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "minmo.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Object name of a component: `<fullname>-<component>` (the ClusterIP Service and the Deployment). */}}
{{- define "minmo.componentName" -}}
{{- printf "%s-%s" (include "minmo.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service of a component: one DNS A record per ready pod, for client-side round_robin. */}}
{{- define "minmo.headlessName" -}}
{{- printf "%s-%s-headless" (include "minmo.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The gRPC target the duplex dials for a peer component: its headless Service through gRPC's DNS resolver, so the
channel's round_robin policy sees every ready pod and spreads new session streams over them. A ClusterIP would
pin all of a duplex pod's streams to the one pod its HTTP/2 connection landed on (DESIGN.md section 9).
*/}}
{{- define "minmo.peerTarget" -}}
{{- $c := index .root.Values .name -}}
dns:///{{ include "minmo.headlessName" . }}:{{ $c.port }}
{{- end }}

{{- define "minmo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "minmo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of a component: its own override, else the release-wide image; the tag defaults to appVersion. */}}
{{- define "minmo.image" -}}
{{- $repository := default .root.Values.image.repository .c.image.repository }}
{{- $tag := default (default .root.Chart.AppVersion .root.Values.image.tag) .c.image.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* An environment value as a string: whole numbers without an exponent (values arrive as float64). */}}
{{- define "minmo.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}{{ printf "%d" (int64 .) }}
{{- else }}{{ toString . }}{{- end }}
{{- end }}

{{/* Seconds a pod may take to stop: the preStop wait, the drain grace and a margin. */}}
{{- define "minmo.terminationGrace" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.graceSeconds .Values.drain.marginSeconds }}
{{- end }}

{{/* Where the TLS Secret is mounted in every MinMo container. */}}
{{- define "minmo.tlsDir" -}}/etc/minmo/tls{{- end }}
{{- define "minmo.apiKeysDir" -}}/etc/minmo/auth{{- end }}

{{/* The Secret and key the duplex reads REDIS_URL from. Argument: the root context. */}}
{{- define "minmo.redisSecret" -}}
{{- if eq .Values.redis.mode "bundled" }}
{{- printf "%s-redis" (include "minmo.fullname" .) }}
{{- else if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.url }}
{{- printf "%s-redis-url" (include "minmo.fullname" .) }}
{{- else }}
{{- fail "redis.mode=external needs redis.url or redis.existingSecret" }}
{{- end }}
{{- end }}

{{- define "minmo.redisSecretKey" -}}
{{- if and (eq .Values.redis.mode "external") .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}
{{- else }}redis-url{{- end }}
{{- end }}

{{/* Hardened container security context (restricted Pod Security Standard). */}}
{{- define "minmo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod security context. Argument: dict uid, gid. */}}
{{- define "minmo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Health probes of a MinMo container. Plaintext: Kubernetes' native gRPC probes on the service port
(grpc.health.v1, overall server health). With TLS, native probes cannot verify a certificate, so the probe execs
`minmo health` in the container with the mounted certificate. Argument: dict root, c, kind (startup|readiness|liveness).
*/}}
{{- define "minmo.probeAction" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command:
    - minmo
    - health
    - --server
    - 127.0.0.1:{{ .c.port }}
    - --tls-ca
    - {{ include "minmo.tlsDir" . }}/ca.crt
    - --tls-server-name
    - {{ include "minmo.componentName" . }}
    {{- if .root.Values.tls.mutual }}
    - --tls-cert
    - {{ include "minmo.tlsDir" . }}/tls.crt
    - --tls-key
    - {{ include "minmo.tlsDir" . }}/tls.key
    {{- end }}
{{- else }}
grpc:
  port: {{ .c.port }}
{{- end }}
{{- end }}

{{/* The environment of a component's container. Argument: the component context. */}}
{{- define "minmo.env" -}}
{{- $root := .root }}{{ $c := .c }}{{ $name := .name }}
{{- $isModel := has $name (splitList " " (include "minmo.modelComponents" $root)) }}
{{- $env := dict
  "MINMO_HOST" "0.0.0.0"
  "MINMO_PORT" $c.port
  "MINMO_METRICS_PORT" $c.metricsPort
  "MINMO_MAX_SESSIONS" $c.maxSessions
  "MINMO_MAX_MESSAGE_BYTES" $root.Values.grpc.maxMessageBytes
  "MINMO_GRACE_S" $root.Values.drain.graceSeconds
  "MINMO_CONFIG" $root.Values.model.config
  "MINMO_REFLECTION" (ternary "1" "0" $root.Values.grpc.reflection)
  "MINMO_SLOW_CLIENT_S" $root.Values.grpc.slowClientSeconds
}}
{{- if $isModel }}
{{- $_ := set $env "MINMO_CHECKPOINT" $root.Values.model.checkpoint }}
{{- $_ := set $env "MINMO_DTYPE" $root.Values.model.dtype }}
{{- $_ := set $env "MINMO_DEVICE" (ternary "cuda" "cpu" (gt (int $c.gpus) 0)) }}
{{- $_ := set $env "MINMO_TORCH_THREADS" (include "minmo.torchThreads" $c) }}
{{- $_ := set $env "MINMO_STEADY_WAIT_MS" $root.Values.model.steadyWaitMs }}
{{- if $root.Values.triton.enabled }}
{{- $_ := set $env "MINMO_RUNTIME" "triton" }}
{{- $_ := set $env "MINMO_TRITON_URL" (printf "%s-triton:%v" (include "minmo.fullname" $root) $root.Values.triton.grpcPort) }}
{{- else }}
{{- $_ := set $env "MINMO_RUNTIME" "local" }}
{{- end }}
{{- end }}
{{- if eq $name "duplex" }}
{{- range $peer := without (splitList " " (include "minmo.components" $root)) "duplex" }}
{{- $_ := set $env (printf "MINMO_%s_ADDR" (upper $peer)) (include "minmo.peerTarget" (dict "root" $root "name" $peer)) }}
{{- end }}
{{- if $root.Values.auth.apiKeysSecret }}
{{- $_ := set $env "MINMO_API_KEYS_FILE" (printf "%s/api-keys" (include "minmo.apiKeysDir" $root)) }}
{{- end }}
{{- end }}
{{- with $root.Values.otel }}
{{- if .endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_INSECURE" (ternary "true" "false" .insecure) }}
{{- end }}
{{- if .tracesEndpoint }}{{ $_ := set $env "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" .tracesEndpoint }}{{ end }}
{{- if .tracesExporter }}{{ $_ := set $env "OTEL_TRACES_EXPORTER" .tracesExporter }}{{ end }}
{{- end }}
{{- if $root.Values.tls.enabled }}
{{- $_ := set $env "MINMO_TLS_CERT" (printf "%s/tls.crt" (include "minmo.tlsDir" $root)) }}
{{- $_ := set $env "MINMO_TLS_KEY" (printf "%s/tls.key" (include "minmo.tlsDir" $root)) }}
{{- if $root.Values.tls.mutual }}
{{- $_ := set $env "MINMO_TLS_CA" (printf "%s/ca.crt" (include "minmo.tlsDir" $root)) }}
{{- end }}
{{- end }}
{{- $env = mergeOverwrite $env $c.settings $c.env }}
- name: MINMO_REPLICA_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if eq $name "duplex" }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "minmo.redisSecret" $root }}
      key: {{ include "minmo.redisSecretKey" $root }}
{{- end }}
{{- range $key := keys $env | sortAlpha }}
- name: {{ $key }}
  value: {{ include "minmo.envValue" (get $env $key) | quote }}
{{- end }}
{{- end }}

{{/* Resources of a component's container: the values' requests and limits plus its GPUs. Argument: dict c. */}}
{{- define "minmo.resources" -}}
{{- $requests := deepCopy (default dict .c.resources.requests) }}
{{- $limits := deepCopy (default dict .c.resources.limits) }}
{{- if gt (int .c.gpus) 0 }}
{{- $_ := set $requests "nvidia.com/gpu" (int .c.gpus) }}
{{- $_ := set $limits "nvidia.com/gpu" (int .c.gpus) }}
{{- end }}
requests:
  {{- toYaml $requests | nindent 2 }}
limits:
  {{- toYaml $limits | nindent 2 }}
{{- end }}

{{/* Default placement: prefer spreading a component's pods over nodes. Argument: the component context. */}}
{{- define "minmo.affinity" -}}
{{- if .c.affinity }}
{{- toYaml .c.affinity }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "minmo.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}

{{/* Scaling behaviour shared by the HPAs and KEDA: quick to add pods, slow to remove them (live sessions). */}}
{{- define "minmo.scalingBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleUpStabilizationSeconds }}
  policies:
    - type: Percent
      value: 100
      periodSeconds: 60
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownStabilizationSeconds }}
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.scaleDownPodsPerMinute }}
      periodSeconds: 60
{{- end }}

{{/* Does this component scale with a KEDA ScaledObject (else a CPU HPA)? Argument: the component context. */}}
{{- define "minmo.usesKeda" -}}
{{- if and .c.autoscaling.enabled .root.Values.autoscaling.keda.enabled (ne .name "duplex") }}true{{ end }}
{{- end }}

{{/* torch's CPU threads for a model component: its CPU limit, rounded up (torch would otherwise count the node's
cores, not the pod's share, and its threads would spin against each other). Argument: the component values. */}}
{{- define "minmo.torchThreads" -}}
{{- $cpu := toString (dig "limits" "cpu" "1" (default dict .resources)) }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (div (add (int (trimSuffix "m" $cpu)) 999) 1000) }}
{{- else }}
{{- max 1 (int (ceil (float64 $cpu))) }}
{{- end }}
{{- end }}
