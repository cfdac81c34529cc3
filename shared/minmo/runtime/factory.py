"""Build the runtime a service calls, holding only the models that service serves."""

from __future__ import annotations

from collections.abc import Callable

from minmo.model.build import build_component
from minmo.model.config import MinMoConfig
from minmo.runtime.base import ModelRuntime, RuntimeModel
from minmo.runtime.llm_model import LlmModel
from minmo.runtime.local import LocalRuntime
from minmo.runtime.models import EncoderModel
from minmo.runtime.token2wav_model import Token2WavModel
from minmo.runtime.voicelm_model import VoiceLmModel

MODEL_FACTORIES: dict[str, Callable[[MinMoConfig, str | None], RuntimeModel]] = {
    "encoder": lambda cfg, checkpoint: EncoderModel(build_component(cfg, "speech_encoder", checkpoint)),
    "llm": LlmModel.from_config,
    "token2wav": lambda cfg, checkpoint: Token2WavModel(build_component(cfg, "token2wav", checkpoint)),
    "voice_lm": VoiceLmModel.from_config,
}


def build_local_runtime(
    cfg: MinMoConfig, models: list[str], checkpoint: str | None = None, workers: int = 2
) -> ModelRuntime:
    """An in-process runtime serving `models` (names from MODEL_FACTORIES)."""
    return LocalRuntime([MODEL_FACTORIES[name](cfg, checkpoint) for name in models], workers=workers)
