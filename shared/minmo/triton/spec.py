"""The tensor contract of each runtime model as Triton sees it: one table for config.pbtxt, model.py and the client.

The names and dtypes are those of the `minmo.runtime` models (see their docstrings); Triton adds a leading batch
dimension of 1 to every tensor, which the client adds and strips, so callers see the in-process shapes. Every
variable-size input allows ragged batching: requests of different lengths still share one `execute` call.

Stateful models (sequence batcher, decoupled) declare every input optional: a request with no inputs and the
END flag is how a client drops a sequence's state (`TritonRuntime.end_sequence`), and the model checks the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minmo.model.config import MinMoConfig

TRITON_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "FP32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.bool: "BOOL",
}
VARIABLE = -1
PARAM_MODEL = "minmo_model"  # config.pbtxt parameter: the runtime model's name (MODEL_FACTORIES)
PARAM_CONFIG = "minmo_config"  # config.pbtxt parameter: the MinMo config JSON, relative to the model directory
PARAM_CHECKPOINT = "minmo_checkpoint"  # config.pbtxt parameter: trained weights directory (absent: seeded weights)
PARAM_DTYPE = "minmo_dtype"  # config.pbtxt parameter: float32, bfloat16 or float16 (MINMO_DTYPE; absent: float32)
STREAM_PARAMETER = "minmo_stream"  # request parameter: true for infer_stream (execute_stream), else execute
CONTROL_START, CONTROL_END, CONTROL_CORRID = "START", "END", "CORRID"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    dims: tuple[int, ...]  # without the batch dimension; VARIABLE where the size varies per request
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stateful: bool  # sequence batcher + decoupled responses; otherwise stateless with dynamic batching


def model_specs(cfg: MinMoConfig) -> dict[str, ModelSpec]:
    """The four runtime models by name, with the feature sizes of `cfg` where the contract fixes them."""
    llm_dim = cfg.llm.hidden_size
    projector_dim = cfg.output_projector.llm_dim
    classes = len(cfg.duplex_predictor.classes)
    specs = [
        ModelSpec(
            "encoder",
            (_t("pcm", torch.float32, optional=True), _flag("flush")),
            (_t("embeddings", torch.float32, (VARIABLE, llm_dim)),),
            stateful=True,
        ),
        ModelSpec(
            "token2wav",
            (
                _t("tokens", torch.int64, optional=True),
                _flag("flush"),
                _t("speaker", torch.float32, (cfg.flow.spk_embed_dim,), optional=True),
                _t("prompt_tokens", torch.int64, optional=True),
                _t("prompt_mel", torch.float32, (cfg.flow.mel_bins, VARIABLE), optional=True),
                _t("resume_samples", torch.int64, (1,), optional=True),
            ),
            (_t("pcm", torch.float32),),
            stateful=True,
        ),
        ModelSpec(
            "voice_lm",
            (
                _t("hidden", torch.float32, (VARIABLE, projector_dim), optional=True),
                _t("token_embedding", torch.float32, (VARIABLE, projector_dim), optional=True),
                _flag("text_end"),
                _scalar("temperature", torch.float32),
                _scalar("top_p", torch.float32),
                _scalar("top_k", torch.int64),
                _scalar("seed", torch.int64),
                _t("instruction", torch.uint8, optional=True),
                _t("prefix_tokens", torch.int64, optional=True),
                _scalar("max_tail_tokens", torch.int64),
            ),
            (_t("speech_tokens", torch.int64), _scalar("finished", torch.bool)),
            stateful=True,
        ),
        ModelSpec(
            "llm",
            (
                _scalar("op", torch.int64),
                *(_t(name, torch.uint8, optional=True) for name in ("system_prompt", "history_text", "text")),
                *(_t(name, torch.int64, optional=True) for name in ("history_roles", "history_lengths")),
                _scalar("role", torch.int64),
                _t("embeddings", torch.float32, (VARIABLE, llm_dim), optional=True),
                _t("instruction", torch.uint8, optional=True),
                _t("prefix_ids", torch.int64, optional=True),
                _scalar("max_tokens", torch.int64),
                _scalar("temperature", torch.float32),
                _scalar("top_k", torch.int64),
                _scalar("prefill_tokens", torch.int64),
            ),
            (
                _scalar("position", torch.int64),
                _t("probs", torch.float32, (classes,)),
                _scalar("token_id", torch.int64),
                _t("hidden", torch.float32, (1, llm_dim)),
                _t("token_embedding", torch.float32, (1, llm_dim)),
                *(_scalar(name, torch.bool) for name in ("is_end", "finished", "dropped")),
                _t("transcript", torch.uint8),
            ),
            stateful=True,
        ),
    ]
    return {spec.name: spec for spec in specs}


# the same split as model_specs, for clients without a config
STATEFUL_MODELS = frozenset({"encoder", "token2wav", "voice_lm", "llm"})


def _t(name: str, dtype: torch.dtype, dims: tuple[int, ...] = (VARIABLE,), optional: bool = False) -> TensorSpec:
    return TensorSpec(name, dtype, dims, optional)


def _scalar(name: str, dtype: torch.dtype) -> TensorSpec:
    """A (1,) value; optional, because stateful models check their own inputs per op."""
    return TensorSpec(name, dtype, (1,), optional=True)


def _flag(name: str) -> TensorSpec:
    return TensorSpec(name, torch.bool, (1,), optional=True)
