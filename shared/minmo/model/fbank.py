"""Kaldi-compatible log-mel filter bank with optional SenseVoice-style LFR stacking, offline and streaming.

Features come from `kaldi_native_fbank` with kaldi's defaults (povey window, pre-emphasis 0.97, DC
removal, snip_edges, low_freq 20 Hz) and dither 0, so the same audio always gives the same features.
Samples are scaled by 32768 before the filter bank: funasr and SenseVoice compute fbank on int16-scale
audio, and matching that scale (a constant offset of 2*ln(32768) in every log-mel bin) keeps weights
trained there usable here.

With snip_edges every frame depends only on the samples inside its own window, so streaming keeps the
samples not yet covered by a complete frame and recomputes nothing else: chunked output equals the
offline output exactly, whatever the chunk sizes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np
import torch

from minmo.model.config import FbankConfig
from minmo.model.state import StreamState

INT16_SCALE = 32768.0  # funasr / SenseVoice feed int16-scale samples to kaldi fbank


@dataclass
class FbankState(StreamState):
    """Where one audio stream stands between `Fbank.step` calls."""

    samples: torch.Tensor  # (S,) waveform from the start of the next frame on, not yet in a complete frame
    lfr_frames: torch.Tensor  # (F, num_mel_bins) fbank frames (after LFR left padding) still needed by LFR
    frames_seen: int  # fbank frames computed so far (before LFR)
    lfr_emitted: int  # LFR frames emitted so far


def apply_lfr(feats: torch.Tensor, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """SenseVoice / funasr low frame rate: stack `lfr_m` frames every `lfr_n` frames, (T, D) -> (ceil(T/n), m*D).

    The sequence is padded on the left with (lfr_m - 1) // 2 copies of the first frame, and on the right
    with copies of the last frame so that every one of the ceil(T / lfr_n) windows is full.
    """
    num_out = math.ceil(feats.shape[0] / lfr_n)
    if num_out == 0:
        return feats.new_zeros(0, lfr_m * feats.shape[1])
    left = feats[:1].expand((lfr_m - 1) // 2, -1)
    padded = torch.cat([left, feats], dim=0)
    return _lfr_windows(_pad_right(padded, (num_out - 1) * lfr_n + lfr_m), lfr_m, lfr_n)[:num_out]


def _pad_right(frames: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat the last row of frames (F, D) until there are `length` rows."""
    missing = length - frames.shape[0]
    return torch.cat([frames, frames[-1:].expand(missing, -1)], dim=0) if missing > 0 else frames


