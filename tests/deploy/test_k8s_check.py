"""`minmo k8s check`'s report, built from objects made with the Kubernetes client's own models (there is no API
server here, and we never stand in for one): what a healthy release, a half-ready one, an empty Service and an
autoscaler at its ceiling look like. Also `minmo health` against a real gRPC health service."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kubernetes import client
from typer.testing import CliRunner

from minmo.cli import app
from minmo.client.health import HealthQuery, check_health
from minmo.k8s.check import build_report
from minmo.k8s.console import print_report

RELEASE = "talk"


def _labels(component: str, release: str = RELEASE) -> dict[str, str]:
    return {"app.kubernetes.io/instance": release, "app.kubernetes.io/component": component}


def _deployment(component: str, desired: int, ready: int, release: str = RELEASE) -> client.V1Deployment:
    selector = client.V1LabelSelector(match_labels=_labels(component, release))
    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=_labels(component, release)),
        spec=client.V1PodSpec(containers=[client.V1Container(name=component, image="minmo:0.1.0")]),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=f"{release}-minmo-{component}", labels=_labels(component, release)),
        spec=client.V1DeploymentSpec(replicas=desired, selector=selector, template=template),
        status=client.V1DeploymentStatus(ready_replicas=ready, updated_replicas=desired, available_replicas=ready),
    )


def _slice(service: str, component: str, ready: list[bool]) -> client.V1EndpointSlice:
    labels = {**_labels(component), "kubernetes.io/service-name": service}
    endpoints = [
        client.V1Endpoint(addresses=[f"10.1.0.{index}"], conditions=client.V1EndpointConditions(ready=is_ready))
        for index, is_ready in enumerate(ready)
    ]
    return client.V1EndpointSlice(
        address_type="IPv4", endpoints=endpoints, metadata=client.V1ObjectMeta(name=f"{service}-x", labels=labels)
    )


HPA = client.V2HorizontalPodAutoscaler


def _hpa(component: str, current: int, desired: int, max_replicas: int, sessions: str) -> HPA:
    name = f"{RELEASE}-minmo-{component}"
    target = client.V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name=name)
    metric = client.V2MetricStatus(
        type="External",
        external=client.V2ExternalMetricStatus(
            metric=client.V2MetricIdentifier(name="s0-prometheus"),
            current=client.V2MetricValueStatus(average_value=sessions),
        ),
    )
    conditions = []
    if desired >= max_replicas:
        conditions.append(
            client.V2HorizontalPodAutoscalerCondition(
                type="ScalingLimited", status="True", reason="TooManyReplicas", message="the desired count is above max"
            )
        )
    return client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V2HorizontalPodAutoscalerSpec(scale_target_ref=target, min_replicas=1, max_replicas=max_replicas),
        status=client.V2HorizontalPodAutoscalerStatus(
            current_replicas=current, desired_replicas=desired, current_metrics=[metric], conditions=conditions
        ),
    )


def test_a_ready_release_is_healthy() -> None:
    deployments = [_deployment("duplex", 2, 2), _deployment("llm", 3, 3)]
    slices = [
        _slice("talk-minmo-duplex", "duplex", [True, True]),
        _slice("talk-minmo-llm", "llm", [True, True, True]),
        _slice("talk-minmo-llm-headless", "llm", [True, True, True]),
    ]
    report = build_report(RELEASE, "voice", deployments, slices, [_hpa("llm", 3, 3, 8, "22")])
    assert report.healthy, report.problems()
    llm = next(item for item in report.components if item.name == "llm")
    assert [(e.service, e.ready) for e in llm.endpoints] == [("talk-minmo-llm", 3), ("talk-minmo-llm-headless", 3)]
    assert llm.autoscaler is not None and llm.autoscaler.metrics == ["s0-prometheus=22"]
    assert json.loads(report.to_json())["healthy"] is True


def test_problems_name_the_component_and_what_is_wrong() -> None:
    deployments = [_deployment("duplex", 2, 1), _deployment("vocoder", 2, 2), _deployment("llm", 8, 8)]
    slices = [
        _slice("talk-minmo-duplex", "duplex", [True, False]),
        _slice("talk-minmo-vocoder-headless", "vocoder", [False, False]),
        _slice("talk-minmo-llm", "llm", [True] * 8),
    ]
    report = build_report(RELEASE, "voice", deployments, slices, [_hpa("llm", 8, 9, 8, "30")])
    assert report.problems() == [
        "duplex: 1/2 replicas ready",
        "llm: autoscaler at its maximum of 8 replicas",
        "vocoder: Service talk-minmo-vocoder-headless has no ready endpoints",
    ]
    duplex = report.components[0]
    assert (duplex.endpoints[0].ready, duplex.endpoints[0].not_ready) == (1, 1)
    assert report.components[1].autoscaler.limited.startswith("TooManyReplicas")


def test_other_releases_are_left_out_and_an_empty_release_is_a_problem() -> None:
    report = build_report(RELEASE, "voice", [_deployment("duplex", 1, 1, release="other")], [], [])
    assert report.components == []
    assert report.problems() == ["no MinMo components of release 'talk' in namespace 'voice'"]


def test_the_table_shows_every_component(capsys: pytest.CaptureFixture[str]) -> None:
    report = build_report(RELEASE, "voice", [_deployment("llm", 2, 1)], [_slice("talk-minmo-llm", "llm", [True])], [])
    print_report(report)
    out = capsys.readouterr().out
    assert "llm" in out and "1/2" in out and "llm: 1/2 replicas ready" in out


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_minmo_health_exits_zero_only_when_serving(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    runner = CliRunner()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = runner.invoke(app, ["health", "--server", address])
    assert (result.exit_code, result.output.strip()) == (0, "SERVING")
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = runner.invoke(app, ["health", "--server", address])
    assert (result.exit_code, result.output.strip()) == (1, "NOT_SERVING")


def test_minmo_health_reports_an_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        status = check_health(HealthQuery(address, timeout_s=1.0))
    assert status.startswith("UNREACHABLE (UNAVAILABLE")
