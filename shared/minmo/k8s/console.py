"""The terminal side of `minmo k8s check`: credentials for the API client, and the report as a table."""

from __future__ import annotations

from kubernetes import client, config
from rich.console import Console
from rich.table import Table

from minmo.k8s.check import ReleaseReport


def api_client(context: str | None = None) -> client.ApiClient:
    """An API client from the kubeconfig (or the pod's service account when run inside the cluster)."""
    try:
        config.load_kube_config(context=context)
    except config.ConfigException:
        config.load_incluster_config()
    return client.ApiClient()


def print_report(report: ReleaseReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"MinMo release {report.release} (namespace {report.namespace})")
    for column in ("component", "ready", "endpoints (ready/not ready)", "autoscaler"):
        table.add_column(column)
    for item in report.components:
        endpoints = ", ".join(f"{e.service}: {e.ready}/{e.not_ready}" for e in item.endpoints) or "-"
        scaler = item.autoscaler
        scaling = "-"
        if scaler is not None:
            bounds = f"{scaler.min_replicas}..{scaler.max_replicas}"
            scaling = f"{scaler.current_replicas}->{scaler.desired_replicas} of {bounds}"
            scaling += "".join(f"  {metric}" for metric in scaler.metrics)
            scaling += f"  ({scaler.limited})" if scaler.limited else ""
        table.add_row(item.name, f"{item.ready}/{item.desired}", endpoints, scaling)
    console.print(table)
    for problem in report.problems():
        console.print(problem, style="bold red", markup=False)
    if report.healthy:
        console.print("all components ready", style="green")
