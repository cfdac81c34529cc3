"""HiFT vocoder, weight-compatible with CosyVoice 2's `HiFTGenerator`: 80-bin mel at 50 Hz -> 24 kHz PCM.

Layout (CosyVoice2-0.5B's `hift.pt`; `minmo convert --from cosyvoice2` folds its weight norm into plain
weights): an F0 predictor (5 convs + ELU, then a linear, `f0_channels` [512] wide) drives an NSF source
(sines at F0·1..9 where voiced, noise elsewhere, merged by tanh(linear)); the generator runs `conv_pre`
(80 -> 512), then per stage a transposed conv upsampling by 8, 5, 3 (kernels 16, 11, 7), the source's
STFT brought to that rate by `source_downs` and a source ResBlock and added, and the mean of three
ResBlocks (kernels 3, 7, 11, dilations 1, 3, 5, Snake activations); `conv_post` predicts log-magnitude
and phase of an iSTFT with n_fft 16 and hop 4: 480 samples per mel frame.

The sine phase follows CosyVoice 2 at 24 kHz: per-frame phase increments, summed to the phase at each
frame's centre and linearly interpolated between centres (clamped before the first and after the last).
We sum in float64, so long streams keep their precision (CosyVoice 2 sums in float32).

Streaming (`init_state` / `step` / `flush`): the generator is not causal (centred convs, transposed convs,
a centred STFT), but its reach is finite: `receptive_frames(cfg)` mel frames each way (21 with the
published sizes). So `step` emits a frame once that many frames after it have arrived, computing a window
that starts that many frames before it; the source of frames already emitted is kept, the phase at the
last emitted frame's centre is carried, and the source noise is a counter-based hash of the absolute
sample index. Chunked output equals offline up to float rounding; `flush` emits the held-back frames.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minmo.model.config import HiFTConfig
from minmo.model.state import StreamState

F0_LAYERS = 5
F0_KERNEL = 3
CONV_PRE_KERNEL = 7
CONV_POST_KERNEL = 7
LRELU_SLOPE = 0.1
POST_LRELU_SLOPE = 0.01  # the activation before conv_post keeps PyTorch's default slope, as CosyVoice 2
SINE_AMP = 0.1  # amplitude of each source harmonic
NOISE_STD = 0.003  # source noise where voiced; unvoiced frames get SINE_AMP / 3
VOICED_THRESHOLD_HZ = 10.0
MAX_MAGNITUDE = 100.0  # clip of exp(log-magnitude), as in CosyVoice 2
AUDIO_LIMIT = 0.99
SNAKE_EPS = 1e-9
NOISE_SEED = 0x5EED
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # < 2**31, so 32-bit products fit in int64


@dataclass
class HiFTState(StreamState):
    """Per-stream state of `HiFT`.

    mel: (B, M, n) frames from `first_frame` on: left context (emitted) and frames not yet emitted.
    source: (B, (emitted - first_frame)·480) the source signal of the context frames. centre_phase:
    (B, H+1) float64, phase in cycles [0, 1) of each harmonic at the centre of the last emitted frame.
    """

    mel: torch.Tensor
    source: torch.Tensor
    centre_phase: torch.Tensor
    first_frame: int
    emitted: int


def receptive_frames(cfg: HiFTConfig) -> int:
    """Mel frames on either side that one output sample depends on (a bound, rounded up): the direct path
    mel -> conv_pre -> stages -> conv_post, or mel -> F0 -> source -> STFT -> source_downs -> a stage."""

    def resblock(kernel: int, dilations: tuple[int, ...]) -> int:
        return sum((kernel - 1) // 2 * (d + 1) for d in dilations)  # samples at that stage's rate

    rates = [math.prod(cfg.upsample_rates[: i + 1]) for i in range(len(cfg.upsample_rates))]
    stft_per_frame = cfg.samples_per_frame // cfg.istft_hop
    stage = [
        math.ceil(kernel / rate) / (rates[i] // rate)
        + max(resblock(k, d) for k, d in zip(cfg.resblock_kernels, cfg.resblock_dilations, strict=True)) / rates[i]
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernels, strict=True))
    ]
    tail = (CONV_POST_KERNEL // 2 + cfg.istft_n_fft // cfg.istft_hop) / stft_per_frame
    direct = CONV_PRE_KERNEL // 2 + sum(stage) + tail
    source_reach = F0_LAYERS * (F0_KERNEL // 2) + 1 + cfg.istft_n_fft / cfg.samples_per_frame
    via_source = max(
        source_reach
        + 2 / rates[i]  # source_downs: kernel 2·(STFT frames per sample of stage i)
        + resblock(k, d) / rates[i]
        + sum(stage[i:])
        + tail
        for i, (k, d) in enumerate(zip(cfg.source_resblock_kernels, cfg.source_resblock_dilations, strict=True))
    )
    return math.ceil(max(direct, via_source)) + 1


class Snake(nn.Module):
    """x + sin²(αx)/α with a learned α per channel, on (B, C, T)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + torch.sin(alpha * x).square() / (alpha + SNAKE_EPS)


