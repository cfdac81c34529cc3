"""The speech input path as one streaming unit: 16 kHz PCM -> fbank -> voice encoder -> input projector.

This is what the encoder service runs per chunk, and what the in-process pipeline runs: LLM-ready
embeddings at 12.5 Hz (80 ms per frame) come out as soon as a whole encoder chunk has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.batch_rows import rows_of
from minmo.model.config import MinMoConfig
from minmo.model.fbank import Fbank, FbankState
from minmo.model.input_projector import InputProjector, InputProjectorState
from minmo.model.placement import module_placement
from minmo.model.sensevoice import SenseVoiceEncoder, SenseVoiceState
from minmo.model.state import StreamState
from minmo.model.voice_encoder import VoiceEncoder, VoiceEncoderState
from minmo.model.whisper_encoder import WhisperEncoder, WhisperEncoderState
from minmo.model.whisper_log_mel import WhisperLogMel, WhisperLogMelState


@dataclass
class SpeechEncoderState(StreamState):
    fbank: FbankState | WhisperLogMelState
    voice_encoder: VoiceEncoderState | SenseVoiceState | WhisperEncoderState
    input_projector: InputProjectorState


def build_front_end(cfg: MinMoConfig) -> Fbank | WhisperLogMel:
    """The configured log-mel front end (kaldi fbank for SAN-M, Whisper's log-mel for Whisper)."""
    kinds = {"kaldi": Fbank, "whisper": WhisperLogMel}
    if cfg.fbank.kind not in kinds:
        raise ValueError(f"unknown front end {cfg.fbank.kind!r}: expected one of {sorted(kinds)}")
    return kinds[cfg.fbank.kind](cfg.fbank)


def build_voice_encoder(
    cfg: MinMoConfig, load_weights: bool = True
) -> VoiceEncoder | SenseVoiceEncoder | WhisperEncoder:
    """The configured voice encoder; a Whisper encoder gets its pretrained weights unless `load_weights` is off."""
    if cfg.voice_encoder.kind == "sanm":
        return VoiceEncoder(cfg.voice_encoder)
    if cfg.voice_encoder.kind == "sensevoice":
        return SenseVoiceEncoder(cfg.voice_encoder)
    if cfg.voice_encoder.kind != "whisper":
        raise ValueError(f"unknown voice encoder {cfg.voice_encoder.kind!r}: expected sanm, sensevoice or whisper")
    encoder = WhisperEncoder(cfg.voice_encoder)
    if load_weights and cfg.voice_encoder.path:
        encoder.load_ctranslate2(cfg.voice_encoder.path)
    return encoder


class SpeechEncoder(nn.Module):
    """PCM (T,) float32 in [-1, 1] at 16 kHz -> embeddings (1, N, llm_dim) at 12.5 Hz."""

    def __init__(self, cfg: MinMoConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.fbank = build_front_end(cfg)
        self.voice_encoder = build_voice_encoder(cfg, load_pretrained)
        self.input_projector = InputProjector.for_encoder(cfg.input_projector, cfg.voice_encoder)
        self.sample_rate = cfg.fbank.sample_rate
        # parameters that come from a pretrained source at build time, so a trained checkpoint may leave them out
        self.pretrained_prefixes = ("voice_encoder.",) if cfg.voice_encoder.kind == "whisper" else ()

    @property
    def output_dim(self) -> int:
        return self.input_projector.cfg.output_dim

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        """Offline: a whole utterance at once (with the streaming masks)."""
        feats = self._to_encoder(self.fbank.forward(pcm))  # (1, F, mel)
        return self.input_projector(self.voice_encoder(feats))

    def init_state(self, batch: int = 1) -> SpeechEncoderState:
        return SpeechEncoderState(
            self.fbank.init_state(batch), self.voice_encoder.init_state(batch), self.input_projector.init_state(batch)
        )

    def step(self, pcm: torch.Tensor, state: SpeechEncoderState) -> tuple[torch.Tensor, SpeechEncoderState]:
        """Feed samples (T,); returns the embeddings (1, N, llm_dim) of every encoder chunk now complete."""
        feats, fbank_state = self.fbank.step(pcm, state.fbank)
        frames, encoder_state = self.voice_encoder.step(self._to_encoder(feats), state.voice_encoder)
        embeddings, projector_state = self.input_projector.step(frames, state.input_projector)
        return embeddings, SpeechEncoderState(fbank_state, encoder_state, projector_state)

    def step_rows(
        self, pcm: list[torch.Tensor], states: list[SpeechEncoderState]
    ) -> list[tuple[torch.Tensor, SpeechEncoderState]]:
        """`step` for independent streams (pcm[b] (T_b,), each state a batch of one): the front end per stream (it
        has no weights), the voice encoder and the projector as batched forwards over the streams' caches. The
        SenseVoice and Whisper encoders have no `step_rows` (they stream without per-chunk caches here): row by row."""
        front = [self.fbank.step(samples, state.fbank) for samples, state in zip(pcm, states, strict=True)]
        encoded = rows_of(self.voice_encoder)(
            [self._to_encoder(feats) for feats, _ in front], [state.voice_encoder for state in states]
        )
        projected = self.input_projector.step_rows(
            [frames for frames, _ in encoded], [state.input_projector for state in states]
        )
        return [
            (embeddings, SpeechEncoderState(fbank_state, encoder_state, projector_state))
            for (_, fbank_state), (_, encoder_state), (embeddings, projector_state) in zip(
                front, encoded, projected, strict=True
            )
        ]

    def _to_encoder(self, feats: torch.Tensor) -> torch.Tensor:
        """Front-end features (F, mel), computed in float32 on the CPU, as a batch of one on the encoder's device
        in its dtype (MINMO_DEVICE / MINMO_DTYPE)."""
        device, dtype = module_placement(self.voice_encoder)
        return feats.unsqueeze(0).to(device=device, dtype=dtype)

    def flush(self, state: SpeechEncoderState) -> tuple[torch.Tensor, SpeechEncoderState]:
        """End of utterance: everything pending, as the offline pass computes it; returns a fresh state."""
        feats, _ = self.fbank.flush(state.fbank)
        frames, encoder_state = self.voice_encoder.step(self._to_encoder(feats), state.voice_encoder)
        last_frames, _ = self.voice_encoder.flush(encoder_state)
        frames = torch.cat([frames, last_frames], dim=1)
        embeddings, projector_state = self.input_projector.step(frames, state.input_projector)
        last_embeddings, _ = self.input_projector.flush(projector_state)
        return torch.cat([embeddings, last_embeddings], dim=1), self.init_state(frames.shape[0])

