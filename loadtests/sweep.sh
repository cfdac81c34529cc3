#!/usr/bin/env bash
# The README's sweep: for batching off and on, start `minmo up` (tiny unless CONFIG says otherwise), run
# `minmo load` at 1,2,4,8 sessions and `--find-capacity`, and keep the JSON, the plots and Locust CSVs in OUT.
# Usage: loadtests/sweep.sh [OUT_DIR]
# env: CONFIG, PORT, TURNS, LEVELS, SLO_MS, SLO_METRIC (client|server), MAX_GROWTH (the capacity's p95 within this
# factor of the 1-session p95, so admitted sessions keep their latency; 0: the SLO alone), MAX_SESSIONS, LABEL,
# BATCH (e.g. 8), MODES ("off on", or one of them), SWEEP=0 (only the capacity search)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtests/results}"
CONFIG="${CONFIG:-tiny}"
PORT="${PORT:-47150}"
TURNS="${TURNS:-2}"
LEVELS="${LEVELS:-1,2,4,8}"
SLO_MS="${SLO_MS:-1000}"
SLO_METRIC="${SLO_METRIC:-client}"
MAX_GROWTH="${MAX_GROWTH:-1.2}"
MAX_SESSIONS="${MAX_SESSIONS:-16}"
LABEL="${LABEL:-$CONFIG, $(nproc --all) cores}"
MINMO="${MINMO:-.venv/bin/minmo}"
mkdir -p "$OUT"
for mode in ${MODES:-off on}; do
    batch=$([ "$mode" = off ] && echo 1 || echo "${BATCH:-8}")
    MINMO_BATCH_MAX_SIZE=$batch MINMO_MAX_SESSIONS=64 setsid "$MINMO" up --config "$CONFIG" --port "$PORT" \
        > "$OUT/stack-batching-$mode.log" 2>&1 &
    stack=$!
    trap 'kill -TERM -- -$stack 2>/dev/null || true' EXIT
    for _ in $(seq 300); do grep -q "MinMo is up" "$OUT/stack-batching-$mode.log" && break; sleep 1; done
    common=(--server "127.0.0.1:$PORT" --turns "$TURNS" --barge-in-share 0.5 --typed-share 0.2 --wav loadtests/speech)
    [ "${SWEEP:-1}" = 0 ] || "$MINMO" load "${common[@]}" --sessions "$LEVELS" --json "$OUT/sweep-batching-$mode.json" \
        --plot "$OUT/sweep-batching-$mode.png" --csv "$OUT/locust-batching-$mode" --label "$LABEL, batching $mode" \
        || echo "no turn answered at any level (batching $mode)"
    "$MINMO" load "${common[@]}" --find-capacity --slo-ms "$SLO_MS" --slo-metric "$SLO_METRIC" \
        --max-growth "$MAX_GROWTH" --max-sessions "$MAX_SESSIONS" --json "$OUT/capacity-batching-$mode.json" \
        --plot "$OUT/capacity-batching-$mode.png" --label "$LABEL, batching $mode" \
        || echo "no turn answered in the capacity search (batching $mode)"
    kill -TERM -- -"$stack" 2>/dev/null || true
    wait "$stack" || true
    trap - EXIT
    sleep 3
done
