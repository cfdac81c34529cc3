"""`minmo train tokenizer`: the supervised semantic speech tokenizer (minmo.model.speech_tokenizer).

It trains on the stage-1 shards (`minmo data build`): many voices, each utterance with its transcript, the
frozen voice encoder's output cached in the shard (nano) or computed here (tiny's random SAN-M). Only the
tokenizer learns. `export/` holds `speech_tokenizer.safetensors` and its sizes (`speech_tokenizer.json`),
which `minmo data speech-out` uses to turn the assistant's recorded replies into speech tokens.
"""

from __future__ import annotations

import dataclasses
import json
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import torch
from safetensors.torch import load_file, save_file
from torch import distributed as dist
from torch.nn.utils.rnn import pad_sequence

from minmo.model.config import load_config
from minmo.model.speech_tokenizer import SpeechTokenizer, SpeechTokenizerConfig, character_ids
from minmo.train.data import Utterance, read_split
from minmo.train.runner import RunSettings, run_phases
from minmo.train.stage1 import Phase, init_distributed

WEIGHTS_FILE = "speech_tokenizer.safetensors"
CONFIG_FILE = "speech_tokenizer.json"


@dataclass(frozen=True)
class TokenizerTrainConfig:
    model: str = "nano"  # whose voice encoder the tokenizer sits on
    data: str = "data/nano"
    out: str = "runs/nano-tokenizer"
    tokenizer: SpeechTokenizerConfig = field(default_factory=SpeechTokenizerConfig)
    phases: tuple[Phase, ...] = (Phase("ctc", 3000, ("tokenizer",), 1e-3),)
    batch_size: int = 16
    warmup_steps: int = 50
    checkpoint_every: int = 100
    eval_items: int = 40
    threads: int = 0
    seed: int = 0
    stop_after_steps: int = 0

    @classmethod
    def from_toml(cls, path: str | Path) -> TokenizerTrainConfig:
        raw = tomllib.loads(Path(path).read_text())
        if "phases" in raw:
            raw["phases"] = tuple(Phase.from_toml(p) for p in raw["phases"])
        if "tokenizer" in raw:
            raw["tokenizer"] = SpeechTokenizerConfig(**raw["tokenizer"])
        return cls(**raw)


class EncoderFrames:
    """The voice encoder's frames of an utterance: cached in the shard, or computed by the (frozen) encoder."""

    def __init__(self, model: str) -> None:
        self.model_cfg = load_config(model)
        self.encoder = None  # built on first use: nano's shards carry the Whisper output already

    @torch.no_grad()
    def __call__(self, utterance: Utterance) -> torch.Tensor:
        if utterance.encoded is not None:
            return utterance.encoded.float()
        if self.encoder is None:
            from minmo.model.speech_encoder import build_voice_encoder

            self.encoder = build_voice_encoder(self.model_cfg).eval()
        return self.encoder(utterance.mel.float()[None])[0]


def train(cfg: TokenizerTrainConfig) -> Path:
    """Train (or resume) the tokenizer, in one process or several under torchrun; returns the run folder."""
    rank, world = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    frames_of = EncoderFrames(cfg.model)
    examples = [(frames_of(u), character_ids(u.item.text)) for u in read_split(cfg.data, "train")]
    examples = [(frames, chars) for frames, chars in examples if chars]
    assert examples, f"no training shards in {cfg.data}: run `minmo data build` first"
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        print(f"tokenizer: {len(examples)} training utterances, {world} process(es), run folder {out}")
    model = SpeechTokenizer(cfg.tokenizer)

    def step_loss(phase: Phase, step: int, rank: int) -> torch.Tensor:
        rng = random.Random(f"{cfg.seed}:{phase.name}:{step}" + (f":{rank}" if rank else ""))
        batch = [examples[i] for i in rng.sample(range(len(examples)), min(cfg.batch_size, len(examples)))]
        frames = pad_sequence([f for f, _ in batch], batch_first=True)
        lengths = torch.tensor([f.shape[0] for f, _ in batch])
        return model.ctc_loss(frames, lengths, [chars for _, chars in batch])

    def export() -> None:
        export_tokenizer(model, out / "export")

    settings = RunSettings(out, f"speech tokenizer ({cfg.model})", cfg.warmup_steps, cfg.checkpoint_every,
                           cfg.stop_after_steps, cfg.seed)
    run_phases(model, cfg.phases, settings, lambda phase: list(model.parameters()), step_loss, export)
    if world > 1:
        dist.destroy_process_group()
    if rank == 0:
        model.eval()
        report = evaluate_tokenizer(model, frames_of, cfg.data, cfg.eval_items)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"tokenizer on held-out voices: {report}")
    return out


def evaluate_tokenizer(model: SpeechTokenizer, frames_of: EncoderFrames, data: str, limit: int) -> dict:
    """Character error rate of the CTC transcript read from the codes alone (held-out voices), and how much of
    the codebook the held-out speech uses."""
    references, hypotheses, codes = [], [], set()
    for _, utterance in zip(range(limit), read_split(data, "eval"), strict=False):
        frames = frames_of(utterance)[None]
        references.append(" ".join("".join(c for c in utterance.item.text.lower() if c.isalnum() or c in " '").split()))
        hypotheses.append(model.transcribe(frames))
        codes |= set(model.encode(frames)[0].tolist())
    if not references:
        return {"utterances": 0}
    return {"utterances": len(references), "cer": round(jiwer.cer(references, hypotheses), 4),
            "codes_used": len(codes), "example": hypotheses[0]}


def export_tokenizer(model: SpeechTokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model.cfg), indent=2))


def load_tokenizer_from(folder: str | Path) -> SpeechTokenizer:
    """A trained tokenizer from an export folder."""
    folder = Path(folder)
    model = SpeechTokenizer(SpeechTokenizerConfig(**json.loads((folder / CONFIG_FILE).read_text())))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()
