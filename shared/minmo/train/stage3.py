"""Stage 3, speech→speech (paper §4.3): the output projector and the voice-token LM again, on spoken turns.

After stage 2 the voice decoder has only seen the LLM's states after typed prompts. Stage 3 continues the same two
parts on the states after *spoken* questions (`minmo data speech-to-speech`: many user voices, the reply spoken in
the assistant's one voice), optionally drawn together with stage 2's typed turns (`also_data`), so a typed turn
keeps its voice. The trainer, its objective (the 5:15 interleaved speech-token cross-entropy), checkpoints and
export are stage 2's; a stage-3 run starts from stage 2's export (`init`), and token2wav's flow, which stage 3
does not train, is carried over and exported unchanged with the rest.
"""

from __future__ import annotations

from pathlib import Path

from minmo.train import stage2
from minmo.train.stage2 import Stage2Config

TRAINED = {"projector", "voice_lm"}


def train(cfg: Stage2Config) -> Path:
    """Train (or resume) stage 3 from stage 2's export; returns the run folder."""
    other = {part for phase in cfg.phases for part in phase.train} - TRAINED
    if other:
        raise ValueError(f"stage 3 trains {sorted(TRAINED)} only (the paper's schedule), not {sorted(other)}")
    if not cfg.init:
        raise ValueError("stage 3 continues stage 2: set `init` to a stage-2 export folder")
    return stage2.train(cfg, stage="stage 3")
