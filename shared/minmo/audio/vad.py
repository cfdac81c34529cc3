"""Silero VAD v6 (16 kHz) as a PyTorch module with explicit streaming state.

The official `silero_vad.jit` keeps its LSTM state and audio context on the module, so one loaded model
can follow only one audio stream at a time. The duplex service serves many sessions from one process,
so here the same network is rebuilt as a plain module, loaded with the wheel's weights, and every bit
of per-stream memory lives in a `VadState` that the caller passes in and gets back.

Weights: the default is the 16 kHz half of `silero_vad.jit`, the model `load_silero_vad()` returns; the
wheel's ONNX files carry the same weights. The wheel's `silero_vad_16k.safetensors` uses this module's key
names but holds a different checkpoint (its probabilities differed from the JIT's by up to 0.056 on our
test audio), so it loads only when asked for by path. With the JIT weights the probabilities equal the
JIT's (tests compare).

Network, per 512-sample window (32 ms at 16 kHz) with the previous window's last 64 samples in front:
reflect-pad 64 on the right → STFT as a strided conv (256-point, hop 128) → magnitude (129 bins, 4 frames)
→ 4 conv+ReLU blocks (strides 1, 2, 2, 1 → 1 frame of 128 features) → LSTM cell (128) → ReLU → 1x1
conv → sigmoid.
"""

from __future__ import annotations

import dataclasses
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from minmo.model.state import StreamState

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
HIDDEN_SIZE = 128
N_FFT = 256
HOP_LENGTH = 128
N_BINS = N_FFT // 2 + 1
ENCODER_CHANNELS = ((N_BINS, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1))  # (in, out, stride)
ENCODER_KERNEL = 3
JIT_FILE = "silero_vad.jit"
JIT_PREFIX = "_model."  # the 16 kHz network; `_model_8k.` is the 8 kHz one
JIT_KEY_PREFIXES = {  # JIT submodule → ours
    "stft.forward_basis_buffer": "stft_conv.weight",
    "decoder.rnn.": "lstm_cell.",
    "decoder.decoder.2.": "final_conv.",
    **{f"encoder.{i}.reparam_conv.": f"conv{i + 1}." for i in range(len(ENCODER_CHANNELS))},
}


