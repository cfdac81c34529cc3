"""The LLM: any Hugging Face causal LM (transformers), driven through `inputs_embeds` and an explicit KV cache.

MinMo feeds the LLM a mix of projected speech embeddings and text-token embeddings, so the model is
always called with `inputs_embeds`. Its KV cache is a `StreamState` (per-layer key/value tensors plus the
position count), converted to transformers' `DynamicCache` only for the duration of one `step`: the module
holds no per-session state, and a state can be serialised, moved, or kept in a Triton instance.

The cache helpers (`KVCacheState`, `empty_kv_state`, `decoder_step`, `append_kv`) serve every HF decoder in the
model, the voice-token LM included.

Decode writes its keys and values in place: a state's per-layer tensors are views of preallocated buffers
(`KV_BLOCK` positions at a time, at least doubling), and one step writes only its new positions into them instead
of concatenating the whole cache into new tensors on every token. A state still behaves as a value: the buffers
are shared by the states derived from one another, and only the state at the buffers' `frontier` (the furthest
one) may write after its end, which no earlier state views; any other state copies its prefix into new buffers
first (copy on write), e.g. a snapshot that is forked, or a cropped context that grows again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from minmo.model import gguf_cache
from minmo.model.config import LLMConfig
from minmo.model.state import StreamState

# "sdpa" keeps chunked decoding equal to the full forward pass to ~1e-6 in float32 (see tests/model/test_llm.py).
ATTENTION_IMPLEMENTATION = "sdpa"
PACKAGE_PREFIX = "pkg:"
RMS_NORM_EPS = 1e-6
KV_BLOCK = 256  # positions: KV buffers are allocated in whole blocks, so a decode step never reallocates

S = TypeVar("S", bound="KVCacheState")


@dataclass
class KVCacheState(StreamState):
    """A decoder's KV cache: per layer keys and values (B, kv_heads, S, Dh); `position` = S, the tokens seen."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position: int = 0
    # How far the buffers behind keys/values are written: one mutable cell shared by every state viewing them
    # (see the module doc). A state at the frontier may append in place; any other copies first.
    frontier: list[int] = field(default_factory=lambda: [0])


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


def decoder_step(
    decoder: nn.Module, inputs_embeds: torch.Tensor, state: S, in_place: bool | None = None
) -> tuple[torch.Tensor, S]:
    """Run a transformers base decoder (e.g. Qwen2Model) on new positions after the cached ones.

    inputs_embeds: (B, T, D). Returns the last hidden state (B, T, D) and the state extended by T positions; what
    the caller's state views is never modified. `in_place` (default: when autograd is off, i.e. at inference)
    writes the new keys/values into the state's buffers; otherwise `DynamicCache` concatenates them into new
    tensors, as training's backward pass needs.
    """
    batch, length, _ = inputs_embeds.shape
    in_place = not torch.is_grad_enabled() if in_place is None else in_place
    if in_place:
        state = reserve_kv(state, state.position + length)
        pairs = zip(state.keys, state.values, strict=True)
        cache = Cache(layers=[_InPlaceLayer(keys, values, state.position) for keys, values in pairs])
    else:
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
        frontier=state.frontier if in_place else [state.position + length],
    )
    if in_place:
        state.frontier[0] = new_state.position
    return output.last_hidden_state, new_state


def append_kv(state: S, keys: list[torch.Tensor], values: list[torch.Tensor]) -> S:
    """The state extended by new entries (B, kv_heads, T, Dh) per layer, written into its buffers in place."""
    end = state.position + keys[0].shape[2]
    state = reserve_kv(state, end)
    new_keys, new_values = [], []
    for old, new, grown in ((state.keys, keys, new_keys), (state.values, values, new_values)):
        for view, entries in zip(old, new, strict=True):
            buffer = _buffer_of(view)
            buffer[:, :, state.position : end] = entries
            grown.append(buffer[:, :, :end])
    state.frontier[0] = end
    return dataclasses.replace(state, keys=new_keys, values=new_values, position=end)


def reserve_kv(state: S, end: int) -> S:
    """A state whose buffers hold `end` positions and that may write after its own end (see the module doc):
    the state itself when it can, else its prefix copied into new, larger buffers (copy on write)."""
    views = [*state.keys, *state.values]
    buffers = [_buffer_of(view) for view in views]
    if state.frontier[0] == state.position and all(b is not None and b.shape[2] >= end for b in buffers):
        return state
    capacity = KV_BLOCK * math.ceil(max(end, 2 * state.position) / KV_BLOCK)

    def grown(view: torch.Tensor) -> torch.Tensor:
        batch, heads, length, head_dim = view.shape
        buffer = view.new_empty(batch, heads, capacity, head_dim)
        buffer[:, :, :length] = view
        return buffer[:, :, :length]

    return dataclasses.replace(
        state,
        keys=[grown(view) for view in state.keys],
        values=[grown(view) for view in state.values],
        frontier=[state.position],
    )


def _buffer_of(view: torch.Tensor) -> torch.Tensor | None:
    """The contiguous buffer (B, H, capacity, Dh) that `view` (B, H, S, Dh) is the leading [:, :, :S] slice of,
    read from its strides and storage (views made under inference mode do not record their base), or None when
    the layout says otherwise (expanded, offset) or the buffer was made in another inference mode."""
    batch, heads, _, head_dim = view.shape
    if head_dim == 0 or view.is_inference() != torch.is_inference_mode_enabled():
        return None
    capacity = view.stride(1) // head_dim
    strides = (heads * capacity * head_dim, capacity * head_dim, head_dim, 1)
    needed = batch * heads * capacity * head_dim * view.element_size()
    if view.stride() != strides or view.storage_offset() != 0 or view.untyped_storage().nbytes() < needed:
        return None
    return view.as_strided((batch, heads, capacity, head_dim), strides)


class _InPlaceLayer(DynamicLayer):
    """One decoder layer's cache for one `decoder_step`: `update` writes the new keys/values into the reserved
    buffer after `position` and hands attention the view of everything so far."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: int) -> None:
        super().__init__()
        self.keys, self.values, self.position = keys, values, position
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.position + key_states.shape[2]
        grown = []
        for view, entries in ((self.keys, key_states), (self.values, value_states)):
            buffer = _buffer_of(view)
            buffer[:, :, self.position : end] = entries
            grown.append(buffer[:, :, :end])
        self.keys, self.values = grown
        self.position = end
        return self.keys, self.values


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
    if cfg.source == "gguf":
        model = gguf_cache.load_model(resolve_path(cfg.path), dtype, attn_implementation=ATTENTION_IMPLEMENTATION)
    elif cfg.source == "hf":
        model = AutoModelForCausalLM.from_pretrained(
            resolve_path(cfg.path), dtype=dtype, attn_implementation=ATTENTION_IMPLEMENTATION
        )
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
