"""`minmo data build`: synthetic speech→text training and evaluation data, sharded on disk and resumable.

Steps, each skipped when its output already exists (so an interrupted build continues where it stopped):
1. `answers.jsonl`: the text LLM's own greedy answer to every question and instruction, typed, in the chat
   format the model is served with. Spoken-QA targets are these answers, so speech in gives what the text
   LLM would say for the same words typed (the paper's "keep the text LLM's ability").
2. `items-<split>.jsonl`: the utterances of each split, drawn from a seeded generator: task (asr: transcribe
   the speech; qa: answer it), what is spoken, by which voice, and the target text.
3. `<split>-NNNNN.safetensors` + `.jsonl`: shards of `shard_size` utterances: the log-mel features (float16)
   and, when the voice encoder is pretrained and frozen (Whisper), its output (float16), computed once here
   instead of at every training step. Evaluation shards also keep the 16 kHz audio (int16) for the judge.
   A shard is written to a temporary name and renamed, so a shard on disk is always complete.

Splits: `train` (training voices, training facts), `eval` (held-out voices; every question carries whether
its fact was held out too), `eval-seen` (training voices, held-out facts) for comparison.
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

from minmo.model.config import MinMoConfig, load_config
from minmo.model.dialogue import TRANSCRIBE_INSTRUCTION
from minmo.train import texts
from minmo.train.voices import HELD_OUT_VOICES, TRAIN_VOICES, Voice, augment, available, synthesize

ANSWER_BATCH = 16
INT16_MAX = 32767


@dataclass(frozen=True)
class DataConfig:
    """What `minmo data build` makes."""

    model: str = "nano"  # model preset or JSON: its LLM answers, its front end / encoder make the features
    out: str = "data/nano"
    train_items: int = 4000
    eval_items: int = 200
    eval_seen_items: int = 60
    shard_size: int = 250
    qa_share: float = 0.5  # share of training utterances that are questions to answer (the rest: ASR)
    max_answer_tokens: int = 48
    augment_share: float = 0.7  # share of training utterances with a random acoustic condition (voices.augment)
    engines: tuple[str, ...] = ("piper", "espeak", "flite")  # TTS engines to draw voices from
    answer_limit: int = -1  # answer only the first N prompts (-1: all); QA trains on answered questions only
    threads: int = 1  # torch threads: on a busy shared CPU one thread is several times faster than two
    seed: int = 0


@dataclass(frozen=True)
class Item:
    """One utterance to synthesise and what the model should reply to it."""

    id: str
    split: str
    task: str  # asr | qa
    text: str  # what the user says
    target: str  # the reply the LLM learns (the transcript, or the text LLM's answer)
    voice: str  # Voice.id
    augment: bool
    fact: str = ""  # qa: which fact is asked
    gold: tuple[str, ...] = ()  # qa: words a right reply contains
    heldout_fact: bool = False

    @property
    def instruction(self) -> str:
        """Text after the audio inside the user's turn: the ASR task's instruction, nothing for QA."""
        return TRANSCRIBE_INSTRUCTION if self.task == "asr" else ""


def build(cfg: DataConfig) -> Path:
    """Run every step of the build into `cfg.out`; returns that directory."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    model_cfg = load_config(cfg.model)
    answers = write_answers(model_cfg, out / "answers.jsonl", cfg.max_answer_tokens, cfg.answer_limit)
    for split, count in (("eval", cfg.eval_items), ("eval-seen", cfg.eval_seen_items), ("train", cfg.train_items)):
        items = _load_or_plan(out / f"items-{split}.jsonl", lambda s=split, n=count: plan(cfg, s, n, answers))
        write_shards(model_cfg, items, out, split, cfg.shard_size, keep_audio=split != "train", seed=cfg.seed)
    return out


