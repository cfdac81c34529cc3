"""HiFT vocoder (CosyVoice 2): 80-bin mel at 50 Hz -> 24 kHz PCM, causal and streamable.

An F0 predictor drives an NSF harmonic source (sine harmonics where voiced, noise elsewhere); a
HiFi-GAN generator upsamples the mel by `upsample_rates` (8·5·3 = 120 STFT frames per mel frame),
fusing the source's STFT in at every stage, and predicts log-magnitude and phase for an iSTFT with
hop `istft_hop` (4): 480 samples per mel frame.

Streaming is exact, with no output delay: every conv is causal with its context in the state
(nearest upsampling + causal conv instead of a transposed conv, whose outputs would overlap); the
sine phase is carried across chunks in float64; the source noise is a counter-based hash of the
absolute sample index, so it does not depend on the chunking; the iSTFT places STFT frame j on
samples [hop·j, hop·j + n_fft) and overlap-adds, so after frame j the samples before hop·(j + 1) are
final and the last n_fft - hop samples wait in the state for the next chunk. `step` returns exactly
480 samples per mel frame; at the end of the stream that partial tail (the fade-out after the last
frame, 12 samples with the paper's sizes) is dropped, so `flush` returns nothing and a stream of T
frames gives T·480 samples, like the offline `forward`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.model.config import HiFTConfig
from minmo.model.layers import CacheCursor, CausalConv1d
from minmo.model.state import StreamState

F0_LAYERS = 5
F0_KERNEL = 3
CONV_PRE_KERNEL = 7
CONV_POST_KERNEL = 7
LRELU_SLOPE = 0.1
SINE_AMP = 0.1  # amplitude of each source harmonic
NOISE_STD = 0.003  # source noise where voiced; unvoiced frames get SINE_AMP / 3
VOICED_THRESHOLD_HZ = 10.0
MAX_MAGNITUDE = 100.0  # clip of exp(log-magnitude), as in CosyVoice 2
AUDIO_LIMIT = 0.99
NOISE_SEED = 0x5EED
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # < 2**31, so 32-bit products fit in int64


@dataclass
class HiFTState(StreamState):
    """Per-stream state of `HiFT`.

    convs: causal conv contexts in call order (empty at stream start). phase: (B,) float64, sine phase
    of the fundamental in cycles, in [0, 1). samples: samples produced so far (the noise counter).
    stft_tail: (B, n_fft - hop) last source samples for the analysis STFT. istft_tail: (B, n_fft - hop)
    overlap-add not yet final.
    """

    convs: list[torch.Tensor]
    phase: torch.Tensor
    samples: int
    stft_tail: torch.Tensor
    istft_tail: torch.Tensor


class StridedCausalConv1d(CausalConv1d):
    """Causal conv with stride s: output frame m sees inputs up to (m + 1)·s - 1. Chunks must be multiples
    of s (HiFT's always are: 120 STFT frames per mel frame)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        assert kernel_size >= stride, f"kernel {kernel_size} shorter than stride {stride}"
        super().__init__(in_channels, out_channels, kernel_size)
        self.context = kernel_size - stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)


class Snake(nn.Module):
    """x + sin²(αx)/α with a learned α per channel: a periodic inductive bias for waveforms (BigVGAN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(self.alpha * x).square() / (self.alpha + 1e-9)


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1 with causal convs: per dilation, x + conv(snake(conv_dilated(snake(x))))."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(CausalConv1d(channels, channels, kernel, dilation=d) for d in dilations)
        self.plain = nn.ModuleList(CausalConv1d(channels, channels, kernel) for _ in dilations)
        self.act1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.act2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, cursor: CacheCursor) -> torch.Tensor:
        for dilated, plain, act1, act2 in zip(self.dilated, self.plain, self.act1, self.act2, strict=True):
            x = x + cursor.conv(plain, act2(cursor.conv(dilated, act1(x))))
        return x


class F0Predictor(nn.Module):
    """Causal conv stack -> F0 in Hz (>= 0) per mel frame."""

    def __init__(self, mel_bins: int, channels: int) -> None:
        super().__init__()
        widths = [mel_bins] + [channels] * F0_LAYERS
        self.convs = nn.ModuleList(CausalConv1d(a, b, F0_KERNEL) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor, cursor: CacheCursor) -> torch.Tensor:
        """mel: (B, M, T) -> f0 (B, T)."""
        x = mel
        for conv in self.convs:
            x = F.elu(cursor.conv(conv, x))
        return self.head(x.transpose(1, 2)).squeeze(2).abs()


def position_noise(first_sample: int, length: int, channels: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise (length, channels) that depends only on the absolute sample index: a 32-bit
    integer hash of (sample, channel) gives two uniforms, Box-Muller gives the normal."""
    samples = torch.arange(first_sample, first_sample + length, device=device, dtype=torch.int64)
    counter = 2 * (samples[:, None] * channels + torch.arange(channels, device=device))  # (S, H)
    radius = torch.sqrt(-2 * torch.log(_hash_uniform(counter)))
    return (radius * torch.cos(2 * math.pi * _hash_uniform(counter + 1))).float()


