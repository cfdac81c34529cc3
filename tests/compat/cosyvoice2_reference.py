"""Run CosyVoice 2's own modules (the `cosyvoice2-eu` wheel, in the separate reference environment) and save
what the compatibility tests compare against: `flow.pt` / `hift.pt` state dicts in the original layout, with
random weights, and the reference outputs for fixed inputs, in `reference.pt`.

Usage: .venv-ref/bin/python tests/compat/cosyvoice2_reference.py OUT_DIR [--flow-size published|small]

`published` builds CosyVoice2-0.5B's `cosyvoice2.yaml` shapes; `small` keeps the layer structure but has
fewer encoder layers and a narrower, shallower estimator, so it runs in seconds on a small CPU.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import sys
import types
from pathlib import Path

import torch


def _placeholder_torchaudio() -> None:
    """No torchaudio build exists for our torch; only CosyVoice's file utilities import it."""
    module = types.ModuleType("torchaudio")
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = module


_placeholder_torchaudio()

from cosyvoice.flow.decoder import CausalConditionalDecoder  # noqa: E402
from cosyvoice.flow.flow import CausalMaskedDiffWithXvec  # noqa: E402
from cosyvoice.flow.flow_matching import CausalConditionalCFM  # noqa: E402
from cosyvoice.hifigan.f0_predictor import ConvRNNF0Predictor  # noqa: E402
from cosyvoice.hifigan.generator import HiFTGenerator  # noqa: E402
from cosyvoice.llm.llm import Qwen2Encoder, Qwen2LM  # noqa: E402
from cosyvoice.transformer.upsample_encoder import UpsampleConformerEncoder  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

FLOW_SIZES = {
    "published": {"num_blocks": 6, "channels": [256], "n_blocks": 4, "num_mid_blocks": 12},
    "small": {"num_blocks": 2, "channels": [64], "n_blocks": 1, "num_mid_blocks": 2},
}
# Qwen2.5-0.5B's widths with 2 of its 24 layers and a small text vocabulary (the text embedding is dropped)
QWEN = {"hidden_size": 896, "num_hidden_layers": 2, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 1000, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6}
CHUNK_TOKENS = 25
END_OF_PROMPT = QWEN["vocab_size"] - 1  # <|endofprompt|> stands at the reference Qwen's last id
TOKEN_MEL_RATIO = 2
SEED = 1234


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (so every parameter matters for the comparison), kept in a sane range:
    scales (norm weights, Snake alphas, weight-norm gains) near 1, matrices scaled by their fan-in."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith(("original0", "weight_g")):
                parameter.mul_(1 + 0.1 * noise)
            elif name.endswith("alpha") or (parameter.dim() == 1 and name.endswith("weight")):
                parameter.copy_(1 + 0.1 * noise)
            elif parameter.dim() >= 2:
                parameter.copy_(noise / parameter[0].numel() ** 0.5)
            else:
                parameter.copy_(0.05 * noise)


def build_flow(size: str) -> CausalMaskedDiffWithXvec:
    sizes = FLOW_SIZES[size]
    encoder = UpsampleConformerEncoder(
        input_size=512, output_size=512, attention_heads=8, linear_units=2048, num_blocks=sizes["num_blocks"],
        dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1, normalize_before=True,
        input_layer="linear", pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn",
        use_cnn_module=False, macaron_style=False, static_chunk_size=CHUNK_TOKENS,
    )
    estimator = CausalConditionalDecoder(
        in_channels=320, out_channels=80, channels=sizes["channels"], dropout=0.0, attention_head_dim=64,
        n_blocks=sizes["n_blocks"], num_mid_blocks=sizes["num_mid_blocks"], num_heads=8, act_fn="gelu",
        static_chunk_size=CHUNK_TOKENS * TOKEN_MEL_RATIO, num_decoding_left_chunks=-1,
    )
    cfm_params = DictConfig({
        "sigma_min": 1e-06, "solver": "euler", "t_scheduler": "cosine", "training_cfg_rate": 0.2,
        "inference_cfg_rate": 0.7, "reg_loss_type": "l1",
    })
    decoder = CausalConditionalCFM(
        in_channels=240, n_spks=1, spk_emb_dim=80, cfm_params=cfm_params, estimator=estimator
    )
    return CausalMaskedDiffWithXvec(
        input_size=512, output_size=80, spk_embed_dim=192, output_type="mel", vocab_size=6561,
        input_frame_rate=25, only_mask_loss=True, token_mel_ratio=TOKEN_MEL_RATIO, pre_lookahead_len=3,
        encoder=encoder, decoder=decoder,
    )


def build_hift() -> HiFTGenerator:
    return HiFTGenerator(
        in_channels=80, base_channels=512, nb_harmonics=8, sampling_rate=24000, nsf_alpha=0.1, nsf_sigma=0.003,
        nsf_voiced_threshold=10, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
        istft_params={"n_fft": 16, "hop_len": 4}, resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], source_resblock_kernel_sizes=[7, 7, 11],
        source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], lrelu_slope=0.1, audio_limit=0.99,
        f0_predictor=ConvRNNF0Predictor(num_class=1, in_channels=80, cond_channels=512),
    )


def build_llm(scratch: Path) -> Qwen2LM:
    """Qwen2LM around a Qwen2 saved to `scratch` (its encoder loads with `from_pretrained`)."""
    Qwen2ForCausalLM(Qwen2Config(**QWEN)).save_pretrained(scratch)
    return Qwen2LM(llm_input_size=896, llm_output_size=896, speech_token_size=6561, llm=Qwen2Encoder(str(scratch)),
                   sampling=None, length_normalized_loss=True, lsm_weight=0, mix_ratio=[5, 15])


