#!/usr/bin/env bash
# nano's broader voice-LM data, then the voice-LM continuation on it (configs/train/nano-voicelm.toml), one after
# the other; both resume what is already there, so rerunning this script continues an interrupted run.
# The first 420 stage-1 replies are spoken exactly as in data/nano-speech (same texts, shard size and tokenizer), so
# those shards are copied instead of spoken again. GENERATED (default 2100) sets how many written replies are spoken:
# fewer than were written keeps the texts and shortens the speaking step (GENERATED=1152 is what the 2026-12-01 run
# had written).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/nano-speech2
for n in 0 1 2 3 4 5 6; do
  for ext in jsonl safetensors; do
    src=data/nano-speech/replies-0000$n.$ext
    [ -f "data/nano-speech2/${src##*/}" ] || cp "$src" data/nano-speech2/
  done
done
.venv/bin/minmo data speech-out --model nano --data data/nano --out data/nano-speech2-heldout --shard-size 60 \
  --generated 60 --split heldout
.venv/bin/minmo data speech-out --model nano --data data/nano --out data/nano-speech2 --shard-size 60 \
  --generated "${GENERATED:-2100}"
# every checkpoint re-exports the trained parts; the frozen speech encoder beside them makes export/ a --checkpoint
mkdir -p runs/nano-voicelm/export
cp runs/nano-ship3/speech_encoder.safetensors runs/nano-voicelm/export/
.venv/bin/minmo train stage2 --config configs/train/nano-voicelm.toml
