"""A resumable phase-by-phase training loop for the small speech-out models (tokenizer, stage 2, flow).

Each run folder holds `checkpoint/` (the module's weights and AdamW's state as safetensors, and a progress
JSON with every loss), rewritten every `checkpoint_every` steps and at each phase's end, `loss.png`, and
whatever the `export` callback writes. With a `validate` callback (a held-out loss) every checkpoint also
measures it, and the export is rewritten only when it is the lowest so far: `export/` holds the step that
generalised best, not the last one, for a small model that starts to learn its training data by heart.
Started again on the same folder, a run continues at the step it stopped at, with the same batches and
random draws (the torch seed of a step is a function of the run's seed and the step), so an interrupted run
ends with the weights of an uninterrupted one.

Under torchrun (WORLD_SIZE > 1; gloo on the CPU, NCCL on GPUs) every process draws its own batch of
`batch_size` (the step's loss function is told the process's rank), DistributedDataParallel averages the
gradients, and process 0 alone writes the checkpoint, the export and the plot; the loss shown is the mean over
the processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from minmo.train.stage1 import Phase, init_distributed, learning_rate, mean_across, optimizer_tensors


@dataclass(frozen=True)
class RunSettings:
    out: Path
    title: str
    warmup_steps: int = 20
    checkpoint_every: int = 50
    stop_after_steps: int = 0  # stop (with a checkpoint) after this many steps in one run; 0: run to the end
    seed: int = 0
    validate: Callable[[], float] | None = None  # held-out loss (lower is better), measured at every checkpoint


# (phase, step within the phase, process rank) -> loss of that process's batch at that step
StepLoss = Callable[[Phase, int, int], torch.Tensor]


class _Steps(nn.Module):
    """The model with its step's loss as `forward`, so DistributedDataParallel sees the training pass."""

    def __init__(self, model: nn.Module, step_loss: StepLoss) -> None:
        super().__init__()
        self.model = model
        self.step_loss = step_loss

    def forward(self, phase: Phase, step: int, rank: int) -> torch.Tensor:
        return self.step_loss(phase, step, rank)


def run_phases(
    model: nn.Module,
    phases: tuple[Phase, ...],
    settings: RunSettings,
    trainable: Callable[[Phase], list[nn.Parameter]],
    step_loss: StepLoss,
    export: Callable[[], None],
) -> dict:
    """Train (or resume) every phase; returns the progress record (losses per step)."""
    rank, world = init_distributed()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    progress = _load(out, model)

    def save(optimizer) -> None:
        if rank == 0:
            _save(out, model, optimizer, progress, phases, settings, export)

    for index, phase in enumerate(phases):
        if index < progress["phase"]:
            continue
        for p in model.parameters():
            p.requires_grad_(False)
        params = trainable(phase)
        for p in params:
            p.requires_grad_(True)
        steps = _Steps(model, step_loss)
        forward = nn.parallel.DistributedDataParallel(
            steps, broadcast_buffers=False, find_unused_parameters=True
        ) if world > 1 else steps
        optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.01)
        if progress["step"] > 0:
            _load_optimizer(out, model, optimizer)
        model.train()
        bar = tqdm(total=phase.steps, initial=progress["step"], desc=f"{settings.title} {phase.name}",
                   disable=rank != 0)
        while progress["step"] < phase.steps:
            if progress["steps_this_run"] == settings.stop_after_steps > 0:
                save(optimizer)
                return progress
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(phase, progress["step"], settings.warmup_steps)
            started = time.perf_counter()
            # a resumed step draws alike; each process its own draws
            torch.manual_seed(settings.seed * 1_000_003 + progress["global_step"] + 7919 * rank)
            loss = forward(phase, progress["step"], rank)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            value = mean_across(loss.detach(), world)
            progress["losses"].append([progress["global_step"], index, value])
            progress["step"] += 1
            progress["global_step"] += 1
            progress["steps_this_run"] += 1
            bar.set_postfix(loss=f"{value:.3f}", s_per_step=f"{time.perf_counter() - started:.2f}")
            bar.update(1)
            if progress["step"] % settings.checkpoint_every == 0 and progress["step"] < phase.steps:
                save(optimizer)
        bar.close()
        progress["phase"], progress["step"] = index + 1, 0
        save(optimizer)
    return progress


def _save(out: Path, model: nn.Module, optimizer, progress: dict, phases, settings: RunSettings, export) -> None:
    improved = _validate(model, progress, settings.validate)
    folder = out / "checkpoint"
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors.partial"))
    save_file(optimizer_tensors(model, optimizer), str(folder / "optimizer.safetensors.partial"))
    (folder / "progress.json.partial").write_text(json.dumps(progress))
    for name in ("weights.safetensors", "optimizer.safetensors", "progress.json"):
        (folder / f"{name}.partial").rename(folder / name)
    if improved:
        export()
    plot(progress, phases, settings.title, out / "loss.png")


def _validate(model: nn.Module, progress: dict, validate: Callable[[], float] | None) -> bool:
    """Measure the held-out loss at this step (eval mode, no gradients); True when there is nothing to measure or
    it is the lowest so far, i.e. when the export should be rewritten."""
    if validate is None:
        return True
    history = progress.setdefault("validation", [])
    if history and history[-1][0] == progress["global_step"]:
        return False  # measured (and exported if best) at this step already: a stop that fell on a checkpoint
    model.eval()
    with torch.no_grad():
        value = validate()
    model.train()
    best = min((v for _, v in history), default=float("inf"))
    history.append([progress["global_step"], value])
    verdict = "exported" if value < best else f"export kept (best {best:.4f})"
    tqdm.write(f"step {progress['global_step']}: held-out loss {value:.4f}, {verdict}")
    return value < best


def _load(out: Path, model: nn.Module) -> dict:
    folder = out / "checkpoint"
    if not (folder / "progress.json").is_file():
        return {"phase": 0, "step": 0, "global_step": 0, "steps_this_run": 0, "losses": []}
    model.load_state_dict(load_file(str(folder / "weights.safetensors")))
    progress = json.loads((folder / "progress.json").read_text()) | {"steps_this_run": 0}
    print(f"resuming {out}: phase {progress['phase']}, step {progress['step']}")
    return progress


def _load_optimizer(out: Path, model: nn.Module, optimizer) -> None:
    params = dict(model.named_parameters())
    for key, value in load_file(str(out / "checkpoint" / "optimizer.safetensors")).items():
        name, _, slot = key.partition("|")
        optimizer.state[params[name]][slot] = value.reshape(()) if slot == "step" else value


def plot(progress: dict, phases: tuple[Phase, ...], title: str, path: Path) -> None:
    """Loss per step (faint) and its moving average, one colour per phase."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4))
    for index, phase in enumerate(phases):
        points = [(step, loss) for step, i, loss in progress["losses"] if i == index]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        window = max(1, len(values) // 50)
        smooth = [sum(values[max(0, i - window) : i + 1]) / (i + 1 - max(0, i - window)) for i in range(len(values))]
        axes.plot(steps, values, alpha=0.3)
        axes.plot(steps, smooth, label=phase.name)
    if progress.get("validation"):
        steps, values = zip(*progress["validation"], strict=True)
        axes.plot(steps, values, "ko-", markersize=3, label="held-out")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)

