"""Run funasr's SenseVoice encoder (in the reference environment) and save what tests/compat compares against:
`model.pt` (a SenseVoiceSmall-layout state dict, `encoder.*`, random weights), `am.mvn` (random CMVN) and
`reference.pt` (fbank input, funasr's LFR + CMVN features, the encoder output).

Usage: .venv-ref/bin/python tests/compat/sensevoice_reference.py OUT_DIR

SenseVoiceSmall's structure (LFR 7/6 -> 560 inputs, encoders0 + encoders + tp_encoders, 4 heads, FSMN kernel
11) with fewer layers (1 + 2 + 2 instead of 1 + 49 + 20) and 128 wide instead of 512, so it runs in seconds.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import torch


def _placeholder_torchaudio() -> None:
    """No torchaudio build exists for our torch; funasr imports it at module level but the encoder never uses it."""
    module = types.ModuleType("torchaudio")
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = module


_placeholder_torchaudio()

from funasr.frontends.wav_frontend import apply_cmvn, apply_lfr, load_cmvn  # noqa: E402
from funasr.models.sense_voice.model import SenseVoiceEncoderSmall  # noqa: E402

SIZES = {"input_size": 560, "output_size": 128, "attention_heads": 4, "linear_units": 256, "num_blocks": 3,
         "tp_blocks": 2, "kernel_size": 11, "sanm_shfit": 0, "normalize_before": True}
SEED = 4321


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    encoder = SenseVoiceEncoderSmall(**SIZES).eval()
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 1 and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            elif parameter.dim() >= 2:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            else:
                parameter.copy_(0.05 * noise)
    torch.save({f"encoder.{k}": v for k, v in encoder.state_dict().items()}, out / "model.pt")

    shift, scale = -5 + torch.randn(560, generator=generator), 0.2 + 0.05 * torch.rand(560, generator=generator)
    vector = " ".join
    (out / "am.mvn").write_text(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n"
        f"<AddShift> 560 560\n<LearnRateCoef> 0 [ {vector(f'{v:.6f}' for v in shift.tolist())} ]\n"
        f"<Rescale> 560 560\n<LearnRateCoef> 0 [ {vector(f'{v:.6f}' for v in scale.tolist())} ]\n</Nnet>\n"
    )
    fbank = 5 * torch.randn(53, 80, generator=generator)  # 53 frames: the last LFR window is padded
    features = apply_cmvn(apply_lfr(fbank.clone(), 7, 6), load_cmvn(str(out / "am.mvn")))
    with torch.no_grad():
        encoded, _ = encoder(features[None].clone(), torch.tensor([features.shape[0]]))
    torch.save({"fbank": fbank, "features": features, "encoded": encoded}, out / "reference.pt")


if __name__ == "__main__":
    main()