class ResBlock(nn.Module):
    """HiFi-GAN residual block: per dilation, Snake -> dilated conv -> Snake -> conv, added back."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.snakes1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.snakes2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, snake1, snake2 in zip(self.convs1, self.convs2, self.snakes1, self.snakes2, strict=True):
            x = x + conv2(snake2(conv1(snake1(x))))
        return x


class F0Predictor(nn.Module):
    """Mel -> F0 in Hz per frame: centred convs with ELU, then a linear; |.| keeps it non-negative."""

    def __init__(self, mel_bins: int, channels: int) -> None:
        super().__init__()
        widths = [mel_bins] + [channels] * F0_LAYERS
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, F0_KERNEL, padding=F0_KERNEL // 2) for a, b in itertools.pairwise(widths)
        )
        self.head = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, M, T) -> f0 (B, T)."""
        x = mel
        for conv in self.convs:
            x = F.elu(conv(x))
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

    def forward(
        self,
        f0: torch.Tensor,
        previous_centre: torch.Tensor | None,
        at_end: bool,
        noise: torch.Tensor,
        made: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0: (B, T) Hz per frame; previous_centre: (B, H+1) phase in cycles at the centre of the frame before
        (None at the start of the stream); at_end: the last frame is the stream's last; noise: (B, F·480, H+1)
        standard normal for the F frames `made`. Returns the source (B, F·480) of the frames `made` (all by default)
        and the phase (B, T, H+1) at every frame's centre. A frame's source needs only the phase at its own centre
        and its neighbours', so passing over frames (`HiFT.skip`) runs the phase on through them, per frame, without
        making their samples."""
        spf = self.samples_per_frame
        steps = torch.frac(f0.double()[:, :, None] * self.harmonics / self.sample_rate) * spf  # cycles per frame
        start = steps[:, :1] * 0 if previous_centre is None else previous_centre[:, None]
        every_centre = start + torch.cumsum(steps, dim=1)  # (B, T, H+1)
        before = torch.cat([every_centre[:, :1] if previous_centre is None else start, every_centre[:, :-1]], dim=1)
        last_step = every_centre[:, -1:] if at_end else every_centre[:, -1:] + steps[:, -1:]
        after = torch.cat([every_centre[:, 1:], last_step], dim=1)
        centres, before, after = (phase[:, made] for phase in (every_centre, before, after))
        offset = (torch.arange(spf, device=f0.device, dtype=torch.float64) + 0.5) / spf  # (spf,) in (0, 1)
        first_half = (offset < 0.5)[None, None, :, None]
        low = before[:, :, None] + (offset + 0.5)[None, None, :, None] * (centres - before)[:, :, None]
        high = centres[:, :, None] + (offset - 0.5)[None, None, :, None] * (after - centres)[:, :, None]
        phase = torch.where(first_half, low, high).flatten(1, 2)  # (B, S, H+1) cycles
        sines = SINE_AMP * torch.sin(2 * math.pi * torch.frac(phase)).to(f0.dtype)
        voiced = (f0[:, made] > VOICED_THRESHOLD_HZ).to(f0.dtype).repeat_interleave(spf, dim=1)[:, :, None]
        noise_amp = voiced * NOISE_STD + (1 - voiced) * (SINE_AMP / 3)
        waves = sines * voiced + noise_amp * noise.to(f0.dtype)
        return torch.tanh(self.merge(waves))[:, :, 0], torch.frac(every_centre)


class HiFT(nn.Module):
    """Mel -> PCM, offline (`forward`) or streaming (`init_state` / `step` / `flush`).

    Stays float32 whatever MINMO_DTYPE says (`keeps_float32`): the STFT pair and the float64 harmonic phases
    need it, and the vocoder is a small share of the compute."""

    keeps_float32 = True

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        assert cfg.istft_n_fft % cfg.istft_hop == 0, "n_fft must be a multiple of the iSTFT hop"
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / cfg.samples_per_frame
        self.context_frames = receptive_frames(cfg)
        self.f0_predictor = F0Predictor(cfg.mel_bins, cfg.f0_channels)
        self.source = SourceModule(cfg)
        self.conv_pre = nn.Conv1d(cfg.mel_bins, cfg.base_channels, CONV_PRE_KERNEL, padding=CONV_PRE_KERNEL // 2)
        widths = [cfg.base_channels // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(widths[i], widths[i + 1], kernel, rate, padding=(kernel - rate) // 2)
            for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernels, strict=True))
        )
        stft_channels = cfg.istft_n_fft + 2
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i in range(len(cfg.upsample_rates)):
            down = math.prod(cfg.upsample_rates[i + 1 :])  # STFT frames per sample of stage i
            conv = nn.Conv1d(stft_channels, widths[i + 1], 2 * down, down, padding=down // 2) if down > 1 else (
                nn.Conv1d(stft_channels, widths[i + 1], 1)
            )
            self.source_downs.append(conv)
            self.source_resblocks.append(
                ResBlock(widths[i + 1], cfg.source_resblock_kernels[i], cfg.source_resblock_dilations[i])
            )
            self.resblocks.append(
                nn.ModuleList(
                    ResBlock(widths[i + 1], kernel, dilations)
                    for kernel, dilations in zip(cfg.resblock_kernels, cfg.resblock_dilations, strict=True)
                )
            )
        self.conv_post = nn.Conv1d(widths[-1], stft_channels, CONV_POST_KERNEL, padding=CONV_POST_KERNEL // 2)
        window = torch.hann_window(cfg.istft_n_fft, periodic=True, device="cpu")
        self.register_buffer("window", window, persistent=False)  # (n_fft,)

    def init_state(self, batch: int = 1) -> HiFTState:
        device, dtype = self.conv_pre.weight.device, self.conv_pre.weight.dtype
        return HiFTState(
            mel=torch.zeros(batch, self.cfg.mel_bins, 0, device=device, dtype=dtype),
            source=torch.zeros(batch, 0, device=device, dtype=dtype),
            centre_phase=torch.zeros(batch, self.cfg.nb_harmonics + 1, device=device, dtype=torch.float64),
            first_frame=0,
            emitted=0,
        )

    def step(self, mel: torch.Tensor, state: HiFTState) -> tuple[torch.Tensor, HiFTState]:
        """mel: (B, M, T), any T >= 0 -> the pcm (B, S) float32 in [-0.99, 0.99] that became final (S a multiple
        of 480; frames are held back until `receptive_frames` frames after them arrived), and the new state."""
        return self._advance(mel, state, final=False)

    def flush(self, state: HiFTState) -> tuple[torch.Tensor, HiFTState]:
        """End of stream: the frames held back."""
        return self._advance(state.mel[:, :, :0], state, final=True)

    def forward(self, mel: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Offline: mel (B, M, T) -> pcm (B, T·480). noise: (B, T·480, H+1) standard normal source noise,
        default the position-keyed noise streaming uses."""
        f0 = self.f0_predictor(mel)
        if noise is None:
            noise = self._noise(mel.shape[0], 0, mel.shape[2], mel.device)
        source, _ = self.source(f0, None, True, noise)
        return self.decode(mel, source)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mel (B, M, T) and source (B, T·480) -> pcm (B, T·480): the HiFi-GAN generator and the iSTFT."""
        cfg = self.cfg
        spectrum = torch.stft(source, cfg.istft_n_fft, cfg.istft_hop, window=self.window, return_complex=True)
        stft = torch.cat([spectrum.real, spectrum.imag], dim=1)  # (B, n_fft + 2, T·120 + 1)
        x = self.conv_pre(mel)
        stages = zip(self.ups, self.source_downs, self.source_resblocks, self.resblocks, strict=True)
        for i, (up, source_down, source_resblock, resblocks) in enumerate(stages):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more column: the centred STFT has T·120 + 1 frames
            x = x + source_resblock(source_down(stft))
            x = torch.stack([resblock(x) for resblock in resblocks]).mean(0)
        x = self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE))
        bins = cfg.istft_n_fft // 2 + 1
        magnitude = torch.exp(x[:, :bins]).clamp(max=MAX_MAGNITUDE)
        phase = torch.sin(x[:, bins:])
        pcm = torch.istft(torch.polar(magnitude, phase), cfg.istft_n_fft, cfg.istft_hop, window=self.window)
        return pcm.clamp(-AUDIO_LIMIT, AUDIO_LIMIT)

    def _noise(self, batch: int, first_frame: int, frames: int, device: torch.device) -> torch.Tensor:
        spf = self.cfg.samples_per_frame
        noise = position_noise(first_frame * spf, frames * spf, self.cfg.nb_harmonics + 1, device)
        return noise[None].expand(batch, -1, -1)

    def step_rows(self, mels: list[torch.Tensor], states: list[HiFTState]) -> list[tuple[torch.Tensor, HiFTState]]:
        """`step` for independent streams (mels[b] (1, M, T_b), each state a batch of one): the streams whose windows
        have the same shape (mid-turn, every stream that got a chunk of the same size) vocode as one batch. Grouped by
        shape, not padded: the generator's convolutions are centred, so padding would reach into the real frames."""
        results: list[tuple[torch.Tensor, HiFTState] | None] = [None] * len(states)
        groups: dict[tuple[int, int, int, bool], list[tuple[int, torch.Tensor, HiFTState, int]]] = {}
        for row, (new_mel, state) in enumerate(zip(mels, states, strict=True)):
            mel, ready = self._plan(new_mel, state, final=False)
            if ready <= state.emitted:
                results[row] = self._kept(mel, state)
                continue
            shape = (mel.shape[2], state.emitted - state.first_frame, ready - state.first_frame, state.emitted == 0)
            groups.setdefault(shape, []).append((row, mel, state, ready))
        for group in groups.values():
            rows, group_mels, group_states, ready = zip(*group, strict=True)
            outputs = self._vocode(list(group_mels), list(group_states), list(ready), False)
            for row, output in zip(rows, outputs, strict=True):
                results[row] = output
        return results

    def _advance(self, new_mel: torch.Tensor, state: HiFTState, final: bool) -> tuple[torch.Tensor, HiFTState]:
        """Vocode the window [first_frame, received) and emit the frames whose right context is complete."""
        mel, ready = self._plan(new_mel, state, final)
        if ready <= state.emitted:
            return self._kept(mel, state)
        return self._vocode([mel], [state], [ready], final)[0]

    def skip(self, mel: torch.Tensor, state: HiFTState, samples: int) -> tuple[torch.Tensor, HiFTState, int]:
        """Take in `mel` (B, M, T) and pass over up to `samples` samples without vocoding them (a resumed stream: the
        listener has that audio). Only the F0 and source of the passed frames are computed (the harmonics' phase runs
        on through them); the generator, most of the cost, never sees them, and the frames after come out as in an
        unbroken stream (within float tolerance). Whole frames whose right context has arrived are passed over.
        Returns the mel not taken in (none), the state, and the samples passed over."""
        window, ready = self._plan(mel, state, final=False)
        target = min(state.emitted + samples // self.cfg.samples_per_frame, ready)
        if target <= state.emitted:
            return mel[:, :, :0], self._kept(window, state)[1], 0
        _, passed = self._vocode([window], [state], [target], final=False, decode=False)[0]
        return mel[:, :, :0], passed, (target - state.emitted) * self.cfg.samples_per_frame

    def _plan(self, new_mel: torch.Tensor, state: HiFTState, final: bool) -> tuple[torch.Tensor, int]:
        """The window's mel with the new frames, and the frames ready to emit (all if final)."""
        mel = torch.cat([state.mel, new_mel.to(state.mel.dtype)], dim=2)
        received = state.first_frame + mel.shape[2]
        return mel, received if final else received - self.context_frames

    @staticmethod
    def _kept(mel: torch.Tensor, state: HiFTState) -> tuple[torch.Tensor, HiFTState]:
        """Nothing to emit yet: no samples, and the state holding the new frames."""
        kept = HiFTState(mel, state.source, state.centre_phase, state.first_frame, state.emitted)
        return mel.new_zeros(mel.shape[0], 0), kept

    def _vocode(
        self, mels: list[torch.Tensor], states: list[HiFTState], ready: list[int], final: bool, decode: bool = True
    ) -> list[tuple[torch.Tensor, HiFTState]]:
        """Vocode the windows of streams whose windows have the same shape (`step_rows`' groups) as one batch:
        each stream's own source noise (keyed by its absolute samples) and phase; the pcm and state of each.
        decode=False (`skip`) computes the state only: no pcm (B, 0)."""
        spf = self.cfg.samples_per_frame
        first = states[0]
        offset = first.emitted - first.first_frame  # context frames in every window
        end = ready[0] - first.first_frame  # the window's frames ready to emit
        sizes = [mel.shape[0] for mel in mels]
        mel = torch.cat(mels)
        f0 = self.f0_predictor(mel)[:, offset:]
        kept = max(end - self.context_frames, 0)  # the window's first frame the next window still needs
        # decoding needs every new frame's source; passing over (`skip`), only the source the state keeps
        made = slice(0, f0.shape[1]) if decode else slice(max(kept - offset, 0), end - offset)
        noise = torch.cat([
            self._noise(size, state.emitted + made.start, made.stop - made.start, mel.device)
            for size, state in zip(sizes, states, strict=True)
        ])  # fmt: skip
        previous = torch.cat([state.centre_phase for state in states]) if first.emitted else None
        source, centres = self.source(f0, previous, final, noise, made)
        earlier = torch.cat([state.source for state in states])
        if made.start:  # the frames between the state's context and the kept ones are passed over: never made
            earlier = earlier.new_zeros(earlier.shape[0], (offset + made.start) * spf)
        source = torch.cat([earlier, source], dim=1)
        pcm = self.decode(mel, source)[:, offset * spf : end * spf] if decode else source[:, :0]
        splits = (tensor.split(sizes) for tensor in (pcm, mel, source, centres))
        rows = zip(*splits, states, ready, strict=True)
        return [
            (
                row_pcm,
                HiFTState(
                    mel=row_mel[:, :, kept:],
                    source=row_source[:, kept * spf : end * spf],
                    centre_phase=row_centres[:, end - 1 - offset],
                    first_frame=state.first_frame + kept,
                    emitted=row_ready,
                ),
            )
            for row_pcm, row_mel, row_source, row_centres, state, row_ready in rows
        ]