@torch.inference_mode()
def llm_outputs(llm: Qwen2LM) -> dict[str, torch.Tensor]:
    """Logits for [SOS, 7 semantic vectors, task id, 12 speech tokens], composed as Qwen2LM composes its input."""
    generator = torch.Generator().manual_seed(SEED + 3)
    semantic = torch.randn(1, 7, 896, generator=generator)
    speech = torch.randint(0, 6561, (1, 12), generator=generator)
    sos, task = llm.llm_embedding.weight[llm.sos_eos][None, None], llm.llm_embedding.weight[llm.task_id][None, None]
    inputs = torch.cat([sos, semantic, task, llm.speech_embedding(speech)], dim=1)
    hidden, _ = llm.llm(inputs, torch.tensor([inputs.shape[1]]))
    # instruct mode (`inference_instruct2`): the text side is embed_tokens(instruction + <|endofprompt|> + text);
    # in MinMo the semantic vectors stand in for the text's embeddings
    instruction = torch.randint(0, END_OF_PROMPT, (1, 9), generator=generator)
    prompt_ids = torch.cat([instruction, torch.tensor([[END_OF_PROMPT]])], dim=1)
    instructed = torch.cat([sos, llm.llm.model.model.embed_tokens(prompt_ids), inputs[:, 1:]], dim=1)
    instructed_hidden, _ = llm.llm(instructed, torch.tensor([instructed.shape[1]]))
    return {
        "semantic": semantic,
        "speech": speech,
        "logits": llm.llm_decoder(hidden),
        "instruction": instruction,
        "instructed_logits": llm.llm_decoder(instructed_hidden),
    }


def legacy_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in the layout of `torch.nn.utils.weight_norm` (older checkpoints, `hift.pt`)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        renamed[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return renamed


@torch.inference_mode()
def flow_outputs(flow: CausalMaskedDiffWithXvec) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, 6561, (1, 2 * CHUNK_TOKENS + 7), generator=generator)
    speaker = torch.randn(1, 192, generator=generator)
    prompt_tokens = torch.randint(0, 6561, (1, 10), generator=generator)
    prompt_mel = torch.randn(1, 10 * TOKEN_MEL_RATIO, 80, generator=generator)
    no_prompt = (torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, 0, 80))
    prompt = (prompt_tokens, torch.tensor([10]), prompt_mel)
    outputs = {"tokens": tokens, "speaker": speaker, "prompt_tokens": prompt_tokens, "prompt_mel": prompt_mel}

    def run(tokens: torch.Tensor, prompt: tuple, streaming: bool, finalize: bool) -> torch.Tensor:
        length = torch.tensor([tokens.shape[1]])
        prompt_mel_length = torch.tensor([prompt[2].shape[1]])
        mel, _ = flow.inference(
            tokens, length, *prompt, prompt_mel_length, speaker, streaming=streaming, finalize=finalize
        )
        return mel

    outputs["streaming"] = run(tokens, no_prompt, True, True)
    outputs["streaming_first_chunk"] = run(tokens[:, : CHUNK_TOKENS + 3], no_prompt, True, False)
    outputs["offline_prompt"] = run(tokens, prompt, False, True)
    return outputs


@torch.inference_mode()
def hift_outputs(hift: HiFTGenerator) -> dict[str, torch.Tensor]:
    """Vocode a random mel, recording the source noise the NSF sine generator draws (`torch.randn_like`), so
    our module can be given the same noise."""
    generator = torch.Generator().manual_seed(SEED + 1)
    mel = torch.randn(1, 80, 40, generator=generator)
    drawn = []
    randn_like = torch.randn_like

    def recording_randn_like(*args, **kwargs) -> torch.Tensor:
        drawn.append(randn_like(*args, **kwargs))
        return drawn[-1]

    torch.randn_like = recording_randn_like
    try:
        pcm, source = hift.inference(mel)
    finally:
        torch.randn_like = randn_like
    noise = next(sample for sample in drawn if sample.shape[-1] == 9)  # (1, S, 9): per harmonic
    return {"mel": mel, "pcm": pcm, "source": source[:, 0], "noise": noise, "f0": hift.f0_predictor(mel)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--flow-size", choices=sorted(FLOW_SIZES), default="small")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    flow = build_flow(args.flow_size).eval()
    randomise(flow, SEED)
    torch.save(flow.state_dict(), args.out / "flow.pt")

    hift = build_hift().eval()
    randomise(hift, SEED + 2)
    with torch.no_grad():
        hift.f0_predictor.classifier.bias.fill_(200.0)  # voiced: the sine harmonics take part
    torch.save(hift.state_dict(), args.out / "hift.pt")
    torch.save(legacy_weight_norm(hift.state_dict()), args.out / "hift_legacy.pt")

    llm = build_llm(args.out / "qwen2").eval()
    randomise(llm, SEED + 4)
    torch.save(llm.state_dict(), args.out / "llm.pt")

    reference = {f"flow.{k}": v for k, v in flow_outputs(flow).items()}
    reference |= {f"llm.{k}": v for k, v in llm_outputs(llm).items()}
    reference |= {f"hift.{k}": v for k, v in hift_outputs(hift).items()}
    torch.save(reference, args.out / "reference.pt")


if __name__ == "__main__":
    main()
