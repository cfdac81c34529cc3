"""Whisper's log-mel front end (n_fft 400, hop 160, 80 or 128 Slaney mels, 16 kHz), behind the Fbank contract.

Whisper normalises each utterance by its own loudest bin (log10 power clamped at max - 8, then (x + 4) / 4)
and centres its STFT windows with reflection padding at both ends, so no frame is final before the end of
the utterance. Like the Whisper encoder it feeds (whisper_encoder.py), `step` keeps the samples and
`flush` computes the utterance's features: chunked == offline exactly, and the features equal the ones
Whisper (and the faster-whisper judge) computes for the same audio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers.audio_utils import mel_filter_bank

from minmo.model.config import ENCODER_SAMPLE_RATE_HZ, FbankConfig
from minmo.model.state import StreamState

N_FFT = 400  # 25 ms windows at 16 kHz
HOP = 160  # 10 ms hop: 100 frames per second
DYNAMIC_RANGE = 8.0  # log10 units kept below the utterance's loudest bin (80 dB)
MEL_MAX_HZ = 8000.0


@dataclass
class WhisperLogMelState(StreamState):
    """The utterance's samples so far (S,); its features are computed at `flush`."""

    samples: torch.Tensor


class WhisperLogMel:
    """Waveform (T,) float32 in [-1, 1] at 16 kHz -> features (T // 160, num_mel_bins), Whisper's normalisation."""

    def __init__(self, cfg: FbankConfig) -> None:
        assert cfg.sample_rate == ENCODER_SAMPLE_RATE_HZ, (
            f"Whisper's front end is defined at 16 kHz, config says {cfg.sample_rate}"
        )
        assert cfg.lfr_m == cfg.lfr_n == 1, "Whisper features have no LFR stacking"
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / HOP
        filters = mel_filter_bank(
            num_frequency_bins=N_FFT // 2 + 1,
            num_mel_filters=cfg.num_mel_bins,
            min_frequency=0.0,
            max_frequency=MEL_MAX_HZ,
            sampling_rate=cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.filters = torch.from_numpy(filters).float().T  # (mels, freqs)
        self.window = torch.hann_window(N_FFT)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // HOP

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Offline: waveform (T,) -> (T // 160, num_mel_bins)."""
        assert waveform.dim() == 1, f"expected a mono waveform (T,), got shape {tuple(waveform.shape)}"
        waveform = waveform.detach().float().cpu()
        if self.num_frames(waveform.shape[0]) == 0:
            return torch.zeros(0, self.cfg.num_mel_bins)
        # reflection padding needs more samples than half a window; shorter audio is zero-padded first
        waveform = torch.nn.functional.pad(waveform, (0, max(0, N_FFT // 2 + 1 - waveform.shape[0])))
        spectrum = torch.stft(waveform, N_FFT, HOP, window=self.window, return_complex=True)
        power = spectrum[:, : self.num_frames(waveform.shape[0])].abs() ** 2  # (freqs, frames)
        log_mel = torch.clamp(self.filters @ power, min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
        return ((log_mel + 4.0) / 4.0).T.contiguous()

    def init_state(self, batch: int = 1) -> WhisperLogMelState:
        assert batch == 1, "the front end's state holds one stream; batch after feature extraction"
        return WhisperLogMelState(samples=torch.zeros(0))

    def step(self, waveform: torch.Tensor, state: WhisperLogMelState) -> tuple[torch.Tensor, WhisperLogMelState]:
        """Keep the samples (T,) for `flush`; returns no frames (the normalisation needs the whole utterance)."""
        samples = torch.cat([state.samples, waveform.detach().float().cpu()])
        return torch.zeros(0, self.cfg.num_mel_bins), dataclasses.replace(state, samples=samples)

    def flush(self, state: WhisperLogMelState) -> tuple[torch.Tensor, WhisperLogMelState]:
        """End of the utterance: its features (= `forward` on all samples); returns a fresh state."""
        return self.forward(state.samples), self.init_state()
