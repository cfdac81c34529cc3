"""Voice mimicking: what a short prompt recording gives CosyVoice 2's token2wav, and the checks it must pass.

CosyVoice 2 conditions on three things derived from a prompt recording:
- the prompt mel (here: `prompt_mel`, CosyVoice 2's feature extractor: 24 kHz, n_fft 1920, hop 480, 80
  Slaney mel bins up to 8 kHz, log magnitude; one frame per 20 ms, two per speech token), which the flow
  matching reproduces in its first frames (`FlowMatching.init_state(prompt_mel=...)`);
- the prompt speech tokens, from CosyVoice 2's speech tokenizer (`speech_tokenizer_v2.onnx`), for the
  voice-token LM and the flow;
- a 192-d x-vector from CAM++ (`campplus.onnx`, 3D-Speaker) for the flow's speaker affine.
The two ONNX models ship with the CosyVoice2-0.5B download but are not on any package registry, so they
cannot be run here; a deployment with the download runs them next to `minmo convert`'s output. The mel is
computed here and tested against CosyVoice 2's own extractor (tests/compat).

`check_prompt` refuses recordings the server must not condition on: the wrong rate, shorter than 3 s or
longer than 30 s, or silence (RMS below -60 dBFS).
"""

from __future__ import annotations

import math

import torch

from minmo.model.config import VOCODER_SAMPLE_RATE_HZ

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


class InvalidPrompt(ValueError):
    """A voice prompt the server refuses; the message says why, for the client."""


def check_prompt(pcm: torch.Tensor, sample_rate: int) -> None:
    """Raise `InvalidPrompt` unless pcm (S,) float in [-1, 1] is a usable prompt at SAMPLE_RATE."""
    if sample_rate != SAMPLE_RATE:
        raise InvalidPrompt(f"voice prompt must be {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
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
