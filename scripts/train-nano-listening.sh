#!/usr/bin/env bash
# nano's listening side by the recipe, one step after the other; every step resumes what is already there, so
# rerunning this script continues an interrupted run:
#   1. `minmo data build`: 6000 augmented multi-voice training utterances (+120 on held-out voices);
#   2. stage 1 continued from the shipped input projector (configs/train/nano-stage1-continue.toml), two processes;
#   3. `minmo data duplex`: simulated user turns as the LLM with those weights hears them;
#   4. stage 4: the duplex predictor (configs/train/nano-stage4.toml).
# Then copy runs/nano-stage1b/export/speech_encoder.safetensors and runs/nano-stage4/export/duplex_predictor.safetensors
# into shared/minmo/checkpoints/nano (README, "Training").
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
.venv/bin/minmo data build --out data/nano --train-items 6000 --eval-items 120 --eval-seen-items 0 \
    --shard-size 200 --max-answer-tokens 32
.venv/bin/torchrun --nproc-per-node "${PROCESSES:-2}" -m minmo.cli train stage1 \
    --config configs/train/nano-stage1-continue.toml
# the stage-1 export holds only what it trained; the rest of nano's weights come from the shipped checkpoint
mkdir -p runs/nano-listening
cp shared/minmo/checkpoints/nano/*.safetensors runs/nano-listening/
cp runs/nano-stage1b/export/* runs/nano-listening/
.venv/bin/minmo data duplex --checkpoint runs/nano-listening --out data/nano-duplex
.venv/bin/minmo train stage4 --config configs/train/nano-stage4.toml
