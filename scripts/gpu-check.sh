#!/usr/bin/env bash
# The one prepared GPU check of issue 11, for a machine with a CUDA GPU and this repository set up
# (scripts/setup.sh, or any Python with `pip install -e '.[dev]'`: set MINMO_PYTHON). About 8 minutes on one H200.
#
# 1. the CUDA tests (tests/model/test_placement.py, test_kv_cache.py: bf16 and CUDA paths; skipped without a GPU);
# 2. a spoken turn through the five services with MINMO_DEVICE=cuda MINMO_DTYPE=bfloat16 (`minmo bench turn`);
# 3. minmo-8b (random weights) decision -> first audio p50/p95 at 1 and 8 sessions in bf16 (`minmo bench first-audio`);
# 4. minmo-8b decode tokens/s, in-place KV cache vs concatenating it (`minmo bench decode`).
# Every step has its own time limit, and a failed step does not stop the others. Results and logs go to $OUT
# (default ./gpu-check): gpu-check.json (each step's exit status and seconds), first-audio-8b.json, <step>.log.
# A dry run of the same steps without a GPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_CONFIG=tiny scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${MINMO_PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
OUT_DIR=${OUT:-gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BIG=${GPU_CHECK_CONFIG:-minmo-8b}
mkdir -p "$OUT_DIR"
declare -A STATUS SECONDS_TAKEN

step() {  # step NAME LIMIT_S COMMAND...: run it with a time limit, log to $OUT_DIR/NAME.log, keep status and time
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    STATUS[$name]=$?
    SECONDS_TAKEN[$name]=$((SECONDS - started))
    tail -n 15 "$OUT_DIR/$name.log"
    echo "== $name: exit ${STATUS[$name]} after ${SECONDS_TAKEN[$name]}s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT_DIR/gpu.txt" 2>&1 || true
cat "$OUT_DIR/gpu.txt"
step cuda-available 30 "$PYTHON" -c "import torch, sys; print(torch.__version__, torch.cuda.is_available())
sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == 'cpu' else 'no CUDA device')" "$DEVICE"
step cuda-tests 100 "$PYTHON" -m pytest -q -rs tests/model/test_placement.py tests/model/test_kv_cache.py
step services-turn-cuda-bf16 150 env MINMO_DEVICE="$DEVICE" MINMO_DTYPE=bfloat16 \
    "$PYTHON" -m minmo.cli bench turn --config tiny --runs 2
step first-audio-8b 150 "$PYTHON" -m minmo.cli bench first-audio --config "$BIG" --device "$DEVICE" --dtype bfloat16 \
    --sessions 1,8 --runs 3 --json "$OUT_DIR/first-audio-8b.json"
step decode-8b 50 "$PYTHON" -m minmo.cli bench decode --config "$BIG" --device "$DEVICE" --dtype bfloat16 \
    --contexts 64,2048 --tokens 32 --repeats 1

{
    echo "{"
    first=1
    for name in cuda-available cuda-tests services-turn-cuda-bf16 first-audio-8b decode-8b; do
        [ $first = 1 ] || echo ","
        first=0
        printf '  "%s": {"exit": %s, "seconds": %s}' "$name" "${STATUS[$name]:-null}" "${SECONDS_TAKEN[$name]:-null}"
    done
    echo ""
    echo "}"
} >"$OUT_DIR/gpu-check.json"
cat "$OUT_DIR/gpu-check.json"
[ -f "$OUT_DIR/first-audio-8b.json" ] && cat "$OUT_DIR/first-audio-8b.json"
for name in "${!STATUS[@]}"; do [ "${STATUS[$name]}" = 0 ] || exit 1; done
