"""Render the Helm chart with real Helm (the Helm v4 library in the helm-python-sdk wheel) and look at the objects.

A scenario is a chart-testing values file in deploy/helm/minmo/ci/; `render_scenario` caches its objects, since
several test modules look at the same renders.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "minmo"
SCENARIOS = sorted(path.name.removesuffix("-values.yaml") for path in (CHART_DIR / "ci").glob("*-values.yaml"))
COMPONENTS = ("duplex", "encoder", "llm", "voicelm", "vocoder")
MODEL_COMPONENTS = COMPONENTS[1:]
RELEASE = "talk"
NAMESPACE = "voice"
FULLNAME = f"{RELEASE}-minmo"
TEST_HOOK = "helm.sh/hook"


@dataclass(frozen=True)
class Rendered:
    """One render: the merged values it used and its objects (hooks included), in template order."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] in ("Deployment", "StatefulSet")]

    def pod_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(object name, pod spec) of every workload and bare Pod."""
        specs = [(obj["metadata"]["name"], obj["spec"]["template"]["spec"]) for obj in self.workloads()]
        return specs + [(obj["metadata"]["name"], obj["spec"]) for obj in self.of_kind("Pod")]

    def container(self, component: str) -> dict[str, Any]:
        deployment = self.get("Deployment", f"{FULLNAME}-{component}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return container

    def env(self, component: str) -> dict[str, dict[str, Any]]:
        """A component container's env entries by name (value or valueFrom)."""
        entries = self.container(component)["env"]
        names = [entry["name"] for entry in entries]
        assert len(names) == len(set(names)), f"{component} sets a variable twice: {names}"
        return {entry["name"]: entry for entry in entries}


def scenario_values(scenario: str) -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "ci" / f"{scenario}-values.yaml").read_text()) or {}


def render(values: dict[str, Any]) -> Rendered:
    chart = helm.Chart.load(CHART_DIR)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(chart.merge_values(values), objects)


@functools.cache
def render_scenario(scenario: str) -> Rendered:
    return render(scenario_values(scenario))


def render_notes(values: dict[str, Any]) -> str:
    manifests = helm.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
