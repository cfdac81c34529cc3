"""The Helm chart, rendered by real Helm for every chart-testing scenario in deploy/helm/minmo/ci/: schema, lint,
Kubernetes schema validation (1.30 and the newest schema kubernetes-validate has, strict), and the policies a
platform team checks on first review."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

import minmo
from minmo.k8s.schema import ValuesSchemaError, render_schema, values_schema

from .chart import (
    CHART_DIR,
    COMPONENTS,
    FULLNAME,
    MODEL_COMPONENTS,
    RELEASE,
    ROOT,
    SCENARIOS,
    TEST_HOOK,
    Rendered,
    render,
    render_notes,
    render_scenario,
    scenario_values,
)

KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring-servicemonitor-v1.json",
}
SCHEMA_DIR = Path(__file__).with_name("schemas")
GPU = "nvidia.com/gpu"
REQUIRED_SCENARIOS = {
    "cpu-bundled-redis", "gpu-triton", "external-redis", "tls-auth", "autoscaling", "everything",
}


def test_the_scenarios_cover_the_issue() -> None:
    assert set(SCENARIOS) >= REQUIRED_SCENARIOS


def test_values_schema_is_generated_from_values_yaml() -> None:
    """values.schema.json is what `minmo k8s schema` writes from values.yaml; regenerate it when this fails."""
    assert (CHART_DIR / "values.schema.json").read_text() == render_schema(CHART_DIR)


def test_every_values_key_needs_a_comment() -> None:
    with pytest.raises(ValuesSchemaError, match=r"key duplex\.port has no comment"):
        values_schema("# The front door.\nduplex:\n  port: 50051\n")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"duplex": {"replicaz": 3}}, "additional properties 'replicaz' not allowed"),
        ({"llm": {"gpus": "one"}}, "got string, want integer"),
        ({"redis": {"mode": "cluster"}}, "must be one of"),
        ({"autoscaling": {"keda": {"enabled": "yes"}}}, "got string, want boolean"),
        ({"vocoder": {"settings": {"MINMO_MAX_TOKENS_PER_MESAGE": 10}}}, "MINMO_MAX_TOKENS_PER_MESAGE"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict, complaint: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(complaint)):
        helm.Chart.load(CHART_DIR).render(values, name="typo", namespace="default")


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"] == minmo.__version__


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART_DIR, scenario_values(scenario), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_validates(scenario: str, version: str) -> None:
    """Core kinds against Kubernetes' own schemas (strict: unknown fields fail); custom resources, which
    kubernetes-validate has no schema for, against the small schemas in tests/deploy/schemas."""
    for obj in render_scenario(scenario).objects:
        custom = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if custom is None:
            kubernetes_validate.validate(obj, version, strict=True)
        else:
            jsonschema.validate(obj, json.loads((SCHEMA_DIR / custom).read_text()))


def test_custom_schemas_catch_a_misspelt_field() -> None:
    scaled_object = render_scenario("autoscaling").get("ScaledObject", f"{FULLNAME}-llm")
    broken = {**scaled_object, "spec": {**scaled_object["spec"], "minReplicas": 1}}
    schema = json.loads((SCHEMA_DIR / CUSTOM_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).read_text())
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate(broken, schema)


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_is_bounded_hardened_and_pinned(scenario: str) -> None:
    for name, spec in render_scenario(scenario).pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in _containers(spec):
            where = f"{name}/{container['name']}"
            assert container["resources"]["requests"] and container["resources"]["limits"], where
            assert set(container["resources"]["requests"]) <= set(container["resources"]["limits"]), where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_long_running_containers_have_probes_on_ports_they_open(scenario: str) -> None:
    """Init containers and the `helm test` pod run to completion, so only they go without probes."""
    rendered = render_scenario(scenario)
    for obj in rendered.workloads():
        for container in obj["spec"]["template"]["spec"]["containers"]:
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container[kind]
                where = f"{obj['metadata']['name']}/{container['name']} {kind}"
                action = next(key for key in ("grpc", "httpGet", "tcpSocket", "exec") if key in probe)
                if action == "exec":
                    continue
                port = probe[action]["port"]
                assert port in ports or port in ports.values(), where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_and_targets_match(scenario: str) -> None:
    """Every Service, PDB, HPA and ScaledObject points at pods or workloads the same render creates."""
    rendered = render_scenario(scenario)
    pod_labels = [obj["spec"]["template"]["metadata"]["labels"] for obj in rendered.workloads()]
    deployments = {obj["metadata"]["name"] for obj in rendered.of_kind("Deployment")}

    def selects_pods(selector: dict) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    for obj in rendered.workloads():
        assert obj["spec"]["selector"]["matchLabels"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
    for service in rendered.of_kind("Service"):
        assert selects_pods(service["spec"]["selector"]), service["metadata"]["name"]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert selects_pods(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    for scaler in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject"):
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments, scaler["metadata"]["name"]
    for policy in rendered.of_kind("NetworkPolicy"):
        assert selects_pods(policy["spec"]["podSelector"]["matchLabels"]), policy["metadata"]["name"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gpus_are_requested_exactly_where_the_values_ask(scenario: str) -> None:
    rendered = render_scenario(scenario)
    asked = {f"{FULLNAME}-{name}": rendered.values[name]["gpus"] for name in COMPONENTS}
    if rendered.values["triton"]["enabled"]:
        asked[f"{FULLNAME}-triton"] = rendered.values["triton"]["gpus"]
    for name, spec in rendered.pod_specs():
        for container in _containers(spec):
            resources = container["resources"]
            wanted = asked.get(name, 0) if container in spec["containers"] else 0
            assert resources["requests"].get(GPU, 0) == wanted, f"{name}/{container['name']}"
            assert resources["limits"].get(GPU, 0) == wanted, f"{name}/{container['name']}"


def test_gpu_scenarios_ask_for_gpus() -> None:
    assert render_scenario("gpu-triton").get("Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"][
        "containers"
    ][0]["resources"]["limits"][GPU] == 2
    inprocess = render_scenario("gpu-inprocess")
    assert inprocess.container("llm")["resources"]["limits"][GPU] == 1
    assert inprocess.env("llm")["MINMO_DEVICE"]["value"] == "cuda"
    assert GPU not in inprocess.container("encoder")["resources"]["limits"]
    assert inprocess.env("encoder")["MINMO_DEVICE"]["value"] == "cpu"



def test_model_services_get_torch_threads_for_their_cpu_limit() -> None:
    """torch would count the node's cores, not the pod's limit: each model container is told its share, rounded up."""
    limits = {"encoder": "500m", "llm": "1500m", "voicelm": "3", "vocoder": 0.5}
    rendered = render({name: {"resources": {"limits": {"cpu": cpu}}} for name, cpu in limits.items()})
    threads = {name: rendered.env(name)["MINMO_TORCH_THREADS"]["value"] for name in limits}
    assert threads == {"encoder": "1", "llm": "2", "voicelm": "3", "vocoder": "1"}
    assert render_scenario(SCENARIOS[0]).env("llm")["MINMO_TORCH_THREADS"]["value"].isdigit()
    assert "MINMO_TORCH_THREADS" not in render_scenario(SCENARIOS[0]).env("duplex")

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_outlive_their_drain(scenario: str) -> None:
    """terminationGracePeriodSeconds covers the preStop wait plus MINMO_GRACE_S, so a drain is never cut."""
    rendered = render_scenario(scenario)
    for name in COMPONENTS:
        spec = rendered.get("Deployment", f"{FULLNAME}-{name}")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace = float(rendered.env(name)["MINMO_GRACE_S"]["value"])
        assert spec["terminationGracePeriodSeconds"] > pre_stop + grace


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_duplex_dials_every_peer_through_its_headless_service(scenario: str) -> None:
    rendered = render_scenario(scenario)
    env = rendered.env("duplex")
    for peer in MODEL_COMPONENTS:
        headless = rendered.get("Service", f"{FULLNAME}-{peer}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        (port,) = headless["spec"]["ports"]
        assert env[f"MINMO_{peer.upper()}_ADDR"]["value"] == f"dns:///{FULLNAME}-{peer}-headless:{port['port']}"
        assert port["port"] == int(rendered.env(peer)["MINMO_PORT"]["value"])


def test_native_grpc_probes_without_tls_and_a_certificate_checking_probe_with_it() -> None:
    plain = render_scenario("cpu-bundled-redis").container("llm")
    assert plain["readinessProbe"]["grpc"] == {"port": 50053}
    tls = render_scenario("tls-auth").container("llm")
    command = tls["readinessProbe"]["exec"]["command"]
    assert command[:4] == ["minmo", "health", "--server", "127.0.0.1:50053"]
    mounts = {mount["mountPath"] for mount in tls["volumeMounts"]}
    assert all(path.startswith(tuple(mounts)) for path in command if path.startswith("/etc/minmo"))


def test_triton_serves_the_models_when_enabled() -> None:
    rendered = render_scenario("gpu-triton")
    triton = rendered.get("Deployment", f"{FULLNAME}-triton")["spec"]["template"]["spec"]
    assert triton["containers"][0]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    export = triton["initContainers"][0]
    assert export["command"] + export["args"][:2] == ["minmo", "triton", "export"]
    assert export["image"] == rendered.container("llm")["image"]
    assert triton["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    service = rendered.get("Service", f"{FULLNAME}-triton")
    grpc_port = next(port["port"] for port in service["spec"]["ports"] if port["name"] == "grpc")
    for name in MODEL_COMPONENTS:
        env = rendered.env(name)
        assert env["MINMO_RUNTIME"]["value"] == "triton"
        assert env["MINMO_TRITON_URL"]["value"] == f"{FULLNAME}-triton:{grpc_port}"
    assert "MINMO_RUNTIME" not in rendered.env("duplex")
    assert render_scenario("cpu-bundled-redis").env("llm")["MINMO_RUNTIME"]["value"] == "local"


def test_bundled_redis_keeps_an_append_only_file_on_a_volume_behind_a_password() -> None:
    rendered = render_scenario("cpu-bundled-redis")
    redis = rendered.get("StatefulSet", f"{FULLNAME}-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    secret = rendered.get("Secret", f"{FULLNAME}-redis")["stringData"]
    assert secret["redis-url"] == f"redis://:{secret['redis-password']}@{FULLNAME}-redis:6379/0"
    assert rendered.env("duplex")["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-redis"


def test_external_redis_comes_from_the_teams_secret_and_nothing_is_bundled() -> None:
    rendered = render_scenario("external-redis")
    assert rendered.of_kind("StatefulSet") == []
    assert rendered.env("duplex")["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "platform-redis", "key": "url"}
    with pytest.raises(helm.HelmError, match=r"needs redis\.url or redis\.existingSecret"):
        render({"redis": {"mode": "external"}})


def test_keda_scales_model_components_on_sessions_against_capacity() -> None:
    rendered = render_scenario("autoscaling")
    assert {obj["metadata"]["name"] for obj in rendered.of_kind("HorizontalPodAutoscaler")} == {f"{FULLNAME}-duplex"}
    llm = rendered.get("ScaledObject", f"{FULLNAME}-llm")
    sessions, refusals = llm["spec"]["triggers"]
    capacity = rendered.values["llm"]["maxSessions"] * rendered.values["llm"]["autoscaling"]["targetSessionUtilization"]
    assert float(sessions["metadata"]["threshold"]) == pytest.approx(capacity)
    assert "minmo_active_sessions" in sessions["metadata"]["query"] and f'service="{FULLNAME}-llm"' in sessions[
        "metadata"
    ]["query"]
    assert 'code="RESOURCE_EXHAUSTED"' in refusals["metadata"]["query"]
    behavior = llm["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
    assert "replicas" not in rendered.get("Deployment", f"{FULLNAME}-llm")["spec"]


def test_cpu_hpa_without_keda() -> None:
    rendered = render_scenario("cpu-hpa")
    hpas = {obj["metadata"]["name"]: obj for obj in rendered.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {f"{FULLNAME}-duplex", f"{FULLNAME}-llm", f"{FULLNAME}-vocoder"}
    assert rendered.of_kind("ScaledObject") == []
    metric = hpas[f"{FULLNAME}-llm"]["spec"]["metrics"][0]["resource"]
    assert metric == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}


def test_network_policies_open_only_the_front_door() -> None:
    rendered = render_scenario("everything")
    policies = {obj["metadata"]["name"]: obj for obj in rendered.of_kind("NetworkPolicy")}
    duplex_grpc = policies[f"{FULLNAME}-duplex"]["spec"]["ingress"][0]
    assert "from" not in duplex_grpc
    for name in MODEL_COMPONENTS:
        (source,) = policies[f"{FULLNAME}-{name}"]["spec"]["ingress"][0]["from"]
        assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "duplex"


def test_ingress_speaks_grpc_to_the_front_door() -> None:
    ingress = render_scenario("everything").get("Ingress", FULLNAME)
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-duplex", "port": {"name": "grpc"}}


def test_helm_test_hook_chats_with_the_front_door() -> None:
    rendered = render_scenario("cpu-bundled-redis")
    (pod,) = [obj for obj in rendered.of_kind("Pod") if obj["metadata"]["annotations"].get(TEST_HOOK) == "test"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["minmo"] and args[0] == "chat" and "--json" in args
    assert args[args.index("--server") + 1] == f"{FULLNAME}-duplex:50051"


def _component_count(rendered: Rendered, kind: str) -> int:
    labels = [obj["metadata"]["labels"] for obj in rendered.of_kind(kind)]
    return sum(label.get("app.kubernetes.io/component") in COMPONENTS for label in labels)


def test_disabled_components_render_nothing() -> None:
    rendered = render({"voicelm": {"enabled": False}, "vocoder": {"enabled": False}})
    assert _component_count(rendered, "Deployment") == 3
    assert _component_count(rendered, "Service") == 6


def test_notes_say_how_to_reach_and_talk_to_the_front_door() -> None:
    notes = render_notes(scenario_values("cpu-bundled-redis"))
    assert f"port-forward svc/{FULLNAME}-duplex 50051:50051" in notes
    assert "minmo chat --server 127.0.0.1:50051" in notes
    assert f"helm test {RELEASE}" in notes
