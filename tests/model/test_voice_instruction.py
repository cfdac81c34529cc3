"""Voice instructions reach the voice-token LM in CosyVoice 2's instruct form (tiny config, seeded weights).

The instruction's token embeddings and END_OF_PROMPT follow SOS: a different instruction changes the logits the
LM computes for the same semantic vectors, and the streaming driver (`synthesize_step` after an instructed
`init_schedule_state`) equals teacher forcing over the whole instructed stream.
"""

import pytest
import torch

from minmo.model.build import build_component
from minmo.model.config import (
    COSYVOICE2_END_OF_PROMPT,
    COSYVOICE2_TEXT_VOCAB,
    MAX_INSTRUCTION_CHARS,
    VoiceTokenLMConfig,
    load_config,
)
from minmo.model.interleave import greedy_sampler, init_schedule_state, synthesize_step, teacher_forcing_inputs
from minmo.model.tokenizer import ByteTokenizer
from minmo.runtime.base import InvalidInput
from minmo.runtime.llm_model import text_tensor
from minmo.runtime.voicelm_model import VoiceLmModel

CFG = load_config("tiny")
TEXT_LENGTH = 7  # one full block and a tail of 2
BLOCKS_LENGTH = 10  # two full blocks
FAST, SAD = "Please speak very fast.", "Speak with a tone of sadness."


@pytest.fixture(scope="module")
def voice_lm():
    return build_component(CFG, "voice_token_lm")


def _semantic(length: int = TEXT_LENGTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, length, CFG.voice_token_lm.dim, generator=torch.Generator().manual_seed(seed))


def _prefix(voice_lm, text: str) -> torch.Tensor:
    return voice_lm.embed_instruction(ByteTokenizer().encode(text))


@torch.inference_mode()
def _teacher_forced_logits(voice_lm, instruction: torch.Tensor | None, speech: list[int]) -> torch.Tensor:
    inputs, _ = teacher_forcing_inputs(voice_lm, _semantic(), speech, instruction)
    logits, _ = voice_lm.step(inputs, voice_lm.init_state())
    return logits[0]  # (L, V)


def test_instruction_prefix_is_the_instruction_tokens_then_end_of_prompt(voice_lm) -> None:
    ids = ByteTokenizer().encode(FAST)
    prefix = voice_lm.embed_instruction(ids)
    table = voice_lm.instruction_embedding.weight
    assert prefix.shape == (1, len(ids) + 1, CFG.voice_token_lm.dim)
    assert torch.equal(prefix[0, :-1], table[ids])
    assert torch.equal(prefix[0, -1], table[CFG.voice_token_lm.end_of_prompt_id])


def test_a_different_instruction_changes_the_voice_lm_logits(voice_lm) -> None:
    speech = list(range(CFG.voice_token_lm.speech_block + 3))
    plain = _teacher_forced_logits(voice_lm, None, speech)
    fast = _teacher_forced_logits(voice_lm, _prefix(voice_lm, FAST), speech)
    sad = _teacher_forced_logits(voice_lm, _prefix(voice_lm, SAD), speech)
    again = _teacher_forced_logits(voice_lm, _prefix(voice_lm, FAST), speech)
    # the logits at the stream's last position (END_OF_SPEECH's): same input but for the instruction
    assert torch.equal(fast[-1], again[-1]), "the same instruction gives the same logits (deterministic)"
    assert not torch.allclose(fast[-1], sad[-1], atol=1e-4)
    assert not torch.allclose(fast[-1], plain[-1], atol=1e-4)


def test_streaming_with_an_instruction_equals_teacher_forcing(voice_lm) -> None:
    """Greedy tokens from the streaming driver (two full blocks, text not finished: 30 tokens, END_OF_SPEECH
    masked) are the argmax over speech tokens of the teacher-forced logits at each predicting position."""
    prefix = _prefix(voice_lm, SAD)
    semantic = _semantic(BLOCKS_LENGTH)
    with torch.inference_mode():
        tokens, _ = synthesize_step(voice_lm, semantic, False, init_schedule_state(voice_lm, prefix), greedy_sampler)
        assert len(tokens) == 2 * CFG.voice_token_lm.speech_block
        inputs, targets = teacher_forcing_inputs(voice_lm, semantic, tokens, prefix)
        logits, _ = voice_lm.step(inputs, voice_lm.init_state())
    predicted = (targets[0] != -100) & (targets[0] != voice_lm.end_of_speech_id)
    speech_only = logits[0, :, : voice_lm.end_of_speech_id]  # END_OF_SPEECH is masked while text may come
    assert speech_only.argmax(-1)[predicted].tolist() == tokens


def test_runtime_model_takes_the_instruction_at_sequence_start() -> None:
    model = VoiceLmModel.from_config(CFG)
    positions = torch.randn(TEXT_LENGTH, CFG.output_projector.llm_dim, generator=torch.Generator().manual_seed(1))
    start = {  # one full block, text not finished: exactly 15 sampled tokens per run
        "hidden": positions[:5], "token_embedding": positions[:5], "text_end": torch.tensor([False]),
        "temperature": torch.tensor([1.0]), "top_p": torch.tensor([0.8]), "top_k": torch.tensor([25]),
        "seed": torch.tensor([7]),
    }
    with torch.inference_mode():
        plain, _ = model.execute(start, None)
        fast, _ = model.execute({**start, "instruction": text_tensor(FAST)}, None)
        fast_again, _ = model.execute({**start, "instruction": text_tensor(FAST)}, None)
        sad, _ = model.execute({**start, "instruction": text_tensor(SAD)}, None)
    assert fast["speech_tokens"].tolist() == fast_again["speech_tokens"].tolist()
    assert fast["speech_tokens"].tolist() != sad["speech_tokens"].tolist()
    assert fast["speech_tokens"].tolist() != plain["speech_tokens"].tolist()
    with pytest.raises(InvalidInput, match="limit is 500"):
        model.execute({**start, "instruction": text_tensor("x" * (MAX_INSTRUCTION_CHARS + 1))}, None)
    with pytest.raises(InvalidInput, match="UTF-8"):
        model.execute({**start, "instruction": torch.tensor([0xFF, 0xFE], dtype=torch.uint8)}, None)


def test_public_preset_uses_cosyvoice2s_text_table() -> None:
    public = load_config("minmo-public").voice_token_lm
    assert (public.instruction_vocab, public.end_of_prompt_id) == (COSYVOICE2_TEXT_VOCAB, COSYVOICE2_END_OF_PROMPT)
    with pytest.raises(ValueError, match="end_of_prompt_id"):
        VoiceTokenLMConfig(instruction_vocab=10, end_of_prompt_id=10)