def _hash_uniform(counter: torch.Tensor) -> torch.Tensor:
    """int64 counters -> float64 uniforms in (0, 1)."""
    x = (counter ^ NOISE_SEED) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    x = (x >> 16) ^ x
    return (x.double() + 0.5) / 2**32


class SourceModule(nn.Module):
    """NSF harmonic source: sines at F0·(1..H+1), voiced/unvoiced noise, merged to one channel by tanh(linear)."""

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.sample_rate = cfg.sample_rate
        self.samples_per_frame = cfg.samples_per_frame
        self.register_buffer("harmonics", torch.arange(1, cfg.nb_harmonics + 2, dtype=torch.float64), persistent=False)
        self.merge = nn.Linear(cfg.nb_harmonics + 1, 1)

    def forward(self, f0: torch.Tensor, phase: torch.Tensor, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """f0: (B, T) Hz per frame; phase: (B,) cycles. Returns source (B, 1, T·480) and the new phase."""
        f0 = f0.repeat_interleave(self.samples_per_frame, dim=1)  # (B, S)
        cycles = phase[:, None] + torch.cumsum(f0.double() / self.sample_rate, dim=1)  # (B, S)
        angles = 2 * math.pi * torch.frac(cycles[:, :, None] * self.harmonics)  # (B, S, H)
        sines = SINE_AMP * torch.sin(angles).to(f0.dtype)
        voiced = (f0 > VOICED_THRESHOLD_HZ).to(f0.dtype)[:, :, None]
        noise = position_noise(first_sample, f0.shape[1], sines.shape[2], f0.device).to(f0.dtype)
        noise_amp = voiced * NOISE_STD + (1 - voiced) * (SINE_AMP / 3)
        waves = sines * voiced + noise_amp * noise
        source = torch.tanh(self.merge(waves)).transpose(1, 2)  # (B, 1, S)
        return source, torch.frac(cycles[:, -1])


class HiFT(nn.Module):
    """Mel -> PCM, offline (`forward`) or streaming (`init_state` / `step` / `flush`)."""

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        assert cfg.istft_n_fft % cfg.istft_hop == 0, "n_fft must be a multiple of the iSTFT hop"
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / cfg.samples_per_frame
        self.f0_predictor = F0Predictor(cfg.mel_bins, cfg.base_channels)
        self.source = SourceModule(cfg)
        self.conv_pre = CausalConv1d(cfg.mel_bins, cfg.base_channels, CONV_PRE_KERNEL)
        widths = [cfg.base_channels // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.ups = nn.ModuleList(
            CausalConv1d(widths[i], widths[i + 1], kernel) for i, kernel in enumerate(cfg.upsample_kernels)
        )
        stft_channels = cfg.istft_n_fft + 2
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i in range(len(cfg.upsample_rates)):
            down = math.prod(cfg.upsample_rates[i + 1 :])  # STFT frames per frame of stage i
            self.source_downs.append(
                StridedCausalConv1d(stft_channels, widths[i + 1], 2 * down if down > 1 else 1, down)
            )
            self.source_resblocks.append(ResBlock(widths[i + 1], cfg.resblock_kernels[0], cfg.resblock_dilations[0]))
            self.resblocks.append(
                nn.ModuleList(
                    ResBlock(widths[i + 1], kernel, dilations)
                    for kernel, dilations in zip(cfg.resblock_kernels, cfg.resblock_dilations, strict=True)
                )
            )
        self.conv_post = CausalConv1d(widths[-1], stft_channels, CONV_POST_KERNEL)
        window = torch.hann_window(cfg.istft_n_fft, periodic=True, device="cpu")
        self.register_buffer("window", window, persistent=False)  # (n_fft,)
        envelope = window.square().view(-1, cfg.istft_hop).sum(0)  # overlap-added window², per sample phase
        self.register_buffer("envelope", envelope, persistent=False)  # (hop,)

    def init_state(self, batch: int = 1) -> HiFTState:
        device, dtype = self.window.device, self.conv_pre.conv.weight.dtype
        tail = torch.zeros(batch, self.cfg.istft_n_fft - self.cfg.istft_hop, device=device, dtype=dtype)
        phase = torch.zeros(batch, device=device, dtype=torch.float64)
        return HiFTState([], phase, 0, tail, tail.clone())

    def step(self, mel: torch.Tensor, state: HiFTState) -> tuple[torch.Tensor, HiFTState]:
        """mel: (B, M, T), any T >= 0 -> pcm (B, T·480) float32 in [-0.99, 0.99], and the new state."""
        batch, _, frames = mel.shape
        if frames == 0:
            return mel.new_zeros(batch, 0), state
        cursor = CacheCursor(state.convs)
        f0 = self.f0_predictor(mel, cursor)  # (B, T)
        source, phase = self.source(f0, state.phase, state.samples)  # (B, 1, S)
        stft, stft_tail = self._analyse(source, state.stft_tail)  # (B, n_fft + 2, S / hop)
        x = self._generate(mel, stft, cursor)  # (B, n_fft + 2, S / hop)
        pcm, istft_tail = self._synthesise(x, state.istft_tail)
        new_state = HiFTState(cursor.new, phase, state.samples + pcm.shape[1], stft_tail, istft_tail)
        return pcm.clamp(-AUDIO_LIMIT, AUDIO_LIMIT), new_state

    def flush(self, state: HiFTState) -> tuple[torch.Tensor, HiFTState]:
        """End of stream: nothing is held back (the overlap-add tail after the last frame is dropped)."""
        return state.istft_tail.new_zeros(state.istft_tail.shape[0], 0), state

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline: mel (B, M, T) -> pcm (B, T·480)."""
        pcm, _ = self.step(mel, self.init_state(mel.shape[0]))
        return pcm

    def _generate(self, mel: torch.Tensor, stft: torch.Tensor, cursor: CacheCursor) -> torch.Tensor:
        """HiFi-GAN upsampling with the source fused in at every stage -> log-magnitude and phase logits."""
        x = cursor.conv(self.conv_pre, mel)
        stages = zip(
            self.cfg.upsample_rates, self.ups, self.source_downs, self.source_resblocks, self.resblocks, strict=True
        )
        for rate, up, source_down, source_resblock, resblocks in stages:
            x = cursor.conv(up, F.leaky_relu(x, LRELU_SLOPE).repeat_interleave(rate, dim=2))
            x = x + source_resblock(cursor.conv(source_down, stft), cursor)
            x = torch.stack([resblock(x, cursor) for resblock in resblocks]).mean(0)
        return cursor.conv(self.conv_post, F.leaky_relu(x))

    def _analyse(self, source: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal STFT of the source (B, 1, S): frame j ends at sample hop·(j + 1). -> (B, n_fft + 2, S / hop)."""
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        padded = torch.cat([tail, source[:, 0]], dim=1)  # (B, n_fft - hop + S)
        spectrum = torch.fft.rfft(padded.unfold(1, n_fft, hop) * self.window, dim=2)  # (B, F, n_fft/2 + 1)
        stft = torch.cat([spectrum.real, spectrum.imag], dim=2).transpose(1, 2)
        return stft, padded[:, padded.shape[1] - tail.shape[1] :]

    def _synthesise(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """iSTFT with overlap-add onto the carried tail. x: (B, n_fft + 2, F) -> final samples (B, F·hop)."""
        n_fft, hop = self.cfg.istft_n_fft, self.cfg.istft_hop
        bins = n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=MAX_MAGNITUDE)
        spectrum = torch.polar(magnitude, torch.sin(x[:, bins:]))  # (B, bins, F)
        frames = torch.fft.irfft(spectrum, n=n_fft, dim=1) * self.window[:, None]  # (B, n_fft, F)
        count = frames.shape[2]
        length = (count - 1) * hop + n_fft
        summed = F.fold(frames, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop)).flatten(1)
        summed = torch.cat([summed[:, : tail.shape[1]] + tail, summed[:, tail.shape[1] :]], dim=1)
        pcm = summed[:, : count * hop] / self.envelope.repeat(count)
        return pcm, summed[:, count * hop :]
