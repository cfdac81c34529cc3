"""Stage 2, text→speech (paper §4.2): the output projector, then + the voice-token LM; and token2wav's flow.

Data: `minmo data speech-out` (the assistant's replies in its one voice: LLM hidden states and token
embeddings per reply token, the 25 Hz speech tokens of the trained tokenizer, the 50 Hz mel). Objectives,
summed over what a phase trains (their parameters never overlap):
- voice LM (trainable `projector` and/or `voice_lm`): cross-entropy of the speech tokens (and END_OF_SPEECH)
  in the exact 5:15 interleaved stream that serving decodes (`interleave.teacher_forcing_inputs`), with
  logits only at the predicted positions;
- flow (trainable `flow`): CosyVoice 2's conditional flow-matching loss on random crops of `flow_crop_tokens`
  tokens of the tokens → mel pairs, with its streaming chunk masks, plus `flow_prior_weight` × Matcha-TTS's
  prior loss on the encoder's `mu` (0: CosyVoice 2's objective alone).
A run may start from exported weights (`init`), e.g. to continue the flow alone after a joint run.
Against a voice LM that learns its few thousand replies by heart: `lm_input_dropout` (dropout on the LM's input
vectors, training only) and `heldout_data` (replies about unseen topics, `minmo data speech-out --split heldout`):
their voice-LM loss is measured at every checkpoint and `export/` keeps the step where it was lowest.
The LLM is frozen (its states come from the data) and the vocoder is pretrained. Checkpoints resume
(minmo.train.runner); `export/` holds output_projector / voice_token_lm / token2wav safetensors in float16,
the layout `build_component(checkpoint=...)` loads (token2wav: the flow only).
"""

from __future__ import annotations

import dataclasses
import json
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from minmo.model.config import MinMoConfig, load_config
from minmo.model.flow_matching import FlowMatching
from minmo.model.interleave import IGNORE_INDEX, VoiceSchedule, teacher_forcing_inputs
from minmo.model.output_projector import OutputProjector
from minmo.model.voice_token_lm import VoiceTokenLM
from minmo.train.runner import RunSettings, run_phases
from minmo.train.speech_out_data import SpokenReply, read_replies
from minmo.train.stage1 import Phase, init_distributed

FILES = {"projector": "output_projector", "voice_lm": "voice_token_lm", "flow": "token2wav"}  # export file of a part
PARTS = tuple(FILES)


@dataclass(frozen=True)
class Stage2Config:
    model: str = "nano"
    data: str = "data/nano-speech"
    also_data: tuple[str, ...] = ()  # more reply folders drawn from with `data` (stage 3: stage 2's typed turns too)
    out: str = "runs/nano-stage2"
    phases: tuple[Phase, ...] = (
        Phase("projector", 200, ("projector",), 1e-3),
        Phase("voice-lm+flow", 3000, ("projector", "voice_lm", "flow"), 5e-4),
    )
    batch_size: int = 8
    flow_crop_tokens: int = 50  # 2 s crops for the flow (its chunk masks make longer contexts unnecessary)
    flow_prior_weight: float = 0.0  # Matcha-TTS's prior loss on the flow's `mu` (FlowMatching.training_loss)
    lm_input_dropout: float = 0.0  # dropout on the voice LM's input vectors (semantic and speech), training only
    heldout_data: str = ""  # replies the run never trains on: their voice-LM loss picks the exported step
    heldout_limit: int = 60  # usable held-out replies measured (the first ones)
    init: str = ""  # exported weights a new run starts from (e.g. the shipped nano checkpoint); "" = seeded random
    warmup_steps: int = 20
    checkpoint_every: int = 25
    threads: int = 0
    seed: int = 0
    stop_after_steps: int = 0

    @classmethod
    def from_toml(cls, path: str | Path) -> Stage2Config:
        raw = tomllib.loads(Path(path).read_text())
        if "phases" in raw:
            raw["phases"] = tuple(Phase.from_toml(p) for p in raw["phases"])
        if "also_data" in raw:
            raw["also_data"] = tuple(raw["also_data"])
        return cls(**raw)