def write_answers(model_cfg: MinMoConfig, path: Path, max_tokens: int, limit: int = -1) -> dict[str, str]:
    """{prompt: the LLM's greedy typed answer} for every question and instruction (the first `limit` when not
    -1), appended to `path` as they are made."""
    done = {row["prompt"]: row["answer"] for row in _read_jsonl(path)}
    prompts = [q.text for split in ("train", "heldout") for q in texts.questions(split)]
    prompts += texts.instructions("train") + texts.instructions("heldout")
    prompts = list(dict.fromkeys(prompts))[: None if limit < 0 else limit]
    todo = [p for p in prompts if p not in done]
    if not todo:
        return done
    from minmo.model.build import build_component
    from minmo.model.tokenizer import load_tokenizer

    llm = build_component(model_cfg, "llm")
    tokenizer = load_tokenizer(model_cfg.llm)
    with path.open("a") as sink, tqdm(total=len(todo), desc="answers (text LLM)", unit="prompt") as bar:
        for start in range(0, len(todo), ANSWER_BATCH):
            batch = todo[start : start + ANSWER_BATCH]
            for prompt, answer in zip(batch, typed_answers(llm, tokenizer, batch, max_tokens), strict=True):
                done[prompt] = answer
                sink.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
            sink.flush()
            bar.update(len(batch))
    return done


