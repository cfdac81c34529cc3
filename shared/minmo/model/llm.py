"""The LLM: any Hugging Face causal LM (transformers), driven through `inputs_embeds` and an explicit KV cache.

MinMo feeds the LLM a mix of projected speech embeddings and text-token embeddings, so the model is
always called with `inputs_embeds`. Its KV cache is a `StreamState` (per-layer key/value tensors plus the
position count), converted to transformers' `DynamicCache` only for the duration of one `step`: the module
holds no per-session state, and a state can be serialised, moved, or kept in a Triton instance.

The cache helpers (`KVCacheState`, `empty_kv_state`, `decoder_step`) serve every HF decoder in the model,
the voice-token LM included.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config
from transformers.cache_utils import DynamicCache

from minmo.model.config import LLMConfig
from minmo.model.state import StreamState

# "sdpa" keeps chunked decoding equal to the full forward pass to ~1e-6 in float32 (see tests/model/test_llm.py).
ATTENTION_IMPLEMENTATION = "sdpa"
PACKAGE_PREFIX = "pkg:"
RMS_NORM_EPS = 1e-6

S = TypeVar("S", bound="KVCacheState")


@dataclass
class KVCacheState(StreamState):
    """A decoder's KV cache: per layer keys and values (B, kv_heads, S, Dh); `position` = S, the tokens seen."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position: int = 0


@dataclass
class LLMState(KVCacheState):
    """The LLM's streaming state (one session's context)."""


@dataclass
class LLMStepOutput:
    """What one LLM step returns for every input position."""

    logits: torch.Tensor  # (B, T, V)
    hidden: torch.Tensor  # (B, T, D) last layer, after the final norm: what the output projector reads


def empty_kv_state(state_type: type[S], config: PretrainedConfig, batch: int, dtype: torch.dtype, device) -> S:
    """A zero-length cache for `batch` streams, shaped from a transformers decoder config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, config.num_key_value_heads, 0, head_dim)
    layers = range(config.num_hidden_layers)
    return state_type(
        keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
        values=[torch.zeros(shape, dtype=dtype, device=device) for _ in layers],
        position=0,
    )


def decoder_step(decoder: nn.Module, inputs_embeds: torch.Tensor, state: S) -> tuple[torch.Tensor, S]:
    """Run a transformers base decoder (e.g. Qwen2Model) on new positions after the cached ones.

    inputs_embeds: (B, T, D). Returns the last hidden state (B, T, D) and the state extended by T positions.
    `DynamicCache.update` concatenates into new tensors, so the caller's state is never modified.
    """
    batch, length, _ = inputs_embeds.shape
    cache = DynamicCache(config=decoder.config)
    for layer, (keys, values) in enumerate(zip(state.keys, state.values, strict=True)):
        cache.update(keys, values, layer)
    positions = torch.arange(state.position, state.position + length, device=inputs_embeds.device)
    output = decoder(
        inputs_embeds=inputs_embeds,
        position_ids=positions.expand(batch, length),
        past_key_values=cache,
        use_cache=True,
    )
    new_state = dataclasses.replace(
        state,
        keys=[layer.keys for layer in cache.layers],
        values=[layer.values for layer in cache.layers],
        position=state.position + length,
    )
    return output.last_hidden_state, new_state


def resolve_path(path: str) -> Path:
    """A local path, or "pkg:<package>/<file>": a file inside an installed wheel, found without importing it."""
    if not path.startswith(PACKAGE_PREFIX):
        return Path(path)
    package, _, relative = path.removeprefix(PACKAGE_PREFIX).partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} (from {path!r}) is not installed")
    return Path(spec.submodule_search_locations[0]) / relative


def next_token(
    logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token from logits (B, V) -> (B,): greedy when temperature <= 0, else (top-k) sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k > 0:
        threshold = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probs = scaled.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class LLM(nn.Module):
    """A transformers causal LM behind the streaming contract: `init_state`, `step`, plus `embed`."""

    def __init__(self, cfg: LLMConfig, model: PreTrainedModel) -> None:
        super().__init__()
        assert model.config.hidden_size == cfg.hidden_size, (
            f"loaded LLM has hidden size {model.config.hidden_size}, config says {cfg.hidden_size}"
        )
        self.cfg = cfg
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().out_features

    def init_state(self, batch: int = 1) -> LLMState:
        """An empty context for `batch` streams."""
        weight = self.model.get_input_embeddings().weight
        return empty_kv_state(LLMState, self.model.config, batch, weight.dtype, weight.device)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the LLM's input embeddings (B, T, D)."""
        return self.model.get_input_embeddings()(token_ids)

    def step(self, inputs_embeds: torch.Tensor, state: LLMState) -> tuple[LLMStepOutput, LLMState]:
        """Feed T new positions (B, T, D) after the context in `state`; logits and hidden states for each."""
        hidden, new_state = decoder_step(self.model.get_decoder(), inputs_embeds, state)
        logits = self.model.get_output_embeddings()(hidden)  # (B, T, V)
        return LLMStepOutput(logits=logits, hidden=hidden), new_state

    @torch.no_grad()
    def generate_text(
        self, prompt_ids: list[int], max_new_tokens: int, eos_token_ids: tuple[int, ...] = ()
    ) -> list[int]:
        """Greedy continuation of one prompt through `step`; the new ids, without the end-of-turn token."""
        device = self.model.get_input_embeddings().weight.device
        inputs = self.embed(torch.tensor([prompt_ids], device=device))  # (1, T, D)
        state = self.init_state(batch=1)
        generated: list[int] = []
        for _ in range(max_new_tokens):
            output, state = self.step(inputs, state)
            token = next_token(output.logits[:, -1])  # (1,)
            if token.item() in eos_token_ids:
                break
            generated.append(int(token.item()))
            inputs = self.embed(token[:, None])
        return generated


def build_llm(cfg: LLMConfig, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LLM:
    """Random weights from the sizes in `cfg`, or load gguf / hf weights.

    On the "meta" device nothing is allocated or loaded, whatever the source: the model is built from the
    sizes in `cfg`, for counting parameters. Random weights are drawn in float32 and then cast, so every dtype
    holds the same weights (rounded).
    """
    if cfg.source == "random" or device == "meta":
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                _hf_config(cfg), attn_implementation=ATTENTION_IMPLEMENTATION, dtype=torch.float32
            )
        return LLM(cfg, model.to(dtype))
    path = resolve_path(cfg.path)
    if cfg.source == "gguf":
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype, attn_implementation=ATTENTION_IMPLEMENTATION
        )
    elif cfg.source == "hf":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION_IMPLEMENTATION)
    else:
        raise ValueError(f"unknown LLM source {cfg.source!r}: expected random, gguf or hf")
    return LLM(cfg, model.to(device).eval())


def _hf_config(cfg: LLMConfig) -> PretrainedConfig:
    """A transformers config with the sizes of `cfg`, for random initialisation."""
    config_types = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if cfg.arch not in config_types:
        raise ValueError(f"unknown LLM arch {cfg.arch!r}: expected one of {sorted(config_types)}")
    return config_types[cfg.arch](
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.ffn_dim,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=cfg.tie_embeddings,
        rms_norm_eps=RMS_NORM_EPS,
    )
