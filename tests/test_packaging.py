"""The explicit package list in pyproject.toml covers every package, so a built wheel is complete."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for base, prefix in ((ROOT / "shared" / "minmo", "minmo"), (ROOT / "services", "minmo.services")):
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((prefix, *parts)))
    return found


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() - listed == set(), "add these to [tool.setuptools] packages"
