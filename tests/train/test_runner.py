"""The shared training loop's held-out check: measured at every checkpoint, the export rewritten only when the
held-out loss is the lowest so far, and the measurements survive a resume."""

import json
from pathlib import Path

import torch
from torch import nn

from minmo.train.runner import RunSettings, run_phases
from minmo.train.stage1 import Phase


def test_export_follows_the_lowest_held_out_loss_across_a_resume(tmp_path: Path):
    model = nn.Linear(3, 1)
    held_out = iter([3.0, 1.0, 2.0, 0.5])  # one value per checkpoint: steps 2, 4 (stop), 6, 8 (end)
    exported_at: list[int] = []

    def progress() -> dict:
        return json.loads((tmp_path / "checkpoint" / "progress.json").read_text())

    def export() -> None:
        exported_at.append(len(progress()["losses"]))

    def settings(stop: int) -> RunSettings:
        return RunSettings(tmp_path, "test", warmup_steps=1, checkpoint_every=2, stop_after_steps=stop,
                           validate=lambda: next(held_out))

    phases = (Phase("only", 8, ("linear",), 1e-2),)
    loss = lambda phase, step, rank: model(torch.ones(1, 3)).pow(2).sum()  # noqa: E731
    run_phases(model, phases, settings(stop=4), lambda phase: list(model.parameters()), loss, export)
    run_phases(model, phases, settings(stop=0), lambda phase: list(model.parameters()), loss, export)
    assert progress()["validation"] == [[2, 3.0], [4, 1.0], [6, 2.0], [8, 0.5]]
    assert exported_at == [2, 4, 8], "the step-6 export would have replaced a better one"
    assert (tmp_path / "loss.png").stat().st_size > 1000
