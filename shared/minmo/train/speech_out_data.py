"""`minmo data speech-out`: the assistant's replies, spoken, as stage 2 learns them.

For every (user prompt, assistant reply) pair of a stage-1 data folder (the text LLM's answers, the QA targets,
and the ASR sentences as replies to "Repeat after me"), and of `generated` more replies that the text LLM writes
to open requests over many topics (`texts.reply_prompts`: a few hundred stage-1 replies alone are memorised by the
voice-token LM, not generalised from), one shard row holds:
- `tokens`: the reply spoken by the assistant's voice (piper joe), through the frozen voice encoder and the
  trained speech tokenizer: 25 Hz FSQ codes, what the voice-token LM learns to write;
- `mel`: the same audio's log-mel in the vocoder's format at 50 Hz (two frames per token), what the flow learns
  to draw (HiFi-GAN: 22,050 Hz audio, hop 441; the vocoder resamples it to its 86 Hz);
- `hidden`, `embed`: the LLM's last hidden state at each reply token's position (teacher forced after the
  chat prompt, as `Dialogue.generate_step` sees it) and that token's embedding: the output projector's input.
Sharded, each shard written whole and renamed, so an interrupted build resumes at the next missing shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from minmo.model.config import MinMoConfig, load_config
from minmo.train import texts
from minmo.train.voices import ASSISTANT_VOICE, SAMPLE_RATE

REPEAT_PROMPT = "Repeat after me: "


@dataclass(frozen=True)
class SpeechOutDataConfig:
    model: str = "nano"
    data: str = "data/nano"  # stage-1 data folder: where the texts come from
    tokenizer: str = "runs/nano-tokenizer/export"  # `minmo train tokenizer`'s export folder
    checkpoint: str = ""  # the LLM as stage 1 left it (its LoRA, if it trained one); "" = the preset's own
    out: str = "data/nano-speech"
    limit: int = -1  # first N pairs only (-1: all)
    shard_size: int = 100
    max_reply_tokens: int = 64
    threads: int = 1
    generated: int = 0  # replies the text LLM writes to the first N open requests of `split` (-1: all)
    split: str = "train"  # "heldout": only generated replies, about topics that training never speaks
    max_generated_tokens: int = 48


@dataclass
class SpokenReply:
    """One stage-2 example read back from a shard."""

    prompt: str
    reply: str
    tokens: torch.Tensor  # (N,) long, 25 Hz speech tokens
    mel: torch.Tensor  # (mels, 2N) float16, 50 Hz
    hidden: torch.Tensor  # (L, D) float16
    embed: torch.Tensor  # (L, D) float16


def reply_pairs(data: str | Path) -> list[tuple[str, str]]:
    """(prompt, reply) pairs from a stage-1 data folder, unique, in a stable order: the ASR sentences first (as
    replies to "Repeat after me"), then the text LLM's answers and the QA targets, then every question and
    instruction of the templates (repeated too: more words in the one voice)."""
    folder = Path(data)
    items = [row for path in sorted(folder.glob("items-*.jsonl")) for row in _read_jsonl(path)]
    pairs = [(REPEAT_PROMPT + row["text"], row["text"]) for row in items if row["task"] == "asr"]
    pairs += [(row["prompt"], row["answer"]) for row in _read_jsonl(folder / "answers.jsonl")]
    pairs += [(row["text"], row["target"]) for row in items if row["task"] == "qa"]
    spoken = [q.text for q in texts.all_questions()] + texts.instructions("train") + texts.instructions("heldout")
    pairs += [(REPEAT_PROMPT + text, text) for text in spoken]
    return [pair for pair in dict.fromkeys(pairs) if pair[1].strip()]


def generated_pairs(cfg: SpeechOutDataConfig, path: Path) -> list[tuple[str, str]]:
    """(request, the text LLM's greedy reply) for the first `cfg.generated` open requests of `cfg.split`, appended to
    `path` as they are written, so an interrupted build resumes where it stopped. Replies without a letter (nothing
for the voice to say) are left out."""
    from minmo.train.data import ANSWER_BATCH, typed_answers

    done = {row["prompt"]: row["answer"] for row in _read_jsonl(path)}
    prompts = texts.reply_prompts(cfg.split)[: None if cfg.generated < 0 else cfg.generated]
    todo = [p for p in prompts if p not in done]
    if todo:
        from minmo.model.build import build_component
        from minmo.model.tokenizer import load_tokenizer

        model_cfg = load_config(cfg.model)
        llm, tokenizer = build_component(model_cfg, "llm", cfg.checkpoint or None), load_tokenizer(model_cfg.llm)
        with path.open("a") as sink, tqdm(total=len(prompts), initial=len(prompts) - len(todo),
                                          desc="replies (text LLM)", unit="reply") as bar:
            for start in range(0, len(todo), ANSWER_BATCH):
                batch = todo[start : start + ANSWER_BATCH]
                for prompt, answer in zip(batch, typed_answers(llm, tokenizer, batch, cfg.max_generated_tokens),
                                          strict=True):
                    done[prompt] = answer
                    sink.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
                sink.flush()
                bar.update(len(batch))
    return [(prompt, done[prompt]) for prompt in prompts if any(c.isalpha() for c in done[prompt])]


def build(cfg: SpeechOutDataConfig) -> Path:
    """Write every missing shard of `cfg.out`; returns it."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    pairs = reply_pairs(cfg.data) if cfg.split == "train" else []
    if cfg.generated:
        pairs += generated_pairs(cfg, out / f"generated-{cfg.split}.jsonl")
    pairs = list(dict.fromkeys(pairs))[: None if cfg.limit < 0 else cfg.limit]
    shards = [pairs[i : i + cfg.shard_size] for i in range(0, len(pairs), cfg.shard_size)]
    missing = [(number, shards[number]) for number in missing_shards(out, len(shards))]
    if not missing:
        return out
    speaker = ReplySpeaker(load_config(cfg.model), cfg.tokenizer, cfg.checkpoint)
    done = len(pairs) - sum(len(shard) for _, shard in missing)
    with tqdm(total=len(pairs), initial=done, desc="spoken replies", unit="reply") as bar:
        for number, shard in missing:
            tensors, rows = {}, []
            for index, (prompt, reply) in enumerate(shard):
                key = f"{number:05d}-{index:04d}"
                example = speaker(prompt, reply, cfg.max_reply_tokens)
                bar.update(1)
                if example is None:
                    continue
                tensors |= {f"{key}.{name}": value for name, value in example.items()}
                rows.append({"id": key, "prompt": prompt, "reply": reply})
            write_shard(out, number, rows, tensors)
    return out


def write_shard(out: Path, number: int, rows: list[dict], tensors: dict[str, torch.Tensor]) -> None:
    """Shard `number` of `out`: its rows (id, prompt, reply) and tensors (`{id}.{name}`), the safetensors file
    written whole and renamed last, so a shard that exists is complete."""
    path = _shard_path(out, number)
    path.with_suffix(".jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    save_file(tensors, str(path.with_suffix(".partial")))
    path.with_suffix(".partial").rename(path)


def missing_shards(out: Path, count: int) -> list[int]:
    """Numbers of the shards of `out` not yet written, of `count`."""
    return [number for number in range(count) if not _shard_path(out, number).is_file()]


class ReplySpeaker:
    """Speaks a reply in the assistant's voice and computes every tensor of its shard row."""

    def __init__(self, model_cfg: MinMoConfig, tokenizer_folder: str, checkpoint: str = "") -> None:
        from minmo.model.build import build_component
        from minmo.model.speech_encoder import build_front_end, build_voice_encoder
        from minmo.model.tokenizer import load_tokenizer
        from minmo.train.tokenizer import load_tokenizer_from

        self.cfg = model_cfg
        self.front_end = build_front_end(model_cfg)
        self.encoder = build_voice_encoder(model_cfg).eval()
        self.speech_tokenizer = load_tokenizer_from(tokenizer_folder)
        self.llm = build_component(model_cfg, "llm", checkpoint or None)
        self.text_tokenizer = load_tokenizer(model_cfg.llm)

    @torch.no_grad()
    def __call__(self, prompt: str, reply: str, max_reply_tokens: int) -> dict[str, torch.Tensor] | None:
        reply_ids = self.text_tokenizer.encode(reply)
        if not reply_ids or len(reply_ids) > max_reply_tokens:
            return None
        tokens, mel = self.speak(reply)
        prompt_ids = self.text_tokenizer.chat_prompt([{"role": "user", "content": prompt}])
        ids = torch.tensor([prompt_ids + reply_ids])
        hidden = self.llm.model.get_decoder()(input_ids=ids).last_hidden_state[0]
        hidden = hidden[len(prompt_ids) - 1 : ids.shape[1] - 1]  # the positions that emit the reply's tokens
        embed = self.llm.embed(torch.tensor([reply_ids]))[0]
        return {"tokens": tokens.to(torch.int32), "mel": mel.half(), "hidden": hidden.half(), "embed": embed.half()}

    def speak(self, reply: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`reply` in the assistant's voice: its 25 Hz speech tokens (N,) and the flow's target mel (mels, 2N)."""
        audio, rate = speak(reply)
        tokens = self.tokens_of(soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32))
        return tokens, target_mel(self.cfg, audio, rate, tokens.shape[0])

    def tokens_of(self, audio16k: np.ndarray) -> torch.Tensor:
        mel = self.front_end.forward(torch.from_numpy(audio16k))
        frames = self.encoder(mel[None])
        return self.speech_tokenizer.encode(frames)[0]


def speak(text: str) -> tuple[np.ndarray, int]:
    """`text` in the assistant's voice at the voice's own rate (piper joe: 22,050 Hz)."""
    from minmo.train.voices import _piper

    return _piper(ASSISTANT_VOICE, text)


def target_mel(model_cfg: MinMoConfig, audio: np.ndarray, rate: int, tokens: int) -> torch.Tensor:
    """The flow's target for `tokens` speech tokens: (mels, tokens · token_mel_ratio) log-mel in the vocoder's
    format at the flow's 50 Hz (HiFi-GAN: 22,050 Hz, n_fft 1024, hop 441; HiFT: CosyVoice 2's 24 kHz, n_fft
    1920, hop 480; both 80 bins up to 8 kHz)."""
    from minmo.model.config import HiFiGANConfig
    from minmo.model.hifigan import FLOW_FRAME_RATE_HZ, log_mel

    if model_cfg.vocoder == "hifigan":
        mel_format, hop = model_cfg.hifigan, model_cfg.hifigan.sample_rate // FLOW_FRAME_RATE_HZ
    else:
        hift = model_cfg.hift
        mel_format = HiFiGANConfig(
            mel_bins=hift.mel_bins, sample_rate=hift.sample_rate, n_fft=4 * hift.samples_per_frame
        )
        hop = hift.samples_per_frame
    if rate != mel_format.sample_rate:
        audio = soxr.resample(audio, rate, mel_format.sample_rate)
    mel = log_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), mel_format, hop=hop)
    frames = tokens * model_cfg.flow.token_mel_ratio
    if mel.shape[1] < frames:
        mel = torch.cat([mel, mel[:, -1:].expand(-1, frames - mel.shape[1])], dim=1)
    return mel[:, :frames]


def read_replies(folder: str | Path) -> list[SpokenReply]:
    """Every example in the complete shards of `folder`."""
    replies = []
    for path in sorted(Path(folder).glob("replies-[0-9]*.safetensors")):
        tensors = load_file(str(path))
        for row in _read_jsonl(path.with_suffix(".jsonl")):
            key = row["id"]
            replies.append(SpokenReply(
                row["prompt"], row["reply"], tensors[f"{key}.tokens"].long(), tensors[f"{key}.mel"],
                tensors[f"{key}.hidden"], tensors[f"{key}.embed"],
            ))
    return replies


def _shard_path(out: Path, number: int) -> Path:
    return out / f"replies-{number:05d}.safetensors"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