class SpeechOut(nn.Module):
    """The trained speech-out modules, with the stage's two losses."""

    def __init__(self, cfg: MinMoConfig) -> None:
        super().__init__()
        self.output_projector = OutputProjector(cfg.output_projector)
        self.voice_token_lm = VoiceTokenLM(cfg.voice_token_lm)
        self.flow = FlowMatching(cfg.flow)

    def parts(self, names: tuple[str, ...]) -> list[nn.Parameter]:
        modules = {"projector": self.output_projector, "voice_lm": self.voice_token_lm, "flow": self.flow}
        unknown = set(names) - set(modules)
        assert not unknown, f"unknown trainable parts {sorted(unknown)}: expected a subset of {PARTS}"
        return [p for name in names for p in modules[name].parameters()]

    def lm_loss(self, batch: list[SpokenReply], input_dropout: float = 0.0) -> torch.Tensor:
        """Speech-token cross-entropy over the interleaved streams of `batch` (right-padded); `input_dropout` zeroes
        input vector elements at random while the module trains."""
        streams, targets = [], []
        for reply in batch:
            semantic = self.output_projector(reply.hidden.float()[None], reply.embed.float()[None])
            inputs, target = teacher_forcing_inputs(self.voice_token_lm, semantic, reply.tokens.tolist())
            streams.append(inputs[0])
            targets.append(target[0])
        inputs = F.dropout(pad_sequence(streams, batch_first=True), input_dropout, self.training)
        target = pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([s.shape[0] for s in streams])
        attention = (torch.arange(inputs.shape[1])[None, :] < lengths[:, None]).long()
        hidden = self.voice_token_lm.decoder(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
        predicted = target != IGNORE_INDEX
        logits = self.voice_token_lm.head(hidden[predicted])
        return F.cross_entropy(logits.float(), target[predicted])

    def load_exported(self, folder: str | Path, required: bool = True) -> set[str]:
        """Start from exported weights (`export_weights`' layout, float16 widened to the parameters' dtype); returns
        the file names loaded. With `required` off, a part the folder lacks keeps its seeded weights."""
        loaded = set()
        for name, module, prefix in self.exported():
            path = Path(folder) / f"{name}.safetensors"
            if not path.is_file() and not required:
                continue
            state = load_file(str(path))
            module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()})
            loaded.add(name)
        return loaded

    def exported(self) -> tuple[tuple[str, nn.Module, str], ...]:
        """(file name, module, key prefix in the file) of every exported part; token2wav holds the flow only."""
        return (
            ("output_projector", self.output_projector, ""),
            ("voice_token_lm", self.voice_token_lm, ""),
            ("token2wav", self.flow, "flow."),
        )

    def flow_loss(self, batch: list[SpokenReply], crop: int, rng: random.Random,
                  prior_weight: float = 0.0) -> torch.Tensor:
        """Flow matching on a random `crop`-token window of each reply (shorter replies padded and masked)."""
        ratio = self.flow.cfg.token_mel_ratio
        tokens, mels, masks = [], [], []
        for reply in batch:
            count = reply.tokens.shape[0]
            start = rng.randrange(0, max(1, count - crop + 1))
            stop = min(count, start + crop)
            tokens.append(F.pad(reply.tokens[start:stop], (0, crop - (stop - start))))
            mel = reply.mel[:, start * ratio : stop * ratio].float()
            mels.append(F.pad(mel, (0, crop * ratio - mel.shape[1])))
            masks.append((torch.arange(crop * ratio) < mel.shape[1]).float())
        return self.flow.training_loss(torch.stack(tokens), torch.stack(mels), mel_mask=torch.stack(masks),
                                       prior_weight=prior_weight)


def usable(reply: SpokenReply, schedule: VoiceSchedule) -> bool:
    """Whether the reply's speech fills every full 5:15 block (a reply spoken faster than 3 tokens per text
    token cannot be taught in the interleave) and has tokens at all."""
    blocks = schedule.full_blocks(reply.hidden.shape[0])
    return reply.tokens.shape[0] >= max(1, blocks * schedule.speech_block)


@torch.no_grad()
def voice_lm_loss(model: str, weights: str | Path, data: str | Path, limit: int, batch_size: int = 8) -> float:
    """The voice-token LM's teacher-forced cross-entropy (with the output projector of `weights`, an export folder)
    on the first `limit` usable replies of `data`, averaged over batches weighted by their size: on held-out replies
    it says whether the LM generalises or has learnt its training replies by heart, in seconds instead of a
    whole-turn evaluation."""
    cfg = load_config(model)
    speech_out = SpeechOut(cfg).eval()
    loaded = speech_out.load_exported(weights, required=False)  # the flow may be in another run's export
    missing = {"output_projector", "voice_token_lm"} - loaded
    assert not missing, f"{weights} lacks {sorted(missing)}: the voice LM's loss needs both"
    replies = usable_replies(data, VoiceSchedule.from_config(cfg.voice_token_lm), limit)
    return mean_lm_loss(speech_out, replies, batch_size)


