"""MINMO_DEVICE / MINMO_DTYPE: bad values fail at start with a clear message; every runtime model runs in bfloat16
on the CPU close to float32 and keeps its float32 CPU tensor contract; the CUDA tests run where a GPU is present.

Tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 % per operation); through the tiny
models' few layers the outputs stay within BF16_TOLERANCE of the float32 outputs, relative to their scale.
"""

from __future__ import annotations

import pytest
import torch

from minmo.audio.synthetic import utterance
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.pipeline import MinMoPipeline
from minmo.model.placement import Placement, PlacementError
from minmo.runtime.factory import MODEL_FACTORIES
from minmo.runtime.llm_model import OP_APPEND_AUDIO, OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor
from minmo.serving.settings import ServerSettings, SettingsError

CFG = load_config("tiny")
BF16_TOLERANCE = 0.05  # max |bf16 - fp32| / max |fp32|
CPU_BF16 = Placement("cpu", "bfloat16")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu-check.sh runs it on a GPU machine)"
)


def _close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = BF16_TOLERANCE) -> None:
    assert actual.dtype == torch.float32 and actual.device.type == "cpu", f"{actual.dtype} on {actual.device}"
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6)
    assert error <= tolerance, f"relative error {error:.4f} > {tolerance}"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"MINMO_DEVICE": "gpu"}, "use cpu, cuda or cuda:N"),
        ({"MINMO_DEVICE": "cpu:1"}, "use cpu, cuda or cuda:N"),
        ({"MINMO_DEVICE": "cuda:x"}, "use cpu, cuda or cuda:N"),
        ({"MINMO_DTYPE": "fp8"}, "use one of float32, bfloat16, float16, auto"),
        ({"MINMO_DTYPE": "half"}, "use one of float32, bfloat16, float16, auto"),
    ],
)
def test_bad_values_fail_at_start_with_the_variable_named(variables: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServerSettings.from_env(50051, environ=variables)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(SettingsError, match="sees no CUDA device"):
        ServerSettings.from_env(50051, environ={"MINMO_DEVICE": "cuda"})


def test_settings_default_to_cpu_auto_and_read_both_variables() -> None:
    assert ServerSettings.from_env(50051, environ={}).placement == Placement("cpu", "auto")
    settings = ServerSettings.from_env(50051, environ={"MINMO_DEVICE": "cpu", "MINMO_DTYPE": "bfloat16"})
    assert settings.placement.torch_dtype == torch.bfloat16


def test_auto_is_bfloat16_only_for_the_presets_listed_models_on_native_hardware(monkeypatch) -> None:
    """nano lists its LLM, encoder and vocoder: bfloat16 where the CPU has AVX512-BF16 or AMX (the vocoder under
    autocast, its weights float32), float32 where it would be emulated; its other models, and every model of a preset
    that lists none (tiny), stay float32. An explicit dtype is kept (and the vocoder computes in float32)."""
    nano, auto = load_config("nano"), Placement("cpu", "auto")
    with pytest.raises(PlacementError, match="settled per model"):
        auto.to_model(torch.zeros(1))
    for native in (True, False):
        monkeypatch.setattr("minmo.model.placement.native_bfloat16", lambda device, native=native: native)
        for model in ("llm", "encoder"):
            assert auto.for_model(nano, model).dtype == ("bfloat16" if native else "float32")
        assert {auto.for_model(nano, model).dtype for model in ("voice_lm", "token2wav")} == {"float32"}
        assert auto.for_model(CFG, "llm").dtype == "float32"
        assert Placement("cpu", "float16").for_model(nano, "llm").dtype == "float16"
        vocoder = build_component(nano, "token2wav", placement=auto).hift  # weights float32, autocast where native
        assert vocoder.autocast_dtype == (torch.bfloat16 if native else None)
        assert {p.dtype for p in vocoder.parameters()} == {torch.float32}
    assert build_component(nano, "token2wav", placement=Placement("cpu", "float32")).hift.autocast_dtype is None


def test_place_keeps_the_vocoder_in_float32() -> None:
    token2wav = MODEL_FACTORIES["token2wav"](CFG, None, CPU_BF16).token2wav
    assert token2wav.flow.embedding.weight.dtype == torch.bfloat16
    assert {p.dtype for p in token2wav.hift.parameters()} == {torch.float32}
    assert token2wav.hift.source.harmonics.dtype == torch.float64
    with pytest.raises(PlacementError):
        Placement("cpu", "int8")


def _encoder_outputs(placement: Placement) -> dict[str, torch.Tensor]:
    model = MODEL_FACTORIES["encoder"](CFG, None, placement)
    pcm = torch.from_numpy(utterance(seed=0, lead_s=0.0, speech_s=1.0, tail_s=0.0))
    outputs, _ = model.execute({"pcm": pcm, "flush": torch.tensor([True])}, None)
    return outputs


def test_encoder_in_bfloat16_is_close_to_float32() -> None:
    _close(_encoder_outputs(CPU_BF16)["embeddings"], _encoder_outputs(Placement())["embeddings"])


def _llm_turn(placement: Placement) -> list[dict[str, torch.Tensor]]:
    model = MODEL_FACTORIES["llm"](CFG, None, placement)
    _, state = model.execute({"op": torch.tensor([OP_START]), "system_prompt": text_tensor("Be brief.")}, None)
    embeddings = torch.randn(6, CFG.llm.hidden_size, generator=torch.Generator().manual_seed(0))
    audio, state = model.execute({"op": torch.tensor([OP_APPEND_AUDIO]), "embeddings": embeddings}, state)
    _, state = model.execute({"op": torch.tensor([OP_BEGIN_RESPONSE])}, state)
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([4])}
    return [audio, *(outputs for outputs, _ in model.execute_stream(generate, state))]