def _lfr_windows(frames: torch.Tensor, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """Every complete window of `lfr_m` rows, hop `lfr_n`, flattened: (F, D) -> (W, m*D)."""
    if frames.shape[0] < lfr_m:
        return frames.new_zeros(0, lfr_m * frames.shape[1])
    windows = frames.unfold(0, lfr_m, lfr_n)  # (W, D, m)
    return windows.transpose(1, 2).reshape(windows.shape[0], -1)


class Fbank:
    """Waveform (T,) float32 in [-1, 1] at `cfg.sample_rate` -> features (frames, cfg.output_dim).

    One stream per state: sessions deliver audio at different times and lengths, so batching belongs to
    the encoder, after features exist. Has no weights, so it is a plain class, not an nn.Module.
    """

    def __init__(self, cfg: FbankConfig) -> None:
        self.cfg = cfg
        # Kaldi's own truncating formula for the window and hop sizes in samples.
        self.frame_length = int(cfg.sample_rate * 0.001 * cfg.frame_length_ms)
        self.frame_shift = int(cfg.sample_rate * 0.001 * cfg.frame_shift_ms)
        assert self.frame_shift <= self.frame_length, "frame shift longer than the frame would skip samples"
        assert cfg.lfr_n <= cfg.lfr_m, f"LFR hop {cfg.lfr_n} longer than its window {cfg.lfr_m} would skip frames"
        self.sample_rate = cfg.sample_rate
        self.frame_rate = 1000.0 / cfg.frame_shift_ms / cfg.lfr_n
        self.options = self._options(cfg)

    @staticmethod
    def _options(cfg: FbankConfig) -> knf.FbankOptions:
        options = knf.FbankOptions()
        options.frame_opts.samp_freq = cfg.sample_rate
        options.frame_opts.frame_length_ms = cfg.frame_length_ms
        options.frame_opts.frame_shift_ms = cfg.frame_shift_ms
        options.frame_opts.dither = 0.0
        options.frame_opts.snip_edges = True
        options.frame_opts.window_type = cfg.window_type
        options.mel_opts.num_bins = cfg.num_mel_bins
        return options

    def num_frames(self, num_samples: int) -> int:
        """Kaldi's frame count with snip_edges: only windows that lie completely inside the audio."""
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def _fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (frames, num_mel_bins) of every complete window in waveform (T,)."""
        count = self.num_frames(waveform.shape[0])
        if count == 0:
            return torch.zeros(0, self.cfg.num_mel_bins)
        computer = knf.OnlineFbank(self.options)
        computer.accept_waveform(self.cfg.sample_rate, waveform.numpy() * INT16_SCALE)
        computer.input_finished()
        return torch.from_numpy(np.stack([computer.get_frame(i) for i in range(count)]))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Offline: waveform (T,) -> (frames, output_dim)."""
        assert waveform.dim() == 1, f"expected a mono waveform (T,), got shape {tuple(waveform.shape)}"
        feats = self._fbank(waveform.detach().float().cpu())
        return apply_lfr(feats, self.cfg.lfr_m, self.cfg.lfr_n)

    def init_state(self, batch: int = 1) -> FbankState:
        assert batch == 1, "Fbank state holds one stream; batch after feature extraction"
        return FbankState(
            samples=torch.zeros(0),
            lfr_frames=torch.zeros(0, self.cfg.num_mel_bins),
            frames_seen=0,
            lfr_emitted=0,
        )

    def step(self, waveform: torch.Tensor, state: FbankState) -> tuple[torch.Tensor, FbankState]:
        """Feed any number of samples (T,); returns the LFR frames now complete, (frames, output_dim)."""
        assert waveform.dim() == 1, f"expected a mono waveform (T,), got shape {tuple(waveform.shape)}"
        samples = torch.cat([state.samples, waveform.detach().float().cpu()])
        feats = self._fbank(samples)
        consumed = feats.shape[0] * self.frame_shift
        state = dataclasses.replace(state, samples=samples[consumed:])
        return self._lfr_step(feats, state)

    def _lfr_step(self, feats: torch.Tensor, state: FbankState) -> tuple[torch.Tensor, FbankState]:
        """Append new fbank frames (K, D) and emit every LFR window they complete."""
        if feats.shape[0] == 0:
            return torch.zeros(0, self.cfg.output_dim), state
        frames = torch.cat([state.lfr_frames, feats], dim=0)
        if state.frames_seen == 0:
            frames = torch.cat([feats[:1].expand((self.cfg.lfr_m - 1) // 2, -1), frames], dim=0)
        out = _lfr_windows(frames, self.cfg.lfr_m, self.cfg.lfr_n)  # (W, output_dim)
        return out, dataclasses.replace(
            state,
            lfr_frames=frames[out.shape[0] * self.cfg.lfr_n :],
            frames_seen=state.frames_seen + feats.shape[0],
            lfr_emitted=state.lfr_emitted + out.shape[0],
        )

    def flush(self, state: FbankState) -> tuple[torch.Tensor, FbankState]:
        """End of stream: the last LFR frames, right-padded with the last fbank frame as `apply_lfr` does.

        Samples left over are shorter than one window; kaldi's snip_edges drops them too. The returned
        state is a fresh one, ready for the next stream.
        """
        remaining = math.ceil(state.frames_seen / self.cfg.lfr_n) - state.lfr_emitted
        if remaining <= 0:
            return torch.zeros(0, self.cfg.output_dim), self.init_state()
        frames = _pad_right(state.lfr_frames, (remaining - 1) * self.cfg.lfr_n + self.cfg.lfr_m)
        return _lfr_windows(frames, self.cfg.lfr_m, self.cfg.lfr_n)[:remaining], self.init_state()
