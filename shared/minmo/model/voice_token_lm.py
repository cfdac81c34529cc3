"""Voice-token LM (paper §3.3, from CosyVoice 2): a Qwen2 decoder that turns semantic vectors into speech tokens.

Its input stream interleaves two kinds of positions, both already at the decoder width: semantic vectors
from the output projector, and embeddings of speech tokens (the 6561 FSQ codes plus specials). The
stream starts with SOS; after every 5 semantic vectors the LM writes 15 speech tokens; when the LLM's
text ends, the leftover vectors and TURN_OF_SPEECH follow and the LM writes tokens until END_OF_SPEECH
(the schedule lives in `interleave.py`). Like CosyVoice 2's LM it has no text embedding of its own: the
decoder's token table *is* the speech embedding, and a separate head scores speech tokens + END_OF_SPEECH.

Voice instructions ("Speak with a tone of sadness") enter as CosyVoice 2's instruct mode has them (its
`inference_instruct2`: the instruction text + <|endofprompt|> before the text to speak): when the config has an
instruction table (`instruction_vocab`, CosyVoice 2's text embedding for `minmo-public`), the stream becomes
SOS, the instruction's token embeddings, END_OF_PROMPT, then the semantic vectors that stand in for the text.
The LLM also reads the instruction (inside the user turn), so its hidden states carry it too; without a table
that is the only way the instruction reaches the voice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model

from minmo.model.config import VoiceTokenLMConfig
from minmo.model.llm import ATTENTION_IMPLEMENTATION, RMS_NORM_EPS, KVCacheState, decoder_step, empty_kv_state

SPECIAL_TOKENS = ("end_of_speech", "sos", "turn_of_speech")  # ids speech_vocab, speech_vocab + 1, ...


@dataclass
class VoiceLMState(KVCacheState):
    """The voice-token LM's KV cache for one synthesis stream."""


class VoiceTokenLM(nn.Module):
    """Qwen2 decoder over semantic vectors and speech tokens; streams through `init_state` / `step`."""

    def __init__(self, cfg: VoiceTokenLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        config = Qwen2Config(
            vocab_size=cfg.speech_vocab + len(SPECIAL_TOKENS),
            hidden_size=cfg.dim,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            intermediate_size=cfg.ffn_dim,
            rope_theta=cfg.rope_theta,
            max_position_embeddings=cfg.max_positions,
            rms_norm_eps=RMS_NORM_EPS,
            tie_word_embeddings=False,
            attn_implementation=ATTENTION_IMPLEMENTATION,
        )
        self.decoder = Qwen2Model(config)
        self.head = nn.Linear(cfg.dim, cfg.speech_vocab + 1)  # speech tokens + END_OF_SPEECH
        self.instruction_embedding = nn.Embedding(cfg.instruction_vocab, cfg.dim) if cfg.instruction_vocab else None

    @property
    def end_of_speech_id(self) -> int:
        """Output class that stops synthesis (never fed back)."""
        return self.cfg.speech_vocab

    @property
    def sos_id(self) -> int:
        """First input of every stream."""
        return self.cfg.speech_vocab + 1

    @property
    def turn_of_speech_id(self) -> int:
        """Input after the last semantic vector: the LLM's text is finished, speak the rest."""
        return self.cfg.speech_vocab + 2

    def init_state(self, batch: int = 1) -> VoiceLMState:
        weight = self.decoder.embed_tokens.weight
        return empty_kv_state(VoiceLMState, self.decoder.config, batch, weight.dtype, weight.device)

    def embed_speech(self, ids: torch.Tensor) -> torch.Tensor:
        """Speech token / special ids (B, T) -> input embeddings (B, T, dim)."""
        return self.decoder.embed_tokens(ids)

    def embed_instruction(self, ids: list[int]) -> torch.Tensor:
        """An instruction's text token ids -> its prefix (1, len(ids) + 1, dim), END_OF_PROMPT last."""
        assert self.instruction_embedding is not None, "this voice LM has no instruction table (instruction_vocab 0)"
        assert all(0 <= i < self.cfg.instruction_vocab for i in ids), f"ids outside [0, {self.cfg.instruction_vocab})"
        weight = self.instruction_embedding.weight
        return self.instruction_embedding(torch.tensor([[*ids, self.cfg.end_of_prompt_id]], device=weight.device))

    def step(self, inputs_embeds: torch.Tensor, state: VoiceLMState) -> tuple[torch.Tensor, VoiceLMState]:
        """Feed T positions (B, T, dim); logits over speech tokens + END_OF_SPEECH (B, T, speech_vocab + 1)."""
        assert inputs_embeds.shape[-1] == self.cfg.dim, f"input width {inputs_embeds.shape[-1]}, need {self.cfg.dim}"
        hidden, new_state = decoder_step(self.decoder, inputs_embeds, state)
        return self.head(hidden), new_state