def test_llm_in_bfloat16_is_close_to_float32() -> None:
    bf16, fp32 = _llm_turn(CPU_BF16), _llm_turn(Placement())
    _close(bf16[0]["probs"], fp32[0]["probs"])
    assert bf16[1]["token_id"] == fp32[1]["token_id"]
    _close(bf16[1]["hidden"], fp32[1]["hidden"])
    _close(bf16[1]["token_embedding"], fp32[1]["token_embedding"])


def _voice_lm_logits(placement: Placement) -> torch.Tensor:
    model = MODEL_FACTORIES["voice_lm"](CFG, None, placement)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 5, CFG.llm.hidden_size, generator=generator)
    embedding = torch.randn(1, 5, CFG.llm.hidden_size, generator=generator)
    dtype = model.voice_lm.head.weight.dtype
    semantic = model.projector(hidden.to(dtype), embedding.to(dtype))
    logits, _ = model.voice_lm.step(semantic, model.voice_lm.init_state())
    return logits.float()


def test_voice_lm_in_bfloat16_is_close_to_float32_and_serves_tokens() -> None:
    _close(_voice_lm_logits(CPU_BF16), _voice_lm_logits(Placement()))
    model = MODEL_FACTORIES["voice_lm"](CFG, None, CPU_BF16)
    inputs = {
        "hidden": torch.randn(5, CFG.llm.hidden_size),
        "token_embedding": torch.randn(5, CFG.llm.hidden_size),
        "text_end": torch.tensor([True]),
        "temperature": torch.tensor([0.0]),
        "top_p": torch.tensor([1.0]),
        "top_k": torch.tensor([0]),
        "seed": torch.tensor([0]),
    }
    outputs, _ = model.execute(inputs, None)
    assert outputs["speech_tokens"].dtype == torch.int64 and outputs["speech_tokens"].numel() > 0


def _token2wav_pcm(placement: Placement) -> torch.Tensor:
    model = MODEL_FACTORIES["token2wav"](CFG, None, placement)
    tokens = torch.randint(0, CFG.flow.speech_vocab, (30,), generator=torch.Generator().manual_seed(2))
    outputs, _ = model.execute({"tokens": tokens, "flush": torch.tensor([True])}, None)
    return outputs["pcm"]


def test_token2wav_in_bfloat16_is_close_to_float32() -> None:
    _close(_token2wav_pcm(CPU_BF16), _token2wav_pcm(Placement()), tolerance=0.1)


