"""Stage 4, duplex (paper §4.4): the full-duplex predictor alone, on simulated turn-taking moments.

Data: `minmo data duplex` (the frozen LLM's hidden states at the audio positions of each simulated user turn, and
the class due at the end of each segment). The predictor reads a turn's segments in order, as
`Dialogue.append_audio` feeds it one flush at a time; the loss is the cross-entropy at each segment's last position,
the position whose prediction the llm service sends, weighted so that each class counts alike (there are twice as
many `respond` labels as others). Everything else is frozen, so a step costs one small Transformer layer.
Checkpoints resume (minmo.train.runner); `export/duplex_predictor.safetensors` is what `build_component` loads, and
its presence is what tells duplex that the predictor is trained (`predictor_is_trained`).

`evaluate` runs the served path (`DuplexPredictor.step` per segment, fresh state per turn) on held-out voices and
reports per-class precision/recall/F1 and the decisions duplex acts on: turn taking (the user is done: the predictor
gives them the turn, vs a pause mid-sentence: keep listening), barge-in (the user interrupts the playing reply: give
them the turn, vs a backchannel: let it go on), and how often a backchannel would interrupt the reply. Decisions are
made per segment (one encoder flush): the paper's K = 5 chunk tolerance is for an encoder that streams chunks.
"""

from __future__ import annotations

import dataclasses
import json
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from minmo.model.config import load_config
from minmo.model.duplex_predictor import DuplexPredictor
from minmo.train.duplex_data import CLASSES, SimulatedTurn, read_turns
from minmo.train.runner import RunSettings, run_phases
from minmo.train.stage1 import Phase

EXPORT_FILE = "duplex_predictor.safetensors"


@dataclass(frozen=True)
class Stage4Config:
    model: str = "nano"
    data: str = "data/nano-duplex"
    out: str = "runs/nano-stage4"
    phases: tuple[Phase, ...] = (Phase("predictor", 1500, ("predictor",), 1e-3),)
    batch_size: int = 16
    warmup_steps: int = 20
    checkpoint_every: int = 100
    threads: int = 1
    seed: int = 0
    stop_after_steps: int = 0

    @classmethod
    def from_toml(cls, path: str | Path) -> Stage4Config:
        raw = tomllib.loads(Path(path).read_text())
        if "phases" in raw:
            raw["phases"] = tuple(Phase.from_toml(p) for p in raw["phases"])
        return cls(**raw)


def train(cfg: Stage4Config) -> Path:
    """Run (or resume) the phases; returns the run folder."""
    torch.set_num_threads(cfg.threads)
    model_cfg = load_config(cfg.model)
    assert tuple(model_cfg.duplex_predictor.classes) == CLASSES, "the data's classes are the predictor's"
    torch.manual_seed(cfg.seed)
    predictor = DuplexPredictor(model_cfg.duplex_predictor)
    turns = list(read_turns(cfg.data, "train"))
    assert turns, f"no training shards in {cfg.data}: run `minmo data duplex` first"
    weights = class_weights(turns)
    out = Path(cfg.out)
    print(f"stage 4: {len(turns)} simulated turns, class weights {[round(w, 2) for w in weights.tolist()]}")

    def step_loss(phase: Phase, step: int, rank: int) -> torch.Tensor:
        batch = random.Random(cfg.seed * 1_000_003 + 7919 * rank + step).sample(turns, min(cfg.batch_size, len(turns)))
        return turn_loss(predictor, batch, weights)

    def export() -> None:
        (out / "export").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in predictor.state_dict().items()}, str(out / "export" / EXPORT_FILE))

    settings = RunSettings(out, "stage 4 (duplex predictor)", cfg.warmup_steps, cfg.checkpoint_every,
                           cfg.stop_after_steps, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    run_phases(predictor, cfg.phases, settings, lambda phase: list(predictor.parameters()), step_loss, export)
    return out


def class_weights(turns: list[SimulatedTurn]) -> torch.Tensor:
    """Inverse label frequency, normalised to mean 1 over the labels seen (an absent class weighs 0)."""
    counts = torch.zeros(len(CLASSES))
    for turn in turns:
        for label in turn.labels():
            counts[label] += 1
    weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros(()))
    return weights * (counts > 0).sum() / weights.sum()


