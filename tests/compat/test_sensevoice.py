"""SenseVoiceSmall weights run in our voice encoder with funasr's results.

funasr's own `SenseVoiceEncoderSmall` (run in the reference environment) gets random weights, a random
`am.mvn` and a random fbank; `minmo convert --from sensevoice` maps `model.pt` + `am.mvn` into
`voice_encoder.safetensors`, `build_component("speech_encoder")` loads it, and our LFR + CMVN + encoder must
give funasr's features and encoder output. The structure is SenseVoiceSmall's with 1 + 2 + 2 layers (of
1 + 49 + 20) and width 128 (of 512), so the reference runs in seconds.

Tolerance: atol 1e-4 (observed ~1e-6): float32 rounding over five layers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from minmo.cli import app
from minmo.model.build import build_component
from minmo.model.config import FbankConfig, MinMoConfig, VoiceEncoderConfig
from minmo.model.fbank import apply_lfr

from .conftest import reference_dump

SCRIPT = Path(__file__).with_name("sensevoice_reference.py")
CONFIG = MinMoConfig(
    name="sensevoice-small",
    fbank=FbankConfig(num_mel_bins=80, window_type="hamming", lfr_m=7, lfr_n=6),
    voice_encoder=VoiceEncoderConfig(
        kind="sensevoice", input_dim=560, dim=128, num_layers=3, tp_layers=2, num_heads=4, ffn_dim=256,
        fsmn_kernel=11, downsample=1, chunk_frames=4, left_chunks=4, right_context=8,
    ),
)


@pytest.fixture(scope="module")
def sensevoice_reference() -> Path:
    return reference_dump(SCRIPT, "sensevoice")


@pytest.fixture(scope="module")
def speech_encoder(sensevoice_reference: Path, tmp_path_factory: pytest.TempPathFactory):
    out, config = tmp_path_factory.mktemp("minmo"), tmp_path_factory.mktemp("config") / "config.json"
    config.write_text(CONFIG.to_json())
    args = ["convert", str(sensevoice_reference), "--from", "sensevoice", "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(out / "voice_encoder.safetensors")]
    return build_component(CONFIG, "speech_encoder", checkpoint=out)


@torch.no_grad()
def test_lfr_cmvn_and_encoder_match_funasr(speech_encoder, sensevoice_reference: Path) -> None:
    reference = torch.load(sensevoice_reference / "reference.pt", weights_only=True)
    encoder = speech_encoder.voice_encoder
    lfr = apply_lfr(reference["fbank"], CONFIG.fbank.lfr_m, CONFIG.fbank.lfr_n)
    torch.testing.assert_close((lfr + encoder.cmvn_shift) * encoder.cmvn_scale, reference["features"])
    torch.testing.assert_close(encoder(lfr[None]), reference["encoded"], atol=1e-4, rtol=1e-4)

