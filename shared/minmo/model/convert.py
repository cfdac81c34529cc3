"""Convert the public checkpoints MinMo is assembled from into our `<component>.safetensors` layout.

- `cosyvoice2`: a CosyVoice2-0.5B directory (`flow.pt`, `hift.pt`, `llm.pt`) -> `token2wav.safetensors`
  (flow matching + HiFT) and `voice_token_lm.safetensors` (the speech half of Qwen2LM).
- `sensevoice`: a SenseVoiceSmall directory (`model.pt`, `am.mvn`) -> `voice_encoder.safetensors`, loaded into
  the speech encoder's voice encoder (its input projector comes from MinMo's training recipe).
- `hf`: a Qwen2.5 Hugging Face directory is used as it is (`LLMConfig.source = "hf"`); `check_hf_llm` checks
  it has the chat template MinMo's prompts rely on.

Each converter renames keys by an ordered list of regular-expression rules, folds weight norm (both the old
`weight_g`/`weight_v` and the new `parametrizations.weight.original0/1` layouts) into plain weights, and
checks the result against our module's own keys and shapes, so a checkpoint of another shape fails here
with the names that differ, not later inside `load_state_dict`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from minmo.model.config import HiFTConfig, MinMoConfig

Rules = Iterable[tuple[str, str | Callable[[re.Match], str]]]

_FLOW_RULES: Rules = [
    (r"^input_embedding\.", "embedding."),
    (r"^spk_embed_affine_layer\.", "speaker_affine."),
    (r"^encoder_proj\.", "encoder.project."),
    (r"^encoder\.(up_)?embed\.out\.0\.", lambda m: f"encoder.{m[1] or ''}input.linear."),
    (r"^encoder\.(up_)?embed\.out\.1\.", lambda m: f"encoder.{m[1] or ''}input.norm."),
    (r"^encoder\.after_norm\.", "encoder.norm."),
    (r"^encoder\.pre_lookahead_layer\.conv1\.", "encoder.pre_lookahead.ahead."),
    (r"^encoder\.pre_lookahead_layer\.conv2\.", "encoder.pre_lookahead.causal."),
    (r"^encoder\.up_layer\.conv\.", "encoder.upsample."),
    (r"^encoder\.encoders\.", "encoder.layers."),
    (r"^encoder\.up_encoders\.", "encoder.up_layers."),
    (r"\.self_attn\.linear_q\.", ".attention.query."),
    (r"\.self_attn\.linear_k\.", ".attention.key."),
    (r"\.self_attn\.linear_v\.", ".attention.value."),
    (r"\.self_attn\.linear_out\.", ".attention.out."),
    (r"\.self_attn\.linear_pos\.", ".attention.position."),
    (r"\.self_attn\.pos_bias_u$", ".attention.content_bias"),
    (r"\.self_attn\.pos_bias_v$", ".attention.position_bias"),
    (r"\.feed_forward\.w_1\.", ".ffn_in."),
    (r"\.feed_forward\.w_2\.", ".ffn_out."),
    (r"\.norm_ff\.", ".ffn_norm."),
    (r"\.norm_mha\.", ".attention_norm."),
    (r"^decoder\.estimator\.time_mlp\.linear_1\.", "estimator.time_mlp.0."),
    (r"^decoder\.estimator\.time_mlp\.linear_2\.", "estimator.time_mlp.2."),
    (r"^decoder\.estimator\.down_blocks\.0\.", "estimator.down."),
    (r"^decoder\.estimator\.up_blocks\.0\.", "estimator.up."),
    (r"^decoder\.estimator\.mid_blocks\.(\d+)\.", r"estimator.mid.\1."),
    (r"^decoder\.estimator\.final_block\.block\.0\.", "estimator.final.conv."),
    (r"^decoder\.estimator\.final_block\.block\.2\.", "estimator.final.norm."),
    (r"^decoder\.estimator\.final_proj\.", "estimator.output."),
    (r"^(estimator\.(?:down|up|mid\.\d+))\.0\.mlp\.1\.", r"\1.resnet.time."),
    (r"^(estimator\.(?:down|up|mid\.\d+))\.0\.(block[12])\.block\.0\.", r"\1.resnet.\2.conv."),
    (r"^(estimator\.(?:down|up|mid\.\d+))\.0\.(block[12])\.block\.2\.", r"\1.resnet.\2.norm."),
    (r"^(estimator\.(?:down|up|mid\.\d+))\.0\.res_conv\.", r"\1.resnet.skip."),
    (r"^(estimator\.(?:down|up|mid\.\d+))\.1\.(\d+)\.", r"\1.transformers.\2."),
    (r"^(estimator\.(?:down|up))\.2\.", r"\1.conv."),
    (r"\.norm1\.", ".attention_norm."),
    (r"\.norm3\.", ".ffn_norm."),
    (r"\.attn1\.to_q\.", ".query."),
    (r"\.attn1\.to_k\.", ".key."),
    (r"\.attn1\.to_v\.", ".value."),
    (r"\.attn1\.to_out\.0\.", ".out."),
    (r"\.ff\.net\.0\.proj\.", ".ffn_in."),
    (r"\.ff\.net\.2\.", ".ffn_out."),
]


def _hift_rules(cfg: HiFTConfig) -> Rules:
    kernels = len(cfg.resblock_kernels)
    return [
        (r"^m_source\.l_linear\.", "source.merge."),
        (r"^f0_predictor\.condnet\.(\d+)\.", lambda m: f"f0_predictor.convs.{int(m[1]) // 2}."),
        (r"^f0_predictor\.classifier\.", "f0_predictor.head."),
        (r"^resblocks\.(\d+)\.", lambda m: f"resblocks.{int(m[1]) // kernels}.{int(m[1]) % kernels}."),
        (r"\.activations([12])\.", r".snakes\1."),
    ]


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each weight-normed pair (g, v) by the weight g·v/‖v‖ (norm over all but the first dim)."""
    layouts = [("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")]
    folded = {}
    for key, value in state.items():
        for gain_name, direction_name in layouts:
            if key.endswith(direction_name):
                break
            if key.endswith(gain_name):
                prefix = key[: -len(gain_name)]
                direction = state[prefix + direction_name].float()
                norm = direction.flatten(1).norm(dim=1).view(-1, *[1] * (direction.dim() - 1))
                folded[prefix + "weight"] = value.float() * direction / norm
                break
        else:
            folded[key] = value
    return folded


