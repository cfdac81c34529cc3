"""`minmo data duplex`: simulated turn-taking moments for stage 4, the duplex predictor (paper §3.4).

A moment is one spoken user turn as the llm service hears it: audio segments appended one after another to one
open user turn (`Dialogue.listen`), each segment one encoder flush, and the class the predictor must give at the
segment's last position (where `Dialogue.append_audio` reads it):
- complete: a whole question or request -> respond;
- paused: the user stops mid-sentence (the VAD ends a segment there) -> keep_listening, then the rest -> respond;
- backchannel: the assistant's reply is the context's last turn (its audio is playing) and the user says "uh-huh",
  "yeah" -> backchannel: the reply goes on;
- barge-in: the same context, and the user says "wait, stop" or asks something new -> stop_speaking.
The paper's simulation draws the barge-in at T ~ N(0.6 s, 0.4^2) after the assistant starts speaking; here text
generation (a few hundred milliseconds on `nano`) ends long before, so every barge-in and backchannel happens
after the whole reply is in the context, which is what the llm service holds at that moment.

Segments are spoken by the stage-1 data's voices (training voices for `train`, held-out voices for `eval`, whose
questions are held-out facts and topics), augmented like stage 1's on `train`, encoded by the served speech
encoder (`build_component("speech_encoder")` with the trained projector), and run through the frozen LLM after a
context: the system block and, for complete and paused moments, half the time an earlier exchange. A shard keeps
the LLM's hidden states at each segment's audio positions (float16): stage 4 trains on them without the LLM.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from minmo.train import texts
from minmo.train.evaluate import SpokenModel
from minmo.train.voices import HELD_OUT_VOICES, TRAIN_VOICES, augment, available, synthesize

CLASSES = ("keep_listening", "respond", "stop_speaking", "backchannel")  # DuplexPredictorConfig.classes
KINDS = ("complete", "paused", "backchannel", "barge_in")
BACKCHANNELS = ("uh-huh", "mm-hmm", "yeah", "right", "okay", "I see", "sure", "yes", "got it", "oh, really",
                "uh-huh, yeah", "mhm", "wow", "oh okay", "true", "exactly")
BARGE_INS = ("wait", "stop", "hold on", "sorry, wait", "no, no, stop", "excuse me", "let me stop you there",
             "that's not what I asked", "actually, never mind", "hang on a second", "stop talking please",
             "wait a moment", "okay stop", "no, that's wrong")


@dataclass(frozen=True)
class DuplexDataConfig:
    """What `minmo data duplex` makes."""

    model: str = "nano"  # its speech encoder (with the trained projector) and LLM make the hidden states
    checkpoint: str | None = None  # trained weights (default: the preset's own)
    answers: str = "data/nano/answers.jsonl"  # `minmo data build`'s typed answers: the assistant's replies
    out: str = "data/nano-duplex"
    train_moments: int = 9600
    eval_moments: int = 480
    shard_size: int = 200
    augment_share: float = 0.7
    engines: tuple[str, ...] = ("piper", "espeak", "flite")
    threads: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Moment:
    """One simulated user turn: what is said in each segment, the class at each segment's end, the context."""

    id: str
    split: str
    kind: str  # one of KINDS
    segments: tuple[str, ...]
    labels: tuple[str, ...]  # one of CLASSES per segment
    history: tuple[tuple[str, str], ...]  # (role, text) turns before the user turn
    voice: str
    augment: bool


