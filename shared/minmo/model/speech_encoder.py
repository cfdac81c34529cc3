"""The speech input path as one streaming unit: 16 kHz PCM -> fbank -> voice encoder -> input projector.

This is what the encoder service runs per chunk, and what the in-process pipeline runs: LLM-ready
embeddings at 12.5 Hz (80 ms per frame) come out as soon as a whole encoder chunk has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.config import MinMoConfig
from minmo.model.fbank import Fbank, FbankState
from minmo.model.input_projector import InputProjector, InputProjectorState
from minmo.model.sensevoice import SenseVoiceEncoder, SenseVoiceState
from minmo.model.state import StreamState
from minmo.model.voice_encoder import VoiceEncoder, VoiceEncoderState


@dataclass
class SpeechEncoderState(StreamState):
    fbank: FbankState
    voice_encoder: VoiceEncoderState | SenseVoiceState
    input_projector: InputProjectorState


class SpeechEncoder(nn.Module):
    """PCM (T,) float32 in [-1, 1] at 16 kHz -> embeddings (1, N, llm_dim) at 12.5 Hz."""

    def __init__(self, cfg: MinMoConfig) -> None:
        super().__init__()
        self.fbank = Fbank(cfg.fbank)
        encoders = {"sanm": VoiceEncoder, "sensevoice": SenseVoiceEncoder}
        assert cfg.voice_encoder.kind in encoders, f"voice encoder {cfg.voice_encoder.kind!r} not in {sorted(encoders)}"
        self.voice_encoder = encoders[cfg.voice_encoder.kind](cfg.voice_encoder)
        self.input_projector = InputProjector.for_encoder(cfg.input_projector, cfg.voice_encoder)
        self.sample_rate = cfg.fbank.sample_rate

    @property
    def output_dim(self) -> int:
        return self.input_projector.cfg.output_dim

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        """Offline: a whole utterance at once (with the streaming masks)."""
        feats = self.fbank.forward(pcm).unsqueeze(0)  # (1, F, mel)
        return self.input_projector(self.voice_encoder(feats))

    def init_state(self, batch: int = 1) -> SpeechEncoderState:
        return SpeechEncoderState(
            self.fbank.init_state(batch), self.voice_encoder.init_state(batch), self.input_projector.init_state(batch)
        )

    def step(self, pcm: torch.Tensor, state: SpeechEncoderState) -> tuple[torch.Tensor, SpeechEncoderState]:
        """Feed samples (T,); returns the embeddings (1, N, llm_dim) of every encoder chunk now complete."""
        feats, fbank_state = self.fbank.step(pcm, state.fbank)
        frames, encoder_state = self.voice_encoder.step(feats.unsqueeze(0), state.voice_encoder)
        embeddings, projector_state = self.input_projector.step(frames, state.input_projector)
        return embeddings, SpeechEncoderState(fbank_state, encoder_state, projector_state)

    def flush(self, state: SpeechEncoderState) -> tuple[torch.Tensor, SpeechEncoderState]:
        """End of utterance: everything pending, as the offline pass computes it; returns a fresh state."""
        feats, _ = self.fbank.flush(state.fbank)
        frames, encoder_state = self.voice_encoder.step(feats.unsqueeze(0), state.voice_encoder)
        last_frames, _ = self.voice_encoder.flush(encoder_state)
        frames = torch.cat([frames, last_frames], dim=1)
        embeddings, projector_state = self.input_projector.step(frames, state.input_projector)
        last_embeddings, _ = self.input_projector.flush(projector_state)
        return torch.cat([embeddings, last_embeddings], dim=1), self.init_state(frames.shape[0])
