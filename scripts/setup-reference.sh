#!/usr/bin/env bash
# Create .venv-ref, the reference environment where tests/compat runs CosyVoice 2's and funasr's own modules
# (idempotent, offline-safe). The cosyvoice2-eu (Apache-2.0) and funasr (MIT) wheels are installed without
# their dependencies: their pins clash with ours and they would pull whole training stacks;
# scripts/reference-requirements.txt lists what their model modules import. No torchaudio build exists for
# our torch; the reference scripts stub that import.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if .venv-ref/bin/python -c "import cosyvoice, diffusers, hydra, funasr, kaldiio" >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x .venv-ref/bin/python ]; then
    "$PYTHON" -m venv .venv-ref
fi
.venv-ref/bin/python -m pip install --quiet --upgrade pip
.venv-ref/bin/python -m pip install --quiet torch==2.13.0
.venv-ref/bin/python -m pip install --quiet -r scripts/reference-requirements.txt
.venv-ref/bin/python -m pip install --quiet --no-deps cosyvoice2-eu==0.2.8 funasr==1.4.16