def rename(state: dict[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    """Apply every rule, in order, to every key."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def check_against(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The state as float32, contiguous, after checking it has exactly the module's keys and shapes."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shared = sorted(expected.keys() & state.keys())
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in shared
             if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what} does not match the configured model: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), wrong shapes {wrong[:8]} ({len(wrong)})"
        )
    return {key: value.float().contiguous() for key, value in state.items()}


def cosyvoice2_token2wav(flow: dict[str, torch.Tensor], hift: dict[str, torch.Tensor], cfg: MinMoConfig) -> dict:
    """CosyVoice 2 `flow.pt` + `hift.pt` state dicts -> our Token2Wav state dict."""
    from minmo.model.token2wav import Token2Wav

    with torch.device("meta"):
        module = Token2Wav.from_config(cfg)
    state = {f"flow.{k}": v for k, v in rename(fold_weight_norm(flow), _FLOW_RULES).items()}
    state |= {f"hift.{k}": v for k, v in rename(fold_weight_norm(hift), _hift_rules(cfg.hift)).items()}
    return check_against(module, state, "CosyVoice 2 flow.pt + hift.pt")


def cosyvoice2_voice_token_lm(llm: dict[str, torch.Tensor], cfg: MinMoConfig) -> dict[str, torch.Tensor]:
    """CosyVoice 2 `llm.pt` (Qwen2LM) -> our VoiceTokenLM state dict: the Qwen2 decoder layers and final norm;
    the token table from `speech_embedding` (speech tokens, then END_OF_SPEECH = its end-of-speech row)
    and `llm_embedding` (SOS = its sos/eos row, TURN_OF_SPEECH = its task-id row, the position where its
    speech begins); the head is `llm_decoder` restricted to speech tokens + end of speech. In MinMo the output
    projector feeds the LM instead of text, so the Qwen text embedding is kept only as the instruction table
    (when the config has one: voice instructions in CosyVoice 2's instruct form); the text LM head is dropped."""
    from minmo.model.voice_token_lm import VoiceTokenLM

    vocab = cfg.voice_token_lm.speech_vocab
    prefix = "llm.model.model."
    state = {
        f"decoder.{key[len(prefix):]}": value
        for key, value in llm.items()
        if key.startswith(prefix) and not key.startswith(prefix + "embed_tokens.")
    }
    speech, special = llm["speech_embedding.weight"], llm["llm_embedding.weight"]
    state["decoder.embed_tokens.weight"] = torch.cat([speech[: vocab + 1], special[:2]])  # + EOS, SOS, TURN
    state["head.weight"] = llm["llm_decoder.weight"][: vocab + 1]
    state["head.bias"] = llm["llm_decoder.bias"][: vocab + 1]
    if cfg.voice_token_lm.instruction_vocab:
        state["instruction_embedding.weight"] = llm[prefix + "embed_tokens.weight"]
    with torch.device("meta"):
        module = VoiceTokenLM(cfg.voice_token_lm)
    return check_against(module, state, "CosyVoice 2 llm.pt")


_SENSEVOICE_RULES: Rules = [
    (r"^encoder\.encoders0\.0\.", "first_layer."),
    (r"^encoder\.encoders\.", "layers."),
    (r"^encoder\.tp_encoders\.", "tp_layers."),
    (r"^encoder\.after_norm\.", "norm."),
    (r"^encoder\.tp_norm\.", "tp_norm."),
    (r"\.self_attn\.linear_q_k_v\.", ".qkv."),
    (r"\.self_attn\.linear_out\.", ".out."),
    (r"\.self_attn\.fsmn_block\.", ".fsmn."),
    (r"\.feed_forward\.w_1\.", ".ffn_in."),
    (r"\.feed_forward\.w_2\.", ".ffn_out."),
    (r"\.norm1\.", ".attention_norm."),
    (r"\.norm2\.", ".ffn_norm."),
]


def sensevoice_voice_encoder(model: dict[str, torch.Tensor], am_mvn: str, cfg: MinMoConfig) -> dict[str, torch.Tensor]:
    """SenseVoiceSmall `model.pt` + `am.mvn` -> our SenseVoiceEncoder state dict (its encoder; the query
    embeddings and the CTC head are dropped: MinMo's input projector reads the encoder output)."""
    from minmo.model.sensevoice import SenseVoiceEncoder, parse_am_mvn

    if cfg.voice_encoder.kind != "sensevoice":
        raise ValueError(f"the config's voice encoder is {cfg.voice_encoder.kind!r}; SenseVoice needs 'sensevoice'")
    state = rename({k: v for k, v in model.items() if k.startswith("encoder.")}, _SENSEVOICE_RULES)
    state["cmvn_shift"], state["cmvn_scale"] = parse_am_mvn(am_mvn)
    with torch.device("meta"):
        module = SenseVoiceEncoder(cfg.voice_encoder)
    return check_against(module, state, "SenseVoiceSmall model.pt")


def load_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict (tensors only: loading never runs code)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def convert_directory(kind: str, source: Path, out: Path, cfg: MinMoConfig) -> list[Path]:
    """Convert the downloaded checkpoint directory `source` of `kind` into `out/<component>.safetensors`;
    returns the files written."""
    from safetensors.torch import save_file

    if kind == "hf":
        return [link_hf_llm(source, out, cfg)]
    converters = {"cosyvoice2": _convert_cosyvoice2, "sensevoice": _convert_sensevoice}
    if kind not in converters:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted([*converters, 'hf'])}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for component, state in converters[kind](source, cfg).items():
        path = out / f"{component}.safetensors"
        save_file(state, str(path))
        written.append(path)
    return written


def _convert_cosyvoice2(source: Path, cfg: MinMoConfig) -> dict[str, dict[str, torch.Tensor]]:
    flow, hift = load_torch_checkpoint(source / "flow.pt"), load_torch_checkpoint(source / "hift.pt")
    converted = {"token2wav": cosyvoice2_token2wav(flow, hift, cfg)}
    converted["voice_token_lm"] = cosyvoice2_voice_token_lm(load_torch_checkpoint(source / "llm.pt"), cfg)
    return converted


def _convert_sensevoice(source: Path, cfg: MinMoConfig) -> dict[str, dict[str, torch.Tensor]]:
    model, am_mvn = load_torch_checkpoint(source / "model.pt"), source / "am.mvn"
    if not am_mvn.is_file():
        raise FileNotFoundError(f"{am_mvn} not found (SenseVoiceSmall's CMVN statistics)")
    return {"voice_encoder": sensevoice_voice_encoder(model, am_mvn.read_text(), cfg)}


CHAT_PROBE = [
    {"role": "system", "content": "SYSTEM-PROBE"},
    {"role": "user", "content": "USER-PROBE"},
    {"role": "assistant", "content": "ASSISTANT-PROBE"},
]


def check_hf_llm(source: Path, cfg: MinMoConfig) -> None:
    """A Hugging Face LLM directory fits the configured LLM: its config.json has our sizes, and its tokenizer
    has a chat template that renders system, user and assistant turns in order with a generation prompt
    (MinMo's dialogue prompts go through `apply_chat_template`)."""
    import json

    from transformers import AutoTokenizer

    config_file = source / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found (a Hugging Face model directory has one)")
    hf = json.loads(config_file.read_text())
    expected = {
        "model_type": cfg.llm.arch, "hidden_size": cfg.llm.hidden_size, "num_hidden_layers": cfg.llm.num_layers,
        "num_attention_heads": cfg.llm.num_heads, "num_key_value_heads": cfg.llm.num_kv_heads,
        "intermediate_size": cfg.llm.ffn_dim, "vocab_size": cfg.llm.vocab_size,
    }
    wrong = {key: (hf.get(key), value) for key, value in expected.items() if hf.get(key) != value}
    if wrong:
        raise ValueError(f"{config_file} does not match the configured LLM (found, expected): {wrong}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {source} has no chat template (an -Instruct model has one)")
    rendered = tokenizer.apply_chat_template(CHAT_PROBE, tokenize=False, add_generation_prompt=True)
    places = [rendered.find(message["content"]) for message in CHAT_PROBE]
    if min(places) < 0 or places != sorted(places) or len(rendered) <= rendered.find("ASSISTANT-PROBE") + 15:
        raise ValueError(f"the chat template in {source} does not render system, user, assistant and a reply prompt")


def link_hf_llm(source: Path, out: Path, cfg: MinMoConfig) -> Path:
    """Check a Hugging Face LLM directory and link it as `<out>/llm`, where an `hf` LLM with no path is read."""
    check_hf_llm(source, cfg)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "llm"
    if link.is_symlink() or link.exists():
        if link.resolve() != source.resolve():
            raise ValueError(f"{link} already exists and is not {source}")
    else:
        link.symlink_to(source.resolve(), target_is_directory=True)
    return link
