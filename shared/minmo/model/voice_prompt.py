"""Voice mimicking: what a short prompt recording gives CosyVoice 2's token2wav, and the checks it must pass.

CosyVoice 2 conditions on three things derived from a prompt recording:
- the prompt mel (here: `prompt_mel`, CosyVoice 2's feature extractor: 24 kHz, n_fft 1920, hop 480, 80
  Slaney mel bins up to 8 kHz, log magnitude; one frame per 20 ms, two per speech token), which the flow
  matching reproduces in its first frames (`FlowMatching.init_state(prompt_mel=...)`);
- the prompt speech tokens, from CosyVoice 2's speech tokenizer (`speech_tokenizer_v2.onnx`), for the
  voice-token LM and the flow;
- a 192-d x-vector from CAM++ (`campplus.onnx`, 3D-Speaker) for the flow's speaker affine.
The two ONNX models ship with the CosyVoice2-0.5B download (beside `flow.pt`) but are not on any package
registry, so no test here runs the real files. `VoicePromptModels` runs them with onnxruntime on CPU with
CosyVoice 2's front-end recipe (`frontend.py`: `_extract_speech_token`, `_extract_spk_embedding`), which the
tests exercise with small ONNX models of the same inputs and outputs. The mel is computed here and tested
against CosyVoice 2's own extractor (tests/compat).

`check_prompt` refuses recordings the server must not condition on: the wrong rate, shorter than 3 s or
longer than 30 s, or silence (RMS below -60 dBFS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import soxr
import torch

from minmo.model.config import VOCODER_SAMPLE_RATE_HZ, FbankConfig
from minmo.model.fbank import Fbank
from minmo.model.whisper_log_mel import WhisperLogMel

SAMPLE_RATE = VOCODER_SAMPLE_RATE_HZ  # prompts are recorded at the rate the vocoder speaks
N_FFT = 1920
HOP = 480  # 20 ms: 50 mel frames per second, two per 25 Hz speech token
MEL_BINS = 80
FMAX_HZ = 8000.0
LOG_FLOOR = 1e-5  # magnitudes are clamped here before the log
MAGNITUDE_EPS = 1e-9  # added to |X|² before the square root, as CosyVoice 2 does
PROMPT_MIN_S = 3.0
PROMPT_MAX_S = 30.0
SILENCE_RMS = 1e-3  # -60 dBFS
FRONT_END_RATE = 16000  # CosyVoice 2's tokenizer and CAM++ take 16 kHz audio
TOKENIZER_MELS = 128  # speech_tokenizer_v2 reads Whisper's 128-bin log-mel (100 Hz) and writes 25 Hz tokens
SPEAKER_MELS = 80  # CAM++ reads 80-bin kaldi fbank, mean-normalised over the utterance
TOKEN_MEL_RATIO = 2  # prompt mel frames (50 Hz) per speech token (25 Hz)


class InvalidPrompt(ValueError):
    """A voice prompt the server refuses; the message says why, for the client."""


def check_prompt(pcm: torch.Tensor, sample_rate: int, expected_rate: int = SAMPLE_RATE) -> None:
    """Raise `InvalidPrompt` unless pcm (S,) float in [-1, 1] is a usable prompt at `expected_rate`."""
    if sample_rate != expected_rate:
        raise InvalidPrompt(f"voice prompt must be {expected_rate} Hz audio, got {sample_rate} Hz")
    seconds = pcm.shape[-1] / sample_rate
    if not PROMPT_MIN_S <= seconds <= PROMPT_MAX_S:
        raise InvalidPrompt(f"voice prompt must last {PROMPT_MIN_S:g}-{PROMPT_MAX_S:g} s, got {seconds:.2f} s")
    rms = pcm.double().square().mean().sqrt().item()
    if rms < SILENCE_RMS:
        raise InvalidPrompt(f"voice prompt is silent (RMS {20 * math.log10(max(rms, 1e-12)):.0f} dBFS, below -60)")


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    linear = hz / (200.0 / 3)
    log_part = 15.0 + torch.log(torch.clamp(hz, min=1000.0) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(mel >= 15.0, log_part, linear)


def mel_filterbank(sample_rate: int, n_fft: int, bins: int, fmin: float, fmax: float) -> torch.Tensor:
    """Triangular filters (bins, n_fft/2 + 1) on the Slaney mel scale, each normalised to unit area."""
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(torch.linspace(_hz_to_mel(torch.tensor(fmin, dtype=torch.float64)).item(),
                                      _hz_to_mel(torch.tensor(fmax, dtype=torch.float64)).item(), bins + 2,
                                      dtype=torch.float64))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None] - low) / (centre - low)
    falling = (high - fft_hz[None]) / (high - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0)
    return (weights * (2.0 / (high - low))).float()


def prompt_mel(pcm: torch.Tensor) -> torch.Tensor:
    """pcm (S,) at 24 kHz -> log-mel (80, S // 480), CosyVoice 2's flow features."""
    pad = (N_FFT - HOP) // 2
    padded = torch.nn.functional.pad(pcm.float()[None, None], (pad, pad), mode="reflect")[0, 0]
    window = torch.hann_window(N_FFT, device=pcm.device)
    spectrum = torch.stft(padded, N_FFT, HOP, window=window, center=False, return_complex=True)
    magnitude = torch.sqrt(spectrum.real.square() + spectrum.imag.square() + MAGNITUDE_EPS)
    mel = mel_filterbank(SAMPLE_RATE, N_FFT, MEL_BINS, 0.0, FMAX_HZ).to(pcm.device) @ magnitude
    return torch.log(torch.clamp(mel, min=LOG_FLOOR))


@dataclass(frozen=True)
class VoicePromptFeatures:
    """What CosyVoice 2's flow conditions on, from one prompt recording."""

    speaker: torch.Tensor  # (192,) float32 CAM++ x-vector
    tokens: torch.Tensor  # (P,) int64 speech tokens, 25 Hz
    mel: torch.Tensor  # (80, 2P) float32 log-mel, 50 Hz


class VoicePromptModels:
    """CosyVoice 2's front end for voice prompts: `speech_tokenizer_v2.onnx` and `campplus.onnx` from a
    CosyVoice2-0.5B download, run with onnxruntime on CPU (one thread each: it runs once per session)."""

    TOKENIZER_FILE = "speech_tokenizer_v2.onnx"
    SPEAKER_FILE = "campplus.onnx"

    def __init__(self, directory: str | Path) -> None:
        folder = Path(directory)
        missing = [name for name in (self.TOKENIZER_FILE, self.SPEAKER_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} (from the CosyVoice2-0.5B download)")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.tokenizer = onnxruntime.InferenceSession(str(folder / self.TOKENIZER_FILE), options, providers=providers)
        self.speaker_model = onnxruntime.InferenceSession(str(folder / self.SPEAKER_FILE), options, providers=providers)
        self.tokenizer_mel = WhisperLogMel(FbankConfig(kind="whisper", num_mel_bins=TOKENIZER_MELS))
        self.speaker_fbank = Fbank(FbankConfig(num_mel_bins=SPEAKER_MELS))

    def derive(self, pcm: torch.Tensor) -> VoicePromptFeatures:
        """pcm (S,) float in [-1, 1] at 24 kHz, already checked -> speaker, tokens and the tokens' mel, cut to the
        same length as CosyVoice 2 cuts them (two mel frames per token)."""
        pcm16k = torch.from_numpy(np.asarray(soxr.resample(pcm.numpy(), SAMPLE_RATE, FRONT_END_RATE), np.float32))
        tokens = self.speech_tokens(pcm16k)
        mel = prompt_mel(pcm)
        count = min(mel.shape[1] // TOKEN_MEL_RATIO, tokens.numel())
        return VoicePromptFeatures(self.speaker(pcm16k), tokens[:count], mel[:, : TOKEN_MEL_RATIO * count])

    def speech_tokens(self, pcm16k: torch.Tensor) -> torch.Tensor:
        """16 kHz audio -> speech tokens (P,) int64: Whisper log-mel (1, 128, T) and its length in."""
        mel = self.tokenizer_mel.forward(pcm16k).T[None].numpy()  # (1, 128, T)
        names = [tensor.name for tensor in self.tokenizer.get_inputs()]  # (feats, feats_length)
        feeds = dict(zip(names, (mel, np.array([mel.shape[2]], np.int32)), strict=True))
        return torch.from_numpy(self.tokenizer.run(None, feeds)[0].reshape(-1).astype(np.int64))

    def speaker(self, pcm16k: torch.Tensor) -> torch.Tensor:
        """16 kHz audio -> x-vector (D,) float32: mean-normalised 80-bin fbank (1, T, 80) in."""
        feats = self.speaker_fbank.forward(pcm16k)
        feats = (feats - feats.mean(dim=0, keepdim=True))[None].numpy()  # (1, T, 80)
        name = self.speaker_model.get_inputs()[0].name
        return torch.from_numpy(self.speaker_model.run(None, {name: feats})[0].reshape(-1).astype(np.float32))
