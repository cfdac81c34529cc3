"""`minmo k8s check --release NAME`: is a Helm release of MinMo serving, component by component?

For each component of the release (the chart labels every object with app.kubernetes.io/instance and
app.kubernetes.io/component) it reports ready replicas against desired, the ready addresses behind its Services
(the headless one is what the duplex's round_robin spreads sessions over), and the HPA's state (KEDA's
ScaledObjects drive an HPA too). `build_report` is pure: it takes the Kubernetes client's own model objects, so it
is tested on objects built with those models; `fetch_report` is the thin part that asks the API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from kubernetes import client

INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SCALING_LIMITED = "ScalingLimited"


@dataclass
class EndpointsStatus:
    """Addresses behind one Service: ready ones receive traffic (and, headless, sessions from round_robin)."""

    service: str
    ready: int = 0
    not_ready: int = 0


@dataclass
class AutoscalerStatus:
    """An HPA on the component (the chart's CPU HPA, or the one KEDA runs for a ScaledObject)."""

    name: str
    min_replicas: int
    max_replicas: int
    current_replicas: int
    desired_replicas: int
    metrics: list[str] = field(default_factory=list)  # "name=value" of each metric the HPA last read
    limited: str = ""  # why scaling is held at a bound (ScalingLimited condition), "" when it is not

    @property
    def at_max(self) -> bool:
        return self.desired_replicas >= self.max_replicas


@dataclass
class ComponentStatus:
    name: str
    deployment: str
    desired: int
    ready: int
    updated: int
    available: int
    endpoints: list[EndpointsStatus] = field(default_factory=list)
    autoscaler: AutoscalerStatus | None = None

    def problems(self) -> list[str]:
        found = []
        if self.ready < self.desired:
            found.append(f"{self.name}: {self.ready}/{self.desired} replicas ready")
        if self.desired > 0 and self.updated < self.desired:
            found.append(f"{self.name}: rollout in progress ({self.updated}/{self.desired} updated)")
        for endpoints in self.endpoints:
            if self.desired > 0 and endpoints.ready == 0:
                found.append(f"{self.name}: Service {endpoints.service} has no ready endpoints")
        if self.autoscaler is not None and self.autoscaler.at_max:
            found.append(f"{self.name}: autoscaler at its maximum of {self.autoscaler.max_replicas} replicas")
        return found


@dataclass
class ReleaseReport:
    release: str
    namespace: str
    components: list[ComponentStatus]

    def problems(self) -> list[str]:
        if not self.components:
            return [f"no MinMo components of release {self.release!r} in namespace {self.namespace!r}"]
        return [problem for component in self.components for problem in component.problems()]

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "problems": self.problems(), "healthy": self.healthy}, indent=2)


def build_report(
    release: str,
    namespace: str,
    deployments: Iterable[client.V1Deployment],
    endpoint_slices: Iterable[client.V1EndpointSlice],
    autoscalers: Iterable[client.V2HorizontalPodAutoscaler],
) -> ReleaseReport:
    """Join the release's Deployments with their Services' EndpointSlices and the HPAs that target them."""
    slices_by_service: dict[str, list[client.V1EndpointSlice]] = {}
    for item in endpoint_slices:
        labels = item.metadata.labels or {}
        if labels.get(INSTANCE_LABEL) == release and SERVICE_NAME_LABEL in labels:
            slices_by_service.setdefault(labels[SERVICE_NAME_LABEL], []).append(item)
    hpa_by_target = {hpa.spec.scale_target_ref.name: hpa for hpa in autoscalers}
    components = []
    for deployment in deployments:
        labels = deployment.metadata.labels or {}
        if labels.get(INSTANCE_LABEL) != release or COMPONENT_LABEL not in labels:
            continue
        name = deployment.metadata.name
        status = deployment.status or client.V1DeploymentStatus()
        component = ComponentStatus(
            name=labels[COMPONENT_LABEL],
            deployment=name,
            desired=deployment.spec.replicas if deployment.spec.replicas is not None else 1,
            ready=status.ready_replicas or 0,
            updated=status.updated_replicas or 0,
            available=status.available_replicas or 0,
            endpoints=[
                _endpoints(service, slices)
                for service, slices in sorted(slices_by_service.items())
                if _same_component(slices, labels[COMPONENT_LABEL])
            ],
            autoscaler=_autoscaler(hpa_by_target[name]) if name in hpa_by_target else None,
        )
        components.append(component)
    return ReleaseReport(release, namespace, sorted(components, key=lambda item: item.name))


def _same_component(slices: list[client.V1EndpointSlice], component: str) -> bool:
    return any((item.metadata.labels or {}).get(COMPONENT_LABEL) == component for item in slices)


def _endpoints(service: str, slices: list[client.V1EndpointSlice]) -> EndpointsStatus:
    status = EndpointsStatus(service)
    for item in slices:
        for endpoint in item.endpoints or []:
            # EndpointSlice semantics: a nil `ready` condition means ready.
            ready = endpoint.conditions is None or endpoint.conditions.ready is not False
            count = len(endpoint.addresses or [])
            if ready:
                status.ready += count
            else:
                status.not_ready += count
    return status


def _autoscaler(hpa: client.V2HorizontalPodAutoscaler) -> AutoscalerStatus:
    status = hpa.status or client.V2HorizontalPodAutoscalerStatus(desired_replicas=0)
    held = [c for c in status.conditions or [] if c.type == SCALING_LIMITED and c.status == "True"]
    limited = f"{held[0].reason}: {held[0].message}" if held else ""
    return AutoscalerStatus(
        name=hpa.metadata.name,
        min_replicas=hpa.spec.min_replicas or 1,
        max_replicas=hpa.spec.max_replicas,
        current_replicas=status.current_replicas or 0,
        desired_replicas=status.desired_replicas or 0,
        metrics=[_metric_text(metric) for metric in status.current_metrics or []],
        limited=limited,
    )


def _metric_text(metric: client.V2MetricStatus) -> str:
    """One current metric of an HPA as "name=value" (resource, external, pods or object metrics)."""
    if metric.resource is not None:
        current = metric.resource.current
        value = f"{current.average_utilization}%" if current.average_utilization is not None else current.average_value
        return f"{metric.resource.name}={value}"
    for source in (metric.external, metric.pods, metric.object):
        if source is not None:
            current = source.current
            value = current.average_value if current.average_value is not None else current.value
            return f"{source.metric.name}={value}"
    return metric.type


def fetch_report(release: str, namespace: str, api_client: client.ApiClient) -> ReleaseReport:
    """Read the release's objects from the API server (kubeconfig or in-cluster credentials) and build the report."""
    selector = f"{INSTANCE_LABEL}={release}"
    deployments = client.AppsV1Api(api_client).list_namespaced_deployment(namespace, label_selector=selector).items
    slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(namespace, label_selector=selector)
    hpas = client.AutoscalingV2Api(api_client).list_namespaced_horizontal_pod_autoscaler(namespace).items
    return build_report(release, namespace, deployments, slices.items, hpas)
