#!/usr/bin/env bash
# Admission at capacity: every service of the stack gets MINMO_MAX_SESSIONS=CAPACITY (default: what sweep.sh's
# --find-capacity measured with batching off, the default; at least 1), then `minmo load` offers 1 (unloaded: the
# baseline), CAPACITY and 2 x CAPACITY sessions in one run. Past capacity the extra sessions must be refused at
# session start (RESOURCE_EXHAUSTED), and the admitted ones keep their latency. Usage: loadtests/admission.sh [OUT_DIR]   (env: CONFIG, PORT, TURNS, CAPACITY, LABEL)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtests/results}"
CONFIG="${CONFIG:-tiny}"
PORT="${PORT:-47150}"
TURNS="${TURNS:-2}"
MINMO="${MINMO:-.venv/bin/minmo}"
CAPACITY="${CAPACITY:-$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['capacity_sessions'])" \
    "$OUT/capacity-batching-off.json")}"
CAPACITY=$(( CAPACITY > 0 ? CAPACITY : 1 ))
LEVELS="$CAPACITY,$(( 2 * CAPACITY ))"
[ "$CAPACITY" -gt 1 ] && LEVELS="1,$LEVELS"
LABEL="${LABEL:-$CONFIG, $(nproc --all) cores, MINMO_MAX_SESSIONS=$CAPACITY}"
MINMO_MAX_SESSIONS=$CAPACITY setsid "$MINMO" up --config "$CONFIG" --port "$PORT" > "$OUT/stack-admission.log" 2>&1 &
stack=$!
trap 'kill -TERM -- -$stack 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "MinMo is up" "$OUT/stack-admission.log" && break; sleep 1; done
"$MINMO" load --server "127.0.0.1:$PORT" --turns "$TURNS" --barge-in-share 0.5 --typed-share 0.2 --wav loadtests/speech \
    --sessions "$LEVELS" --ramp-up-s 0.5 --json "$OUT/admission.json" --label "$LABEL"