def build(cfg: DuplexDataConfig) -> Path:
    """Plan and write every split's shards into `cfg.out` (resumable: complete shards are kept)."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    answers = {row["prompt"]: row["answer"] for row in _read_jsonl(Path(cfg.answers))}
    assert answers, f"no typed answers in {cfg.answers}: run `minmo data build` first"
    listener = None
    for split, count in (("eval", cfg.eval_moments), ("train", cfg.train_moments)):
        plan_path = out / f"moments-{split}.jsonl"
        if plan_path.is_file():
            moments = [_moment(row) for row in _read_jsonl(plan_path)]
        else:
            moments = plan(cfg, split, count, answers)
            plan_path.write_text("".join(json.dumps(asdict(m)) + "\n" for m in moments))
        shards = [moments[start : start + cfg.shard_size] for start in range(0, len(moments), cfg.shard_size)]
        missing = [(n, shard) for n, shard in enumerate(shards) if not shard_path(out, split, n).is_file()]
        if not missing:
            continue
        listener = listener or Listener(SpokenModel(cfg.model, cfg.checkpoint))
        done = len(moments) - sum(len(shard) for _, shard in missing)
        with tqdm(total=len(moments), initial=done, desc=f"{split} moments", unit="moment") as bar:
            for number, shard in missing:
                rng = np.random.default_rng([cfg.seed, number, len(split)])
                tensors = {}
                for moment in shard:
                    for index, hidden in enumerate(listener(moment, rng)):
                        tensors[f"{moment.id}.{index}"] = hidden.half()
                    bar.update(1)
                _write_shard(out, split, number, tensors, shard)
    return out


def plan(cfg: DuplexDataConfig, split: str, count: int, answers: dict[str, str]) -> list[Moment]:
    """`count` moments of `split`, a quarter of each kind, drawn from a generator seeded by the split's name."""
    rng = random.Random(f"{cfg.seed}:duplex:{split}")
    pool = TRAIN_VOICES if split == "train" else HELD_OUT_VOICES
    voices = [v.id for v in pool if v.engine in cfg.engines and available(v)]
    if not voices:
        raise RuntimeError(f"no TTS voice for split {split!r} is available: install piper-tts, espeak-ng or flite")
    text_split = "train" if split == "train" else "heldout"
    asked = [q.text for q in texts.questions(text_split) if q.text in answers]
    asked += [text for text in texts.instructions(text_split) if text in answers]
    said = [q.text for q in texts.questions(text_split)] + texts.reply_prompts(text_split)
    moments = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        question = rng.choice(asked)
        exchange = (("user", question), ("assistant", answers[question]))
        earlier = exchange if rng.random() < 0.5 else ()
        if kind == "complete":
            segments, labels, history = (rng.choice(said),), ("respond",), earlier
        elif kind == "paused":
            segments = cut_at_pause(rng.choice([s for s in said if len(s.split()) >= 4]), rng)
            labels, history = ("keep_listening", "respond"), earlier
        elif kind == "backchannel":
            segments, labels, history = (rng.choice(BACKCHANNELS),), ("backchannel",), exchange
        else:
            interruption = rng.choice(BARGE_INS) if rng.random() < 0.6 else rng.choice(said)
            segments, labels, history = (interruption,), ("stop_speaking",), exchange
        noisy = split == "train" and rng.random() < cfg.augment_share
        voice = rng.choice(voices)
        moments.append(Moment(f"{split}-{index:06d}", split, kind, segments, labels, history, voice, noisy))
    return moments


def cut_at_pause(sentence: str, rng: random.Random) -> tuple[str, str]:
    """The sentence cut at a word boundary: at least two words before the pause and one after it; the first part
    loses its punctuation, as a speaker who is not done does not end the sentence."""
    words = sentence.split()
    cut = rng.randrange(2, len(words) - 1)
    return " ".join(words[:cut]).rstrip(",.;:"), " ".join(words[cut:])


class Listener:
    """The served speech encoder and LLM: a moment's segments -> the LLM hidden states at their audio positions."""

    def __init__(self, served: SpokenModel) -> None:
        self.speech_encoder, self.dialogue = served.speech_encoder, served.dialogue
        self.voices = {v.id: v for v in (*TRAIN_VOICES, *HELD_OUT_VOICES)}

    @torch.no_grad()
    def __call__(self, moment: Moment, rng: np.random.Generator) -> list[torch.Tensor]:
        state = self.dialogue.start("", list(moment.history))
        hidden = []
        for text in moment.segments:
            audio = synthesize(self.voices[moment.voice], text)
            if moment.augment:
                audio = augment(audio, rng)
            embeddings = self.speech_encoder(torch.from_numpy(audio))  # (1, N, D): one encoder flush
            states, state = self.dialogue.listen(state, embeddings)
            hidden.append(states[0].float())  # (N, llm_dim)
        return hidden


@dataclass
class SimulatedTurn:
    """One moment read back: its segments' LLM hidden states and the class at each segment's end."""

    moment: Moment
    hidden: list[torch.Tensor]  # (N_i, llm_dim) float16 per segment

    def labels(self) -> list[int]:
        return [CLASSES.index(label) for label in self.moment.labels]


def read_turns(folder: str | Path, split: str) -> Iterator[SimulatedTurn]:
    """Every moment of `split` in the complete shards of `folder`, in order."""
    for path in sorted(Path(folder).glob(f"{split}-[0-9]*.safetensors")):
        tensors = load_file(str(path))
        for row in _read_jsonl(path.with_suffix(".jsonl")):
            moment = _moment(row)
            yield SimulatedTurn(moment, [tensors[f"{moment.id}.{i}"] for i in range(len(moment.segments))])


def shard_path(out: Path, split: str, number: int) -> Path:
    return out / f"{split}-{number:05d}.safetensors"


def _write_shard(out: Path, split: str, number: int, tensors: dict[str, torch.Tensor], moments: list[Moment]) -> None:
    path = shard_path(out, split, number)
    path.with_suffix(".jsonl").write_text("".join(json.dumps(asdict(m)) + "\n" for m in moments))
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.rename(path)  # last: a shard that exists is complete


def _moment(row: dict) -> Moment:
    return Moment(**(row | {
        "segments": tuple(row["segments"]), "labels": tuple(row["labels"]),
        "history": tuple(tuple(turn) for turn in row["history"]),
    }))


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