@torch.no_grad()
def typed_answers(llm, tokenizer, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy replies of the LLM to typed user messages, batched with left padding; cut at the last full
    sentence when the token budget ends mid-sentence."""
    prompt_ids = [tokenizer.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
    width = max(len(ids) for ids in prompt_ids)
    pad = tokenizer.eos_token_ids[0]
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
    output = llm.model.generate(
        input_ids=input_ids, attention_mask=attention, max_new_tokens=max_tokens, do_sample=False,
        eos_token_id=list(tokenizer.eos_token_ids), pad_token_id=pad,
    )
    answers = []
    for row in output[:, width:].tolist():
        ended = any(token in tokenizer.eos_token_ids for token in row)
        ids = [t for t in row[: _first_end(row, tokenizer.eos_token_ids)]]
        text = tokenizer.decode(ids).strip()
        answers.append(text if ended else _whole_sentences(text))
    return answers


def _first_end(row: list[int], ends: tuple[int, ...]) -> int:
    return next((i for i, token in enumerate(row) if token in ends), len(row))


def _whole_sentences(text: str) -> str:
    cut = max(text.rfind(mark) for mark in ".!?")
    return text[: cut + 1] if cut > 0 else text


def plan(cfg: DataConfig, split: str, count: int, answers: dict[str, str]) -> list[Item]:
    """`count` utterances of `split`, drawn from a generator seeded by the split's name and `cfg.seed`."""
    rng = random.Random(f"{cfg.seed}:{split}")
    pool_voices = TRAIN_VOICES if split in ("train", "eval-seen") else HELD_OUT_VOICES
    voices = [v for v in pool_voices if v.engine in cfg.engines and available(v)]
    if not voices:
        raise RuntimeError(f"no TTS voice for split {split!r} is available: install piper-tts, espeak-ng or flite")
    fact_split = {"train": "train", "eval": None, "eval-seen": "heldout"}[split]
    pool = texts.questions(fact_split) if fact_split else texts.all_questions()
    heldout_facts = {q.fact for q in texts.questions("heldout")}
    # a training target must be the text LLM's answer; evaluation computes its typed baseline itself
    answerable = [q for q in pool if q.text in answers]
    instructions = [text for text in texts.instructions("train") if text in answers]
    spoken = [q.text for q in texts.questions("train")] + texts.instructions("train")
    sentences = spoken + [s for p in spoken for s in _sentences(answers.get(p, ""))]
    items = []
    for index in range(count):
        voice = rng.choice(voices)
        noisy = split == "train" and rng.random() < cfg.augment_share
        item_id = f"{split}-{index:06d}"
        if split == "train" and rng.random() >= cfg.qa_share:
            text = rng.choice(sentences)
            items.append(Item(item_id, split, "asr", text, text, voice.id, noisy))
            continue
        if split == "train" and instructions and rng.random() < 0.2:  # open instructions: the answer is the target
            text = rng.choice(instructions)
            items.append(Item(item_id, split, "qa", text, answers[text], voice.id, noisy))
            continue
        question = rng.choice(answerable if split == "train" else pool)
        items.append(Item(
            item_id, split, "qa", question.text, answers.get(question.text, ""), voice.id, noisy, question.fact,
            question.gold, question.fact in heldout_facts,
        ))
    return items


def _sentences(text: str) -> list[str]:
    """Sentences of a reply that make reasonable utterances (3 to 25 words)."""
    pieces = [s.strip() for s in text.replace("!", ".").replace("?", "?.").split(".") if s.strip()]
    return [p if p.endswith("?") else p + "." for p in pieces if 3 <= len(p.split()) <= 25]


def write_shards(
    model_cfg: MinMoConfig, items: list[Item], out: Path, split: str, shard_size: int, keep_audio: bool, seed: int
) -> None:
    """Synthesise and featurise `items` into shards of `shard_size`; existing shards are kept as they are."""
    shards = [items[start : start + shard_size] for start in range(0, len(items), shard_size)]
    missing = [(n, shard) for n, shard in enumerate(shards) if not shard_path(out, split, n).is_file()]
    if not missing:
        return
    featurizer = Featurizer(model_cfg)
    voices = {v.id: v for v in (*TRAIN_VOICES, *HELD_OUT_VOICES)}
    done = sum(len(shard) for shard in shards) - sum(len(shard) for _, shard in missing)
    with tqdm(total=len(items), initial=done, desc=f"{split} utterances", unit="utt") as bar:
        for number, shard in missing:
            rng = np.random.default_rng([seed, number, len(split)])
            tensors, rows = {}, []
            for item in shard:
                audio = synthesize(voices[item.voice], item.text)
                if item.augment:
                    audio = augment(audio, rng)
                tensors |= featurizer(item.id, audio, keep_audio)
                rows.append(asdict(item) | {"seconds": round(len(audio) / 16000, 3)})
                bar.update(1)
            _write_shard(out, split, number, tensors, rows)


def shard_path(out: Path, split: str, number: int) -> Path:
    return out / f"{split}-{number:05d}.safetensors"


def _write_shard(out: Path, split: str, number: int, tensors: dict[str, torch.Tensor], rows: list[dict]) -> None:
    path = shard_path(out, split, number)
    path.with_suffix(".jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.rename(path)  # last: a shard that exists is complete


class Featurizer:
    """Audio -> the tensors a shard keeps: log-mel, the frozen encoder's output, optionally the audio."""

    def __init__(self, model_cfg: MinMoConfig) -> None:
        from minmo.model.speech_encoder import build_front_end, build_voice_encoder

        self.front_end = build_front_end(model_cfg)
        self.cache_encoder = model_cfg.voice_encoder.kind == "whisper"  # pretrained and frozen: compute once
        self.encoder = build_voice_encoder(model_cfg).eval() if self.cache_encoder else None

    @torch.no_grad()
    def __call__(self, item_id: str, audio: np.ndarray, keep_audio: bool) -> dict[str, torch.Tensor]:
        mel = self.front_end.forward(torch.from_numpy(audio))
        tensors = {f"{item_id}.mel": mel.half()}
        if self.encoder is not None:
            tensors[f"{item_id}.enc"] = self.encoder(mel[None])[0].half()
        if keep_audio:
            tensors[f"{item_id}.wav"] = torch.from_numpy((np.clip(audio, -1, 1) * INT16_MAX).astype(np.int16))
        return tensors


@dataclass
class Utterance:
    """One utterance read back from a shard."""

    item: Item
    mel: torch.Tensor  # (T, mels) float16
    encoded: torch.Tensor | None  # (N, dim) float16, when the shard cached the frozen encoder's output
    audio: torch.Tensor | None  # (S,) int16 at 16 kHz, evaluation shards only
    seconds: float


def read_split(folder: str | Path, split: str) -> Iterator[Utterance]:
    """Every utterance of `split` in the complete shards of `folder`, in order."""
    for path in sorted(Path(folder).glob(f"{split}-[0-9]*.safetensors")):
        tensors = load_file(str(path))
        for row in _read_jsonl(path.with_suffix(".jsonl")):
            seconds = row.pop("seconds")
            item = Item(**(row | {"gold": tuple(row["gold"])}))
            yield Utterance(
                item, tensors[f"{item.id}.mel"], tensors.get(f"{item.id}.enc"), tensors.get(f"{item.id}.wav"), seconds
            )


def _load_or_plan(path: Path, make) -> list[Item]:
    if path.is_file():
        return [Item(**(row | {"gold": tuple(row["gold"])})) for row in _read_jsonl(path)]
    items = make()
    path.write_text("".join(json.dumps(asdict(item)) + "\n" for item in items))
    return items


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def voice_of(voice_id: str) -> Voice:
    """The Voice with this id (training or held out)."""
    return {v.id: v for v in (*TRAIN_VOICES, *HELD_OUT_VOICES)}[voice_id]