def usable_replies(data: str | Path, schedule: VoiceSchedule, limit: int = -1) -> list[SpokenReply]:
    """The first `limit` (-1: all) usable replies of a speech-out folder; an empty folder is an error."""
    replies = [r for r in read_replies(data) if usable(r, schedule)][: None if limit < 0 else limit]
    assert replies, f"no usable spoken replies in {data}: run `minmo data speech-out` first"
    return replies


@torch.no_grad()
def mean_lm_loss(speech_out: SpeechOut, replies: list[SpokenReply], batch_size: int = 8) -> float:
    """Voice-LM cross-entropy over `replies`, averaged over batches weighted by their size."""
    batches = [replies[i : i + batch_size] for i in range(0, len(replies), batch_size)]
    return sum(speech_out.lm_loss(batch).item() * len(batch) for batch in batches) / len(replies)


def train(cfg: Stage2Config, stage: str = "stage 2") -> Path:
    """Train (or resume) stage 2 (or stage 3, the same trainer on spoken turns), in one process or several under
    torchrun; returns the run folder."""
    rank, world = init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    model_cfg = load_config(cfg.model)
    model = SpeechOut(model_cfg)
    schedule = VoiceSchedule.from_config(model_cfg.voice_token_lm)
    replies = [r for folder in (cfg.data, *cfg.also_data) for r in usable_replies(folder, schedule)]
    trains_lm = any({"projector", "voice_lm"} & set(phase.train) for phase in cfg.phases)
    heldout = usable_replies(cfg.heldout_data, schedule, cfg.heldout_limit) if cfg.heldout_data and trains_lm else []
    if cfg.init and not Path(cfg.init).is_dir():
        raise FileNotFoundError(f"init folder {cfg.init} does not exist")
    carried = model.load_exported(cfg.init, required=False) if cfg.init else set()  # a resume then replaces them
    trained = {FILES[part] for phase in cfg.phases for part in phase.train}
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        print(f"{stage}: {len(replies)} spoken replies, {world} process(es), run folder {out}"
              + (f"; export kept at the lowest voice-LM loss on {len(heldout)} held-out replies" if heldout else ""))
        if cfg.init:
            print(f"from {cfg.init}: {', '.join(sorted(carried)) or 'nothing (no exported weights there)'}")

    def step_loss(phase: Phase, step: int, rank: int) -> torch.Tensor:
        rng = random.Random(f"{cfg.seed}:{phase.name}:{step}" + (f":{rank}" if rank else ""))
        batch = [replies[i] for i in rng.sample(range(len(replies)), min(cfg.batch_size, len(replies)))]
        loss = torch.zeros(())
        if {"projector", "voice_lm"} & set(phase.train):
            loss = loss + model.lm_loss(batch, cfg.lm_input_dropout)
        if "flow" in phase.train:
            loss = loss + model.flow_loss(batch, cfg.flow_crop_tokens, rng, cfg.flow_prior_weight)
        return loss

    settings = RunSettings(out, f"{stage} ({cfg.model})", cfg.warmup_steps, cfg.checkpoint_every, cfg.stop_after_steps,
                           cfg.seed, validate=(lambda: mean_lm_loss(model, heldout)) if heldout else None)
    run_phases(model, cfg.phases, settings, lambda phase: model.parts(phase.train), step_loss,
               lambda: export_weights(model, out / "export", f"{cfg.out}: {', '.join(p.name for p in cfg.phases)}",
                                      trained | carried))
    if world > 1:
        dist.destroy_process_group()
    return out


def export_weights(model: SpeechOut, folder: Path, run: str, names: set[str] | None = None) -> None:
    """float16 weights where `build_component(cfg, name, checkpoint=folder)` finds them; token2wav: the flow only
    (the vocoder is pretrained). `names`: only these files (a run exports what it trained or carried over from
    `init`, never seeded random weights, so `minmo train checkpoint` can put runs of separate parts together)."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"dtype": "float16 (trained in float32)", "run": run}
    for name, module, prefix in model.exported():
        if names is not None and name not in names:
            continue
        state = {f"{prefix}{k}": v.detach().half().contiguous() for k, v in module.state_dict().items()
                 if v.is_floating_point()}
        save_file(state, str(folder / f"{name}.safetensors"), metadata=metadata)