def _pipeline_turn(placement: Placement):
    pcm = torch.from_numpy(utterance(seed=0, lead_s=0.0, speech_s=1.0, tail_s=0.0))
    return MinMoPipeline(CFG, placement=placement).run_turn(list(pcm.split(2560)))


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_pipeline_turn_matches_the_cpu_contract(dtype: str) -> None:
    """A whole turn on the GPU: probabilities and PCM come back as CPU float32, close to the GPU's float32 turn."""
    reference = _pipeline_turn(Placement("cuda", "float32"))
    turn = _pipeline_turn(Placement("cuda", dtype))
    _close(turn.predictor_probs[0], reference.predictor_probs[0])
    assert turn.pcm.device.type == "cpu" and turn.pcm.dtype == torch.float32 and turn.pcm.numel() > 0


@needs_cuda
@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_cuda_runtime_models_build_on_the_gpu(name: str) -> None:
    model = MODEL_FACTORIES[name](CFG, None, Placement("cuda", "bfloat16"))
    holders = [holder for holder in (model, getattr(model, "dialogue", None)) if holder is not None]
    modules = [value for holder in holders for value in vars(holder).values()]
    modules = [module for module in modules if isinstance(module, torch.nn.Module)]
    assert modules and all(p.device.type == "cuda" for m in modules for p in m.parameters())


@needs_cuda
def test_cuda_runtime_outputs_are_cpu_float32() -> None:
    cuda_bf16, cuda_fp32 = Placement("cuda", "bfloat16"), Placement("cuda")
    _close(_encoder_outputs(cuda_bf16)["embeddings"], _encoder_outputs(cuda_fp32)["embeddings"])
    pcm = torch.from_numpy(utterance(seed=0, lead_s=0.0, speech_s=1.0, tail_s=0.0))
    encoder = MODEL_FACTORIES["encoder"](CFG, None, cuda_bf16)
    _, state = encoder.execute({"pcm": pcm[:8000]}, None)  # the stream's state stays with the model, on the GPU
    second, _ = encoder.execute({"pcm": pcm[8000:], "flush": torch.tensor([True])}, state)
    assert second["embeddings"].device.type == "cpu" and second["embeddings"].dtype == torch.float32
    token2wav = MODEL_FACTORIES["token2wav"](CFG, None, cuda_bf16)
    _, state = token2wav.execute({"tokens": torch.arange(30)}, None)
    rest, _ = token2wav.execute({"tokens": torch.arange(30), "flush": torch.tensor([True])}, state)
    assert rest["pcm"].device.type == "cpu" and rest["pcm"].numel() > 0
    for outputs in _llm_turn(cuda_bf16):
        for value in outputs.values():
            assert value.device.type == "cpu"
    assert _token2wav_pcm(cuda_bf16).device.type == "cpu"


def test_the_triton_repository_carries_the_dtype_and_gpu_instances_build_on_their_gpu(tmp_path) -> None:
    from minmo.triton.backend import instance_device
    from minmo.triton.repository import ExportOptions, export_repository

    export_repository(CFG, tmp_path, ExportOptions(kind="gpu", dtype="bfloat16"), ["llm"])
    pbtxt = (tmp_path / "llm" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU" in pbtxt and 'key: "minmo_dtype" value: { string_value: "bfloat16" }' in pbtxt
    assert instance_device({"model_instance_kind": "GPU", "model_instance_device_id": "1"}) == "cuda:1"
    assert instance_device({"model_instance_kind": "CPU", "model_instance_device_id": "0"}) == "cpu"
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_repository(CFG, tmp_path, ExportOptions(dtype="fp8"), ["llm"])



def test_nanos_hifigan_vocoder_stays_float32_and_speaks_in_bfloat16() -> None:
    model = MODEL_FACTORIES["token2wav"](load_config("nano"), None, CPU_BF16)
    assert model.token2wav.flow.embedding.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.token2wav.hift.parameters()} == {torch.float32}
    outputs, _ = model.execute({"tokens": torch.arange(30), "flush": torch.tensor([True])}, None)
    assert outputs["pcm"].dtype == torch.float32 and outputs["pcm"].numel() > 0
