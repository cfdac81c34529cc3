"""One whole speech-to-speech turn in-process, with the same streaming steps the services run.

PCM chunks in -> speech encoder -> LLM (+ duplex predictor, one signal per chunk) -> at the end of the
user's speech the LLM generates text tokens one by one -> each token's hidden state and embedding go
through the output projector into the voice-token LM (5 text positions : 15 speech tokens) -> every
batch of speech tokens goes through token2wav -> 24 kHz PCM chunks out as soon as they are final.

This is the reference the five services must reproduce, and the in-process side of `minmo bench`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from minmo.model.build import build_component
from minmo.model.config import MinMoConfig
from minmo.model.dialogue import Dialogue, DialogueState
from minmo.model.interleave import (
    Sampler,
    TailParts,
    greedy_sampler,
    init_schedule_state,
    synthesize_step,
)
from minmo.model.placement import CPU_FLOAT32, Placement, to_host
from minmo.model.tokenizer import load_tokenizer

PcmCallback = Callable[[torch.Tensor], None]


@dataclass
class TurnResult:
    """What one turn produced, and when (seconds on the monotonic clock)."""

    predictor_probs: list[torch.Tensor]  # (4,) per input chunk that reached the LLM
    text: str
    text_token_ids: list[int]
    speech_tokens: list[int]
    pcm: torch.Tensor  # (S,) float32 at 24 kHz
    sample_rate: int
    end_of_speech_s: float  # the last input chunk was delivered
    first_token_s: float | None = None
    first_audio_s: float | None = None
    done_s: float = 0.0
    chunk_times_s: list[float] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        return self.pcm.shape[0] / self.sample_rate

    @property
    def first_audio_ms(self) -> float | None:
        """End of the user's speech -> first PCM sample ready: the latency the paper's eq. 1 budgets."""
        return None if self.first_audio_s is None else 1000 * (self.first_audio_s - self.end_of_speech_s)


class MinMoPipeline:
    """All of MinMo in this process: the components `minmo.model.build` makes for the services."""

    def __init__(self, cfg: MinMoConfig, checkpoint: str | None = None, placement: Placement = CPU_FLOAT32) -> None:
        self.cfg = cfg
        # each component as its service builds it (MINMO_DTYPE=auto settles the dtype per runtime model)
        self.voice_placement = placement.for_model(cfg, "voice_lm")  # where the voice LM's inputs go
        self.speech_encoder = build_component(cfg, "speech_encoder", checkpoint, placement=placement)
        self.dialogue = Dialogue(
            build_component(cfg, "llm", checkpoint, placement=placement),
            build_component(cfg, "duplex_predictor", checkpoint, placement=placement),
            load_tokenizer(cfg.llm),
        )
        self.output_projector = build_component(cfg, "output_projector", checkpoint, placement=placement)
        self.voice_lm = build_component(cfg, "voice_token_lm", checkpoint, placement=placement)
        self.token2wav = build_component(cfg, "token2wav", checkpoint, placement=placement)

    @torch.no_grad()
    def run_turn(
        self,
        pcm_chunks: Iterable[torch.Tensor],
        system_prompt: str = "",
        instruction: str = "",
        sampler: Sampler = greedy_sampler,
        on_audio: PcmCallback | None = None,
    ) -> TurnResult:
        """A whole turn: the user's audio (16 kHz float32 chunks) streams in, then the spoken response."""
        state = self.dialogue.start(system_prompt)
        encoder_state = self.speech_encoder.init_state()
        signals = []
        for chunk in pcm_chunks:
            embeddings, encoder_state = self.speech_encoder.step(chunk, encoder_state)
            if embeddings.shape[1]:
                probs, state = self.dialogue.append_audio(state, embeddings)
                signals.append(to_host(probs))
        end_of_speech = time.monotonic()
        embeddings, _ = self.speech_encoder.flush(encoder_state)
        if embeddings.shape[1]:
            probs, state = self.dialogue.append_audio(state, embeddings)
            signals.append(to_host(probs))
        result = TurnResult(signals, "", [], [], torch.zeros(0), self.token2wav.sample_rate, end_of_speech)
        self._respond(self.dialogue.begin_response(state, instruction), sampler, result, on_audio)
        return result

    def _respond(self, state: DialogueState, sampler: Sampler, result: TurnResult, on_audio: PcmCallback | None):
        schedule = init_schedule_state(self.voice_lm)
        vocoder = self.token2wav.init_state()
        pieces: list[torch.Tensor] = []

        def vocode(speech_tokens: list[int], last: bool) -> None:
            nonlocal vocoder
            result.speech_tokens += speech_tokens
            tokens = torch.tensor([speech_tokens], dtype=torch.long, device=self.voice_placement.torch_device)
            pcm, vocoder = self.token2wav.step(tokens, vocoder)
            if last:
                tail, vocoder = self.token2wav.flush(vocoder)
                pcm = torch.cat([pcm, tail], dim=1)
            pcm = to_host(pcm)
            if pcm.shape[1]:
                result.first_audio_s = result.first_audio_s or time.monotonic()
                result.chunk_times_s.append(time.monotonic())
                pieces.append(pcm[0])
                if on_audio is not None:
                    on_audio(pcm[0])

        for _ in range(self.cfg.max_response_tokens):
            step, state = self.dialogue.generate_step(state)
            if step.is_end:
                break
            result.first_token_s = result.first_token_s or time.monotonic()
            result.text_token_ids.append(step.token_id)
            # the LLM's outputs as the voicelm service receives them: float32 on the wire, then in the voice LM's dtype
            hidden, embedding = (self.voice_placement.to_model(to_host(t)) for t in (step.hidden, step.token_embedding))
            semantic = self.output_projector(hidden[:, None], embedding[:, None])  # (1, 1, dim)
            speech_tokens, schedule = synthesize_step(self.voice_lm, semantic, False, schedule, sampler)
            vocode(speech_tokens, last=False)
        self.dialogue.finish_response(state)
        empty = self.voice_placement.to_model(torch.zeros(1, 0, self.voice_lm.cfg.dim))
        tail = TailParts.from_config(self.cfg)
        while not schedule.finished:  # the tail in the voicelm service's parts: a short reply's first audio first
            part = tail.next_part(len(result.speech_tokens))
            speech_tokens, schedule = synthesize_step(self.voice_lm, empty, True, schedule, sampler,
                                                      max_tail_tokens=part)
            vocode(speech_tokens, last=schedule.finished)
        result.text = self.dialogue.tokenizer.decode(result.text_token_ids)
        result.pcm = torch.cat(pieces) if pieces else torch.zeros(0)
        result.done_s = time.monotonic()
