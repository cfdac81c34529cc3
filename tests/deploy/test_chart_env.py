"""The chart sets exactly the environment variables the services read, both ways.

What a service reads is derived from the code, not listed here: starting from the settings classes that
`services/<name>/main.py` uses (DuplexSettings, LlmSettings, ..., wherever they are defined), follow every
top-level class or function they refer to (ServerSettings, TelemetrySettings, ...) through all modules of
`minmo`, and collect the literal names passed to the `env_*` helpers of `minmo.serving.settings` (or to
os.environ / os.getenv). A new setting therefore needs only its values.yaml / template entry, and this test says
which one is missing.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import opentelemetry.sdk.environment_variables as otel_variables
import pytest

from .chart import COMPONENTS, ROOT, SCENARIOS, render_scenario

PREFIXES = ("MINMO_", "OTEL_", "REDIS_URL")
# Read by the OpenTelemetry SDK and exporter themselves (TelemetrySettings documents that it leaves them to it).
OTEL_SDK = frozenset(name for name in dir(otel_variables) if name.startswith("OTEL_"))
# ServerSettings reads the runtime and batching fields for every service, but the duplex runs no model (DESIGN.md
# section 2).
NOT_APPLICABLE = {
    "duplex": {"MINMO_RUNTIME", "MINMO_TRITON_URL", "MINMO_BATCH_MAX_SIZE", "MINMO_BATCH_WINDOW_MS"}
    | {"MINMO_DEVICE", "MINMO_DTYPE", "MINMO_TORCH_THREADS", "MINMO_STEADY_WAIT_MS"}
}


def _source_files() -> Iterator[Path]:
    yield from sorted((ROOT / "shared" / "minmo").rglob("*.py"))
    yield from sorted((ROOT / "services").rglob("*.py"))


def _literal_env_reads(node: ast.AST) -> set[str]:
    """Names passed as a literal to env_*(...), os.environ.get(...), os.getenv(...) or os.environ[...]."""
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant):
            func = call.func
            callee = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if callee.startswith("env_") or ast.unparse(func) in ("os.environ.get", "os.getenv"):
                names.add(call.args[0].value)
        is_subscript = isinstance(call, ast.Subscript) and isinstance(call.slice, ast.Constant)
        if is_subscript and ast.unparse(call.value) == "os.environ":
            names.add(call.slice.value)
    return {name for name in names if isinstance(name, str)}


@functools.cache
def _definitions() -> dict[str, list[ast.AST]]:
    """Every top-level class and function of the code base, by name (a name may be defined in several modules)."""
    found: dict[str, list[ast.AST]] = {}
    for path in _source_files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def _referenced_names(node: ast.AST) -> set[str]:
    """Bare names, and attributes of `self`/`cls` or of a bare name (`ServerSettings.from_env`); an attribute of
    something else (`torch.load`, `conversation_pb2.SessionConfig`) is another library's, whatever its name."""
    return {
        child.id if isinstance(child, ast.Name) else child.attr
        for child in ast.walk(node)
        if isinstance(child, ast.Name)
        or (isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and _ours(child.value.id))
    }


def _ours(base: str) -> bool:
    """A base name whose attributes may be our own definitions: self, cls, or a CamelCase class name."""
    return base in ("self", "cls") or base[:1].isupper()


def service_reads(component: str) -> set[str]:
    """The variables a service's settings read: the *Settings classes its main.py uses, and all they refer to."""
    main = ast.parse((ROOT / "services" / component / "main.py").read_text())
    definitions = _definitions()
    used = sorted(name for name in _referenced_names(main) if name.endswith("Settings"))
    roots: list[ast.AST] = [node for name in used for node in definitions.get(name, [])]
    assert roots, f"services/{component}/main.py uses no *Settings class"
    seen: set[int] = set()
    reads: set[str] = set()
    todo = roots
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        reads |= _literal_env_reads(node)
        for name in _referenced_names(node):
            todo.extend(definitions.get(name, []))
    return {name for name in reads if name.startswith(PREFIXES)}


def chart_sets(component: str, scenario: str) -> set[str]:
    return {name for name in render_scenario(scenario).env(component) if name.startswith(PREFIXES)}


def test_the_scan_finds_what_the_settings_read() -> None:
    """The scan itself: names from the service's own class, from ServerSettings and from TelemetrySettings."""
    reads = service_reads("duplex")
    assert {"MINMO_LLM_ADDR", "REDIS_URL", "MINMO_VAD_THRESHOLD"} <= reads
    assert {"MINMO_PORT", "MINMO_GRACE_S", "MINMO_METRICS_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= reads
    assert "MINMO_CHECKPOINT" in service_reads("llm") and "MINMO_CHECKPOINT" not in reads


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_the_chart_sets_only_variables_the_service_reads(component: str, scenario: str) -> None:
    unknown = chart_sets(component, scenario) - service_reads(component) - OTEL_SDK
    assert not unknown, f"the chart sets {sorted(unknown)} on {component}, which its settings never read"


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_variable_the_service_reads_can_be_set_from_the_chart(component: str) -> None:
    settable = set().union(*(chart_sets(component, scenario) for scenario in SCENARIOS))
    missing = service_reads(component) - NOT_APPLICABLE.get(component, set()) - settable
    assert not missing, f"{component} reads {sorted(missing)}: add them to values.yaml ({component}.settings)"


def test_the_agreed_names_are_really_set() -> None:
    """The agreed names are only accepted above because the chart wires them: check that it does."""
    everything = render_scenario("everything")
    assert {"MINMO_TLS_CERT", "MINMO_TLS_KEY", "MINMO_TLS_CA", "MINMO_API_KEYS_FILE"} <= set(everything.env("duplex"))
    assert {"MINMO_DEVICE", "MINMO_DTYPE", "MINMO_REFLECTION"} <= set(everything.env("llm"))