def wheel_file(name: str) -> Path:
    """A file that ships inside the `silero-vad` wheel (no download needed)."""
    return Path(str(resources.files("silero_vad.data").joinpath(name)))


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Our state dict from a safetensors file with our key names, or from a Silero JIT file (the default)."""
    path = Path(path) if path else wheel_file(JIT_FILE)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    with warnings.catch_warnings():  # TorchScript loading is deprecated, but it is the format Silero ships
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), map_location="cpu")
    return {_rename_jit_key(key): value for key, value in scripted.state_dict().items() if key.startswith(JIT_PREFIX)}


def _rename_jit_key(key: str) -> str:
    key = key.removeprefix(JIT_PREFIX)
    for theirs, ours in JIT_KEY_PREFIXES.items():
        if key.startswith(theirs):
            return ours + key.removeprefix(theirs)
    raise KeyError(f"unexpected Silero JIT weight {key!r}")


@dataclasses.dataclass
class VadState(StreamState):
    """Per-stream memory of the VAD network: LSTM h and c, and the last samples of the previous window."""

    h: torch.Tensor  # (B, HIDDEN_SIZE)
    c: torch.Tensor  # (B, HIDDEN_SIZE)
    context: torch.Tensor  # (B, CONTEXT_SAMPLES)


class SileroVad(nn.Module):
    """The Silero VAD network; stateless — `step` takes a `VadState` and returns the next one."""

    sample_rate = SAMPLE_RATE
    window_samples = WINDOW_SAMPLES

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 2 * N_BINS, N_FFT, stride=HOP_LENGTH, bias=False)
        for index, (c_in, c_out, stride) in enumerate(ENCODER_CHANNELS, start=1):
            conv = nn.Conv1d(c_in, c_out, ENCODER_KERNEL, stride=stride, padding=ENCODER_KERNEL // 2)
            self.add_module(f"conv{index}", conv)
        self.lstm_cell = nn.LSTMCell(HIDDEN_SIZE, HIDDEN_SIZE)
        self.final_conv = nn.Conv1d(HIDDEN_SIZE, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> SileroVad:
        """A fresh module in eval mode with the wheel's JIT weights, or those at `path` (see `load_weights`)."""
        model = cls()
        model.load_state_dict(load_weights(path), strict=True)
        return model.eval()

    def init_state(self, batch_size: int = 1) -> VadState:
        """Silence before the stream: zero LSTM memory and zero context."""
        return VadState(
            h=torch.zeros(batch_size, HIDDEN_SIZE),
            c=torch.zeros(batch_size, HIDDEN_SIZE),
            context=torch.zeros(batch_size, CONTEXT_SAMPLES),
        )

    @torch.inference_mode()
    def step(self, window: torch.Tensor, state: VadState) -> tuple[torch.Tensor, VadState]:
        """Speech probability of one 512-sample window per batch row: (B, 512) → (B,), new state.

        Inference only: the VAD is never trained here, and an autograd graph threaded through the LSTM
        state would grow for as long as the session lasts.
        """
        assert window.shape[-1] == WINDOW_SAMPLES, f"VAD window must be {WINDOW_SAMPLES} samples, got {window.shape}"
        x = torch.cat([state.context, window], dim=-1)  # (B, 576)
        features = self._encode(self._spectrum(x))  # (B, 128)
        h, c = self.lstm_cell(features, (state.h, state.c))
        logit = self.final_conv(F.relu(h).unsqueeze(-1))  # (B, 1, 1)
        prob = torch.sigmoid(logit).flatten()
        # A copy, not a view: a view would pin (and serialise) the caller's whole buffer.
        return prob, VadState(h=h, c=c, context=window[:, -CONTEXT_SAMPLES:].clone())

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """STFT magnitude via the learned-basis conv: (B, 576) → (B, 129, 4)."""
        x = F.pad(x.unsqueeze(1), (0, CONTEXT_SAMPLES), mode="reflect")
        real, imag = self.stft_conv(x).split(N_BINS, dim=1)
        return torch.sqrt(real**2 + imag**2)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Four conv + ReLU blocks down to one frame: (B, 129, 4) → (B, 128)."""
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        return x.squeeze(-1)


@dataclasses.dataclass
class StreamingVadState(StreamState):
    """A stream's VAD state plus samples not yet forming a full window and the stream position."""

    vad: VadState
    pending: torch.Tensor  # (n,) with n < WINDOW_SAMPLES
    offset: int  # absolute sample index of pending[0]


@dataclasses.dataclass(frozen=True)
class VadFrame:
    """The speech probability of one window and where it starts in the stream."""

    start_sample: int
    prob: float

    @property
    def start_ms(self) -> float:
        return self.start_sample * 1000 / SAMPLE_RATE

    @property
    def end_ms(self) -> float:
        return (self.start_sample + WINDOW_SAMPLES) * 1000 / SAMPLE_RATE


class StreamingVad:
    """Cuts arbitrary-size 16 kHz chunks into VAD windows; all per-stream memory is in `StreamingVadState`.

    `step` is CPU compute (~0.25 ms per window): async callers run it in an executor.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model: SileroVad) -> None:
        self.model = model

    def init_state(self) -> StreamingVadState:
        return StreamingVadState(vad=self.model.init_state(), pending=torch.zeros(0), offset=0)

    def step(self, chunk: np.ndarray, state: StreamingVadState) -> tuple[list[VadFrame], StreamingVadState]:
        """Feed float32 mono 16 kHz samples; return one frame per completed window and the new state."""
        samples = torch.cat([state.pending, torch.from_numpy(np.asarray(chunk, dtype=np.float32))])
        n_windows = samples.numel() // WINDOW_SAMPLES
        frames: list[VadFrame] = []
        vad = state.vad
        for index in range(n_windows):
            window = samples[index * WINDOW_SAMPLES : (index + 1) * WINDOW_SAMPLES].unsqueeze(0)
            prob, vad = self.model.step(window, vad)
            frames.append(VadFrame(start_sample=state.offset + index * WINDOW_SAMPLES, prob=float(prob)))
        consumed = n_windows * WINDOW_SAMPLES
        return frames, StreamingVadState(vad=vad, pending=samples[consumed:].clone(), offset=state.offset + consumed)

    def flush(self, state: StreamingVadState) -> tuple[list[VadFrame], StreamingVadState]:
        """End of stream: score the leftover samples zero-padded to a full window, so no audio goes unjudged."""
        if state.pending.numel() == 0:
            return [], state
        padding = np.zeros(WINDOW_SAMPLES - state.pending.numel(), dtype=np.float32)
        return self.step(padding, state)
