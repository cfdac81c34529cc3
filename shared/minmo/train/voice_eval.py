"""`minmo eval voice`: does a voice instruction change how the reply sounds? Speaking rate and pitch, measured.

For a fixed set of typed questions the model speaks its reply with no instruction and with each of "speak very
fast / slowly / in a high / low voice", on the in-process serving path (`MinMoPipeline`'s components: the LLM's
greedy text, its hidden states through the output projector into the voice-token LM, token2wav to 24 kHz). The
instruction goes where the served turn puts it:
- into the user turn the LLM reads: the typed turn is the question followed by the instruction, the order
  `Dialogue.begin_response` gives a spoken turn (audio, instruction, end of turn), so the LLM's hidden states, the
  voice LM's semantic input, carry it;
- into the voice-token LM in CosyVoice 2's instruct form (SOS, the instruction's embeddings, END_OF_PROMPT) when
  the voice LM has an instruction table (`instruction_vocab` > 0; `tiny` has one, `nano` has none).
Speech tokens are drawn with CosyVoice 2's repetition-aware sampling from a fixed seed per question, the same seed
for every instruction, so two rows differ only by the instruction.

What is measured, per reply and pooled per instruction:
- speaking rate: characters (letters and digits) of the reply text per second of voiced audio. Voiced = 20 ms
  frames whose RMS is within `VOICED_RANGE_DB` of the reply's loudest frame and above `SILENCE_DBFS` (an energy
  VAD: it removes leading, trailing and inter-word silence, so a slower voice is not a longer pause);
- with the judge (faster-whisper base, as `minmo eval asr`): words per second from its word timestamps, first
  word's start to last word's end;
- pitch: the median F0 in Hz over the frames Praat's autocorrelation pitch tracker (praat-parselmouth,
  `Sound.to_pitch`, 60-600 Hz) finds voiced.
Ratios are against the no-instruction row of the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soxr
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from minmo.model.config import load_config
from minmo.model.interleave import RasSampler, init_schedule_state, synthesize_step
from minmo.model.pipeline import MinMoPipeline
from minmo.train.evaluate import NO_CHECKPOINT, SAMPLE_RATE, Judge

PROMPTS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "Tell me one thing you like about music.",
    "What do cows drink?",
    "Name a planet in our solar system.",
)
NONE = ""  # the baseline row: no instruction
INSTRUCTIONS = {  # instruction -> its short name in the table
    NONE: "none",
    "Please speak very fast.": "fast",
    "Please speak very slowly.": "slow",
    "Please speak in a high voice.": "high",
    "Please speak in a low voice.": "low",
}
FRAME_S = 0.02  # energy VAD frame
VOICED_RANGE_DB = 35.0  # a frame is voiced within this many dB of the reply's loudest frame ...
SILENCE_DBFS = -50.0  # ... and above this absolute level
PITCH_FLOOR_HZ = 60.0
PITCH_CEILING_HZ = 600.0
PITCH_STEP_S = 0.01


@dataclass
class Reply:
    """One spoken reply and what was measured on it."""

    prompt: str
    instruction: str
    text: str
    audio_s: float
    voiced_s: float
    characters: int
    f0_hz: list[float] = field(repr=False)  # Praat's F0 of every voiced pitch frame (pooled per instruction)
    judge_text: str = ""
    judge_words: int = 0
    judge_span_s: float = 0.0  # first word's start -> last word's end
    seconds: float = 0.0

    @property
    def chars_per_s(self) -> float:
        return self.characters / self.voiced_s if self.voiced_s else float("nan")


@dataclass
class InstructionRow:
    instruction: str
    replies: int
    chars_per_s: float  # pooled: all characters / all voiced seconds
    rate_ratio: float  # against the no-instruction row
    median_f0_hz: float  # over the voiced pitch frames of all replies
    f0_ratio: float
    words_per_s: float | None = None  # the judge's words / its spoken span, pooled
    words_ratio: float | None = None
    voiced_s: float = 0.0
    audio_s: float = 0.0


@dataclass
class VoiceReport:
    config: str
    checkpoint: str
    instruction_table: bool  # the voice LM reads the instruction itself (else only through the LLM)
    seed: int
    rows: list[InstructionRow] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)


def characters(text: str) -> int:
    """Letters and digits: what is spoken (spaces and punctuation take no time of their own)."""
    return sum(ch.isalnum() for ch in text)


def voiced_mask(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Per `FRAME_S` frame: is it speech rather than silence (energy within `VOICED_RANGE_DB` of the peak)."""
    size = max(1, round(FRAME_S * rate))
    frames = pcm[: len(pcm) // size * size].astype(np.float64).reshape(-1, size)
    if not len(frames):
        return np.zeros(0, dtype=bool)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return (level > level.max() - VOICED_RANGE_DB) & (level > SILENCE_DBFS)


def voiced_seconds(pcm: np.ndarray, rate: int) -> float:
    return float(voiced_mask(pcm, rate).sum() * max(1, round(FRAME_S * rate)) / rate)


def f0_frames(pcm: np.ndarray, rate: int) -> np.ndarray:
    """F0 in Hz of each voiced frame, by Praat's autocorrelation pitch tracker (unvoiced frames left out)."""
    import parselmouth

    if len(pcm) < rate * 3 / PITCH_FLOOR_HZ:  # Praat needs three periods of the floor pitch
        return np.zeros(0)
    sound = parselmouth.Sound(pcm.astype(np.float64), sampling_frequency=rate)
    pitch = sound.to_pitch(time_step=PITCH_STEP_S, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=PITCH_CEILING_HZ)
    f0 = pitch.selected_array["frequency"]
    return f0[f0 > 0]


def median_f0(pcm: np.ndarray, rate: int) -> float:
    f0 = f0_frames(pcm, rate)
    return float(np.median(f0)) if len(f0) else float("nan")


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not base or math.isnan(base) or math.isnan(value):
        return None if value is None or base is None else float("nan")
    return value / base


class VoiceModel:
    """MinMo's components in this process, speaking typed questions with a voice instruction."""

    def __init__(self, config: str, checkpoint: str | None) -> None:
        cfg = load_config(config)
        if checkpoint == NO_CHECKPOINT:
            cfg, checkpoint = dataclasses.replace(cfg, checkpoint=""), None
        self.pipeline = MinMoPipeline(cfg, checkpoint)
        self.tokenizer = self.pipeline.dialogue.tokenizer

    @property
    def instruction_table(self) -> bool:
        return self.pipeline.voice_lm.instruction_embedding is not None

    @torch.no_grad()
    def speak(self, prompt: str, instruction: str, seed: int) -> tuple[str, np.ndarray, int]:
        """The reply's text and its 24 kHz audio (float32) to a typed `prompt`, spoken as `instruction` asks."""
        pipe = self.pipeline
        dialogue, voice_lm = pipe.dialogue, pipe.voice_lm
        state = dialogue.start("")
        state = dialogue.append_text_turn(state, "user", f"{prompt} {instruction}".strip())
        state = dialogue.begin_response(state)
        table = instruction and self.instruction_table
        prefix = voice_lm.embed_instruction(self.tokenizer.encode(instruction)) if table else None
        schedule = init_schedule_state(voice_lm, prefix)
        sampler = RasSampler(generator=torch.Generator().manual_seed(seed))
        vocoder = pipe.token2wav.init_state()
        pieces, ids = [], []

        def vocode(tokens: list[int], last: bool) -> None:
            nonlocal vocoder
            pcm, vocoder = pipe.token2wav.step(torch.tensor([tokens], dtype=torch.long), vocoder)
            if last:
                tail, vocoder = pipe.token2wav.flush(vocoder)
                pcm = torch.cat([pcm, tail], dim=1)
            pieces.append(pcm[0].float())

        for _ in range(pipe.cfg.max_response_tokens):
            step, state = dialogue.generate_step(state)
            if step.is_end:
                break
            ids.append(step.token_id)
            semantic = pipe.output_projector(step.hidden[:, None], step.token_embedding[:, None])
            tokens, schedule = synthesize_step(voice_lm, semantic, False, schedule, sampler)
            vocode(tokens, last=False)
        tokens, schedule = synthesize_step(voice_lm, torch.zeros(1, 0, voice_lm.cfg.dim), True, schedule, sampler)
        vocode(tokens, last=True)
        pcm = torch.cat(pieces).numpy() if pieces else np.zeros(0, dtype=np.float32)
        return self.tokenizer.decode(ids).strip(), pcm, pipe.token2wav.sample_rate


def _judge(judge: Judge, pcm: np.ndarray, rate: int) -> tuple[str, int, float]:
    """The judge's transcript, its word count and spoken span (first word start -> last word end, seconds)."""
    audio = soxr.resample(pcm, rate, SAMPLE_RATE).astype(np.float32)
    segments, _ = judge.model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
    words = [word for segment in segments for word in segment.words or []]
    text = "".join(word.word for word in words).strip()
    span = words[-1].end - words[0].start if words else 0.0
    return text, len(words), float(span)


def evaluate_voice(config: str, checkpoint: str | None, limit: int, judge: bool = True, seed: int = 0,
                   threads: int = 1) -> VoiceReport:
    """Speak the first `limit` prompts under every instruction and measure rate and pitch."""
    if threads:
        torch.set_num_threads(threads)
    model = VoiceModel(config, checkpoint)
    referee = Judge() if judge else None
    report = VoiceReport(config, checkpoint or "", model.instruction_table, seed)
    cases = [(p, i, seed + n) for n, p in enumerate(PROMPTS[:limit]) for i in INSTRUCTIONS]
    for prompt, instruction, case_seed in tqdm(cases, desc="eval voice", unit="reply"):
        started = time.perf_counter()
        text, pcm, rate = model.speak(prompt, instruction, case_seed)
        reply = Reply(prompt, instruction, text, round(len(pcm) / rate, 3), voiced_seconds(pcm, rate),
                      characters(text), [round(float(f), 2) for f in f0_frames(pcm, rate)])
        if referee is not None and len(pcm):
            reply.judge_text, reply.judge_words, reply.judge_span_s = _judge(referee, pcm, rate)
        reply.seconds = round(time.perf_counter() - started, 2)
        report.replies.append(reply)
    report.rows = summarise(report.replies, judged=judge)
    return report


def summarise(replies: list[Reply], judged: bool) -> list[InstructionRow]:
    """One row per instruction, pooled over its replies, with ratios against the no-instruction row."""
    rows = []
    for instruction in dict.fromkeys(r.instruction for r in replies):
        mine = [r for r in replies if r.instruction == instruction]
        voiced = sum(r.voiced_s for r in mine)
        f0 = [f for r in mine for f in r.f0_hz]
        span = sum(r.judge_span_s for r in mine)
        rows.append(InstructionRow(
            instruction=instruction,
            replies=len(mine),
            chars_per_s=sum(r.characters for r in mine) / voiced if voiced else float("nan"),
            rate_ratio=float("nan"),
            median_f0_hz=float(np.median(f0)) if f0 else float("nan"),
            f0_ratio=float("nan"),
            words_per_s=(sum(r.judge_words for r in mine) / span if span else float("nan")) if judged else None,
            voiced_s=round(voiced, 3),
            audio_s=round(sum(r.audio_s for r in mine), 3),
        ))
    base = next((row for row in rows if row.instruction == NONE), None)
    for row in rows:
        if base is not None:
            row.rate_ratio = _ratio(row.chars_per_s, base.chars_per_s)
            row.f0_ratio = _ratio(row.median_f0_hz, base.median_f0_hz)
            row.words_ratio = _ratio(row.words_per_s, base.words_per_s)
    return rows


def _number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else ("n/a" if math.isnan(value) else f"{value:.{digits}f}")


def print_voice_report(report: VoiceReport, path: Path | None) -> None:
    route = "LLM + voice LM instruction table" if report.instruction_table else "LLM hidden states only"
    table = Table(title=f"minmo eval voice --config {report.config} ({report.checkpoint or 'preset weights'}); "
                        f"instruction reaches the voice via: {route}")
    for name in ("instruction", "replies", "voiced s", "chars/s", "rate ×none", "words/s (judge)", "words ×none",
                 "median F0 Hz", "F0 ×none"):
        table.add_column(name, justify="left" if name == "instruction" else "right")
    for row in report.rows:
        table.add_row(INSTRUCTIONS.get(row.instruction, row.instruction), str(row.replies), _number(row.voiced_s),
                      _number(row.chars_per_s),
                      _number(row.rate_ratio, 3), _number(row.words_per_s), _number(row.words_ratio, 3),
                      _number(row.median_f0_hz, 1), _number(row.f0_ratio, 3))
    Console(width=max(Console().width, 120)).print(table)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2))
