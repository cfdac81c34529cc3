"""The reference outputs of CosyVoice 2's own code, made once per machine in the reference environment.

`.venv-ref` (made by scripts/setup-reference.sh, which scripts/setup.sh runs) holds the `cosyvoice2-eu`
wheel and what its model modules import; our environment never imports it. The dump is keyed by the
reference script's hash, so editing the script makes a new one.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = ROOT / ".venv-ref" / "bin" / "python"
SCRIPT = Path(__file__).with_name("cosyvoice2_reference.py")
TIMEOUT_S = 900


def reference_dump(script: Path, name: str) -> Path:
    """Run a reference script (in .venv-ref) into a directory keyed by the script's hash, once per machine."""
    assert REFERENCE_PYTHON.is_file(), f"{REFERENCE_PYTHON} is missing: run scripts/setup-reference.sh"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "minmo-compat" / f"{name}-{digest}"
    if not (out / "reference.pt").is_file():
        partial = out.with_name(out.name + ".partial")
        subprocess.run([str(REFERENCE_PYTHON), str(script), str(partial)], check=True, timeout=TIMEOUT_S)
        partial.rename(out)
    return out


@pytest.fixture(scope="session")
def cosyvoice2_reference() -> Path:
    """Directory with `flow.pt`, `hift.pt` (parametrizations weight norm), `hift_legacy.pt` (weight_g /
    weight_v), `llm.pt` and `reference.pt` (inputs and CosyVoice 2's outputs)."""
    return reference_dump(SCRIPT, "cosyvoice2")
