"""CosyVoice 2 weights run in our token2wav with CosyVoice 2's results.

CosyVoice 2's own `CausalMaskedDiffWithXvec` and `HiFTGenerator` (the `cosyvoice2-eu` wheel, run in the
reference environment by conftest) get random weights and fixed inputs; their `flow.pt` / `hift.pt` go
through `minmo convert --from cosyvoice2`, `build_component` loads the result, and our outputs must match.
HiFT is built with the published sizes; the flow model keeps the published encoder (its width is fixed in
CosyVoice 2's code) with 2 instead of 6 token-rate layers and a 64-wide estimator with 1 transformer block
per U-Net block and 2 mid blocks (12 in the published model), so the reference runs in seconds.

Tolerances: flow, atol 1e-4 on mel of magnitude ~5 (observed ~2e-6: float32 rounding over 10 Euler steps);
HiFT, atol 2e-4 on audio of magnitude ~0.1 (observed ~3e-5): CosyVoice 2 sums the sine phase in float32,
so its phase drifts by ~1e-3 rad over 40 frames, where ours is summed in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from minmo.cli import app
from minmo.model.build import build_component
from minmo.model.config import FlowMatchingConfig, HiFTConfig, MinMoConfig, VoiceTokenLMConfig, load_config
from minmo.model.convert import convert_directory
from minmo.model.token2wav import Token2Wav

FLOW_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
HIFT_TOLERANCE = {"atol": 2e-4, "rtol": 0.0}
CHUNK = 25  # CosyVoice 2's static chunk; its masks have no shorter first chunk
LOOKAHEAD = 3

# the reference script's "small" flow size (tests/compat/cosyvoice2_reference.py), published HiFT
CONFIG = MinMoConfig(
    name="cosyvoice2-small",
    flow=FlowMatchingConfig(
        first_chunk_tokens=CHUNK, encoder_layers=2, decoder_channels=64, decoder_blocks=1, decoder_mid_blocks=2
    ),
    hift=HiFTConfig(),
    # the reference's Qwen2: 0.5B's widths, 2 of 24 layers, a 1000-token text table whose last id is <|endofprompt|>
    voice_token_lm=VoiceTokenLMConfig(num_layers=2, instruction_vocab=1000, end_of_prompt_id=999),
)


def _converted(reference: Path, tmp_path: Path, hift_file: str) -> Token2Wav:
    """`minmo convert` a directory holding flow.pt and the given HiFT file as hift.pt, then build from it."""
    source, out = tmp_path / "cosyvoice2", tmp_path / "minmo"
    source.mkdir()
    (source / "flow.pt").symlink_to(reference / "flow.pt")
    (source / "hift.pt").symlink_to(reference / hift_file)
    (source / "llm.pt").symlink_to(reference / "llm.pt")
    config = tmp_path / "config.json"
    config.write_text(CONFIG.to_json())
    args = ["convert", str(source), "--from", "cosyvoice2", "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(out / "token2wav.safetensors"), str(out / "voice_token_lm.safetensors")]
    return out


@pytest.fixture(scope="module")
def reference(cosyvoice2_reference: Path) -> dict[str, torch.Tensor]:
    return torch.load(cosyvoice2_reference / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def token2wav(converted: Path) -> Token2Wav:
    return build_component(CONFIG, "token2wav", checkpoint=converted)


@pytest.fixture(scope="module")
def converted(cosyvoice2_reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(cosyvoice2_reference, tmp_path_factory.mktemp("new"), "hift.pt")


@torch.no_grad()
def test_flow_streaming_masks_match_cosyvoice2(token2wav: Token2Wav, reference: dict) -> None:
    """CosyVoice 2 with streaming=True (chunk masks), whole utterance: our stream, 15 tokens at a time (our offline
    pass equals the stream: tests/model/test_flow_matching.py)."""
    tokens, speaker = reference["flow.tokens"], reference["flow.speaker"]
    expected = reference["flow.streaming"]
    state, outputs = token2wav.flow.init_state(1, speaker), []
    for start in range(0, tokens.shape[1], 15):
        mel, state = token2wav.flow.step(tokens[:, start : start + 15], state)
        outputs.append(mel)
    outputs.append(token2wav.flow.flush(state)[0])
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, **FLOW_TOLERANCE)


@torch.no_grad()
def test_flow_first_chunk_with_lookahead_matches_cosyvoice2(token2wav: Token2Wav, reference: dict) -> None:
    """CosyVoice 2 streaming, not finalised, on one chunk + lookahead: what our `step` emits for it."""
    tokens, speaker = reference["flow.tokens"][:, : CHUNK + LOOKAHEAD], reference["flow.speaker"]
    mel, _ = token2wav.flow.step(tokens, token2wav.flow.init_state(1, speaker))
    torch.testing.assert_close(mel, reference["flow.streaming_first_chunk"], **FLOW_TOLERANCE)


@torch.no_grad()
def test_flow_offline_with_voice_prompt_matches_cosyvoice2(token2wav: Token2Wav, reference: dict) -> None:
    """CosyVoice 2 with streaming=False (full attention), conditioned on prompt tokens, prompt mel and x-vector."""
    mel = token2wav.flow(
        reference["flow.tokens"],
        reference["flow.speaker"],
        reference["flow.prompt_tokens"],
        reference["flow.prompt_mel"].transpose(1, 2),
        streaming=False,
    )
    torch.testing.assert_close(mel, reference["flow.offline_prompt"], **FLOW_TOLERANCE)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["parametrizations", "weight_g_v"])
def test_hift_matches_cosyvoice2(
    cosyvoice2_reference: Path, converted: Path, reference: dict, tmp_path: Path, layout: str
) -> None:
    if layout == "weight_g_v":  # the same weights saved by the older torch.nn.utils.weight_norm
        converted = _converted(cosyvoice2_reference, tmp_path, "hift_legacy.pt")
    hift = build_component(CONFIG, "token2wav", checkpoint=converted).hift
    mel = reference["hift.mel"]
    torch.testing.assert_close(hift.f0_predictor(mel), reference["hift.f0"], atol=1e-4, rtol=1e-5)
    pcm = hift(mel, noise=reference["hift.noise"])
    torch.testing.assert_close(pcm, reference["hift.pcm"], **HIFT_TOLERANCE)
    assert reference["hift.pcm"].abs().max() > 0.05  # a real signal, not near-silence


def test_convert_names_what_does_not_fit(cosyvoice2_reference: Path, tmp_path: Path) -> None:
    source = tmp_path / "cosyvoice2"
    source.mkdir()
    for name in ("flow.pt", "hift.pt", "llm.pt"):
        (source / name).symlink_to(cosyvoice2_reference / name)
    with pytest.raises(ValueError, match=r"does not match the configured model: .*wrong shapes \['flow\.embedding"):
        convert_directory("cosyvoice2", source, tmp_path / "out", load_config("tiny"))
    result = CliRunner().invoke(app, ["convert", str(source), "--from", "cosyvoice2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2  # a usage error with the message, not a traceback


@torch.no_grad()
def test_voice_token_lm_matches_qwen2lm(converted: Path, reference: dict) -> None:
    """Qwen2LM's logits for [SOS, semantic vectors, task id, speech tokens] = ours for [SOS, semantic vectors,
    TURN_OF_SPEECH, speech tokens], over speech tokens + end of speech."""
    voice_lm = build_component(CONFIG, "voice_token_lm", checkpoint=converted)
    ids = torch.tensor([[voice_lm.sos_id]]), torch.tensor([[voice_lm.turn_of_speech_id]])
    inputs = torch.cat(
        [voice_lm.embed_speech(ids[0]), reference["llm.semantic"], voice_lm.embed_speech(ids[1]),
         voice_lm.embed_speech(reference["llm.speech"])],
        dim=1,
    )
    logits, _ = voice_lm.step(inputs, voice_lm.init_state())
    expected = reference["llm.logits"][:, :, : voice_lm.end_of_speech_id + 1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_instructed_voice_token_lm_matches_qwen2lm_instruct_mode(converted: Path, reference: dict) -> None:
    """Qwen2LM's logits for [SOS, embed_tokens(instruction + <|endofprompt|>), semantic vectors, task id, speech
    tokens] (its instruct mode, semantic vectors in place of the text) = ours for [SOS, the instruction prefix
    from the converted text table, semantic vectors, TURN_OF_SPEECH, speech tokens]."""
    voice_lm = build_component(CONFIG, "voice_token_lm", checkpoint=converted)
    sos, turn = (voice_lm.embed_speech(torch.tensor([[i]])) for i in (voice_lm.sos_id, voice_lm.turn_of_speech_id))
    prefix = voice_lm.embed_instruction(reference["llm.instruction"][0].tolist())
    speech = voice_lm.embed_speech(reference["llm.speech"])
    inputs = torch.cat([sos, prefix, reference["llm.semantic"], turn, speech], dim=1)
    logits, _ = voice_lm.step(inputs, voice_lm.init_state())
    expected = reference["llm.instructed_logits"][:, :, : voice_lm.end_of_speech_id + 1]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