def turn_loss(predictor: DuplexPredictor, batch: list[SimulatedTurn], weights: torch.Tensor) -> torch.Tensor:
    """Weighted cross-entropy at every segment's last position, each turn read whole (offline = chunk by chunk)."""
    logits, labels = [], []
    for turn in batch:
        hidden = torch.cat([segment.float() for segment in turn.hidden])[None]  # (1, T, llm_dim)
        ends = torch.tensor([len(s) for s in turn.hidden]).cumsum(0) - 1
        logits.append(predictor(hidden)[0, ends])
        labels += turn.labels()
    return F.cross_entropy(torch.cat(logits), torch.tensor(labels), weight=weights)


@torch.no_grad()
def predict(predictor: DuplexPredictor, turn: SimulatedTurn) -> list[torch.Tensor]:
    """The class probabilities after each segment, computed as served: `step` per segment, fresh state per turn."""
    state, probs = predictor.init_state(), []
    for segment in turn.hidden:
        p, state = predictor.step(segment.float()[None], state)
        probs.append(p[0])
    return probs


def evaluate(config: str, checkpoint: str | None, data: str, limit: int, out: Path | None = None) -> dict:
    """Scores of the predictor on `data`'s held-out (`eval`) moments; prints a table, writes JSON to `out`."""
    from minmo.model.build import build_component

    predictor = build_component(load_config(config), "duplex_predictor", checkpoint).float().eval()
    pairs = []  # (true class, predicted class, moment kind)
    for turn in list(read_turns(data, "eval"))[:limit]:
        for label, probs in zip(turn.labels(), predict(predictor, turn), strict=True):
            pairs.append((label, int(probs.argmax()), turn.moment.kind))
    assert pairs, f"no evaluation shards in {data}: run `minmo data duplex` first"
    report = {"segments": len(pairs), "classes": {}}
    for index, name in enumerate(CLASSES):
        report["classes"][name] = _f1([(t == index, p == index) for t, p, _ in pairs])
    # decisions as duplex acts on them (minmo.duplex.turn_policy): respond and stop_speaking both give the user the
    # turn (a playing reply stops, the turn is answered); a question after the reply and one over it have the same
    # LLM context, so those two classes are one decision
    respond, keep = CLASSES.index("respond"), CLASSES.index("keep_listening")
    stop, backchannel = CLASSES.index("stop_speaking"), CLASSES.index("backchannel")
    takes_turn = (respond, stop)
    turn_taking = [(t == respond, p in takes_turn) for t, p, _ in pairs if t in (respond, keep)]
    barge_in = [(t == stop, p in takes_turn) for t, p, _ in pairs if t in (stop, backchannel)]
    backchannels = [p for t, p, _ in pairs if t == backchannel]
    report["turn_taking"] = _f1(turn_taking)
    report["barge_in"] = _f1(barge_in)
    report["backchannel_interrupts"] = sum(p in takes_turn for p in backchannels) / max(1, len(backchannels))
    report["accuracy"] = sum(t == p for t, p, _ in pairs) / len(pairs)
    _print(report)
    if out is not None:
        out.write_text(json.dumps(report, indent=2))
    return report


def _f1(outcomes: list[tuple[bool, bool]]) -> dict[str, float]:
    """Precision, recall and F1 of (is positive, predicted positive) pairs."""
    hits = sum(t and p for t, p in outcomes)
    predicted, actual = sum(p for _, p in outcomes), sum(t for t, _ in outcomes)
    precision, recall = hits / max(1, predicted), hits / max(1, actual)
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3), "support": actual}


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"duplex predictor on held-out voices ({report['segments']} segment ends)")
    for column in ("decision", "precision", "recall", "F1", "support"):
        table.add_column(column)
    rows = {**{f"class {k}": v for k, v in report["classes"].items()},
            "turn taking: user done -> takes the turn": report["turn_taking"],
            "barge-in: over the reply -> takes the turn": report["barge_in"]}
    for name, scores in rows.items():
        table.add_row(name, *(str(scores[k]) for k in ("precision", "recall", "f1", "support")))
    console = Console()
    console.print(table)
    console.print(f"backchannels that would interrupt the reply: {report['backchannel_interrupts']:.1%}; "
                  f"accuracy {report['accuracy']:.1%}")
