"""TritonRuntime against a real tritonserver (the nvidia-pytriton wheel's) serving the exported `tiny` repository.

Every model's Triton outputs must equal the in-process runtime's for the same requests, because model.py builds
the same `RuntimeModel` with the same seeded weights. One server (`conftest.triton_server`) serves every Triton test.
"""

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch
import tritonclient.grpc.aio

from minmo.model.config import MinMoConfig, load_config
from minmo.runtime.base import InvalidInput, ModelRuntime, Sequence, TensorMap, UnknownSequence
from minmo.runtime.factory import build_local_runtime
from minmo.runtime.llm_model import (
    OP_APPEND_AUDIO,
    OP_BEGIN_RESPONSE,
    OP_DROP_RESPONSE,
    OP_GENERATE,
    OP_START,
    ROLE_USER,
    history_tensors,
    text_tensor,
)
from minmo.runtime.triton import TritonRuntime
from minmo.triton.server import LocalTritonServer

CHUNK_SAMPLES = 5120  # 0.32 s at 16 kHz
CONCURRENT_REQUESTS = 24


@pytest.fixture(scope="module")
def cfg() -> MinMoConfig:
    return load_config("tiny")


@pytest.fixture(scope="module")
def local(cfg: MinMoConfig) -> ModelRuntime:
    return build_local_runtime(cfg, ["encoder", "token2wav", "voice_lm", "llm"])


@pytest.fixture
async def triton(triton_server: LocalTritonServer) -> AsyncIterator[TritonRuntime]:
    runtime = TritonRuntime(triton_server.url)
    try:
        yield runtime
    finally:
        await runtime.close()


def assert_same(triton_out: TensorMap, local_out: TensorMap) -> None:
    """Equal outputs: float tensors within 1e-5 (the two processes may run kernels on different thread counts,
    so only summation order differs), everything else exactly."""
    assert sorted(triton_out) == sorted(local_out)
    for name, expected in local_out.items():
        actual = triton_out[name]
        assert actual.dtype == expected.dtype, name
        if expected.is_floating_point():
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(actual, expected), name


async def test_encoder_stream_keeps_its_state_in_triton_and_matches_local(
    triton: TritonRuntime, local: ModelRuntime
) -> None:
    pcm = torch.randn(3 * CHUNK_SAMPLES + 700, generator=torch.Generator().manual_seed(1)) * 0.1
    chunks = list(pcm.split(CHUNK_SAMPLES))
    for index, chunk in enumerate(chunks):
        inputs = {"pcm": chunk, "flush": torch.tensor([index == len(chunks) - 1])}
        sequence = Sequence("encoder-stream", start=index == 0)
        triton_out = await triton.infer("encoder", inputs, sequence)
        assert sorted(triton_out) == ["embeddings"], "only the new embeddings come back: the state stays in Triton"
        assert_same(triton_out, await local.infer("encoder", inputs, sequence))
    assert triton_out["embeddings"].shape[0] > 0
    await triton.end_sequence("encoder", "encoder-stream")
    await local.end_sequence("encoder", "encoder-stream")
    with pytest.raises(UnknownSequence):
        await triton.infer("encoder", {"pcm": chunks[0]}, Sequence("encoder-stream"))


async def test_token2wav_turn_keeps_its_state_in_triton_and_matches_local(
    triton: TritonRuntime, local: ModelRuntime, cfg: MinMoConfig
) -> None:
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.flow.speech_vocab, (40,), generator=generator)
    voice = {  # the turn's prompt voice, with its first chunk only (VocodeConfig.voice)
        "speaker": torch.randn(cfg.flow.spk_embed_dim, generator=generator),
        "prompt_tokens": torch.randint(0, cfg.flow.speech_vocab, (10,), generator=generator),
        "prompt_mel": torch.randn(cfg.flow.mel_bins, 10 * cfg.flow.token_mel_ratio, generator=generator),
    }
    for index, chunk in enumerate(tokens.split(15)):
        inputs = {"tokens": chunk, "flush": torch.tensor([index == 2]), **(voice if index == 0 else {})}
        sequence = Sequence("vocoder-turn", start=index == 0, end=index == 2)
        assert_same(await triton.infer("token2wav", inputs, sequence), await local.infer("token2wav", inputs, sequence))
    with pytest.raises(UnknownSequence):  # the flush ended the turn's sequence
        await triton.infer("token2wav", {"tokens": tokens[:15]}, Sequence("vocoder-turn"))


def _voice_requests(cfg: MinMoConfig) -> list[TensorMap]:
    generator = torch.Generator().manual_seed(3)
    dim = cfg.output_projector.llm_dim
    settings = {
        "temperature": torch.tensor([0.8]),
        "top_p": torch.tensor([0.9]),
        "top_k": torch.tensor([20]),
        "seed": torch.tensor([1234]),
        "instruction": text_tensor("Please speak very fast."),
    }
    requests = []
    for count, text_end in ((7, False), (8, False), (2, True)):
        positions = {"hidden": torch.randn(count, dim, generator=generator)}
        positions["token_embedding"] = torch.randn(count, dim, generator=generator)
        requests.append({**positions, "text_end": torch.tensor([text_end]), **(settings if not requests else {})})
    return requests


async def test_voice_lm_sequence_matches_local(triton: TritonRuntime, local: ModelRuntime, cfg: MinMoConfig) -> None:
    requests = _voice_requests(cfg)
    for index, inputs in enumerate(requests):
        sequence = Sequence("voice-turn", start=index == 0, end=index == len(requests) - 1)
        assert_same(await triton.infer("voice_lm", inputs, sequence), await local.infer("voice_lm", inputs, sequence))
    assert (await triton.infer("voice_lm", requests[0], Sequence("voice-2", start=True)))["speech_tokens"].numel() == 15
    await triton.end_sequence("voice_lm", "voice-2")


async def _llm_turn(runtime: ModelRuntime, sequence_id: str, cfg: MinMoConfig) -> list[TensorMap]:
    """Start with history, append audio, begin a response, stream its tokens; every response in order."""
    embeddings = torch.randn(6, cfg.llm.hidden_size, generator=torch.Generator().manual_seed(4))
    history = history_tensors([(ROLE_USER, "hello there")])
    requests = [
        {"op": torch.tensor([OP_START]), "system_prompt": text_tensor("You are MinMo."), **history},
        {"op": torch.tensor([OP_APPEND_AUDIO]), "embeddings": embeddings},
        {"op": torch.tensor([OP_BEGIN_RESPONSE]), "instruction": text_tensor("Speak softly")},
    ]
    responses = []
    for index, inputs in enumerate(requests):
        responses.append(await runtime.infer("llm", inputs, Sequence(sequence_id, start=index == 0)))
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([6])}
    responses += [outputs async for outputs in runtime.infer_stream("llm", generate, Sequence(sequence_id))]
    await runtime.end_sequence("llm", sequence_id)
    return responses


async def test_llm_start_audio_generate_stream_matches_local(
    triton: TritonRuntime, local: ModelRuntime, cfg: MinMoConfig
) -> None:
    triton_responses = await _llm_turn(triton, "llm-turn", cfg)
    local_responses = await _llm_turn(local, "llm-turn", cfg)
    assert len(triton_responses) == len(local_responses) > 3
    for triton_out, local_out in zip(triton_responses, local_responses, strict=True):
        assert_same(triton_out, local_out)
    assert bool(triton_responses[-1]["finished"])


async def test_closing_a_generate_stream_cancels_it_and_keeps_the_sequence(
    triton: TritonRuntime, cfg: MinMoConfig
) -> None:
    sequence_id = "llm-cancel"
    await triton.infer("llm", {"op": torch.tensor([OP_START])}, Sequence(sequence_id, start=True))
    await triton.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence_id))
    generate = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([cfg.max_response_tokens])}
    stream = triton.infer_stream("llm", generate, Sequence(sequence_id))
    first = await anext(stream)
    await stream.aclose()
    assert not bool(first["finished"])
    dropped = await triton.infer("llm", {"op": torch.tensor([OP_DROP_RESPONSE])}, Sequence(sequence_id))
    assert bool(dropped["dropped"]), "the cancelled response stays open on the live sequence, so it can be dropped"
    await triton.end_sequence("llm", sequence_id)


async def test_concurrent_sequences_are_batched(triton: TritonRuntime, triton_server: LocalTritonServer) -> None:
    pcm = torch.zeros(CHUNK_SAMPLES)
    streams = [Sequence(f"batched-{index}", start=True, end=True) for index in range(CONCURRENT_REQUESTS)]
    await asyncio.gather(*(triton.infer("encoder", {"pcm": pcm}, stream) for stream in streams))
    async with tritonclient.grpc.aio.InferenceServerClient(triton_server.url) as client:
        stats = await client.get_inference_statistics("encoder", as_json=True)
    batch_sizes = {int(entry["batch_size"]) for entry in stats["model_stats"][0]["batch_stats"]}
    assert max(batch_sizes) > 1, f"executed batch sizes {sorted(batch_sizes)}"


async def test_sequence_end_frees_the_state(triton: TritonRuntime, cfg: MinMoConfig) -> None:
    first, second, _ = _voice_requests(cfg)
    await triton.infer("voice_lm", first, Sequence("ended", start=True))
    await triton.end_sequence("voice_lm", "ended")
    with pytest.raises(UnknownSequence):
        await triton.infer("voice_lm", second, Sequence("ended"))
    await triton.end_sequence("voice_lm", "ended")  # idempotent
    await triton.infer("voice_lm", first, Sequence("ended-by-flag", start=True, end=True))
    with pytest.raises(UnknownSequence):
        await triton.infer("voice_lm", second, Sequence("ended-by-flag"))


async def test_bad_input_gives_a_clear_error(triton: TritonRuntime, cfg: MinMoConfig) -> None:
    bad_tokens = torch.tensor([0, cfg.flow.speech_vocab + 5])
    with pytest.raises(InvalidInput, match="speech token ids must be in"):
        await triton.infer("token2wav", {"tokens": bad_tokens}, Sequence("bad-turn", start=True, end=True))
    with pytest.raises(InvalidInput, match="pcm"):
        await triton.infer("encoder", {"pcm": torch.zeros(10, dtype=torch.int64)}, Sequence("bad-stream", start=True))
    await triton.end_sequence("encoder", "bad-stream")
    await triton.infer("llm", {"op": torch.tensor([OP_START])}, Sequence("bad", start=True))
    await triton.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence("bad"))
    with pytest.raises(InvalidInput, match="missing input 'max_tokens'"):
        await anext(triton.infer_stream("llm", {"op": torch.tensor([OP_GENERATE])}, Sequence("bad")))
    await triton.end_sequence("llm", "bad")


async def _executions_batched(server: LocalTritonServer, model: str) -> int:
    """How many of the model's `execute` calls so far got more than one request."""
    async with tritonclient.grpc.aio.InferenceServerClient(server.url) as client:
        stats = await client.get_inference_statistics(model, as_json=True)
    batches = stats["model_stats"][0]["batch_stats"]
    return sum(int(entry["compute_infer"]["count"]) for entry in batches if int(entry["batch_size"]) > 1)


async def test_concurrent_streams_at_different_positions_run_batched_and_match_local(
    triton: TritonRuntime, local: ModelRuntime, triton_server: LocalTritonServer, cfg: MinMoConfig
) -> None:
    """Encoder streams and token2wav turns at different points, their chunks sent at once: the requests one
    `execute` gets run as one batched forward (`execute_batch`), each answering as the local runtime does alone; a
    bad request among them gets its own error."""
    generator = torch.Generator().manual_seed(5)
    audio = [0.1 * torch.randn(CHUNK_SAMPLES * (2 + head), generator=generator) for head in range(3)]
    turns = [torch.randint(0, cfg.flow.speech_vocab, (15 * (2 + head),), generator=generator) for head in range(3)]
    before = {model: await _executions_batched(triton_server, model) for model in ("encoder", "token2wav")}

    async def both(runtime: ModelRuntime, model: str, inputs: TensorMap, sequence: Sequence) -> list[TensorMap]:
        return [await runtime.infer(model, inputs, sequence), await local.infer(model, inputs, sequence)]

    for head in range(3):  # stream i starts i chunks ahead, alone
        for step in range(head):
            for model, inputs in (("encoder", {"pcm": audio[head].split(CHUNK_SAMPLES)[step]}),
                                  ("token2wav", {"tokens": turns[head].split(15)[step]})):  # fmt: skip
                sequence = Sequence(f"{model}-ahead-{head}", start=step == 0)
                assert_same(*await both(triton, model, inputs, sequence))
    for step in range(2):  # then every stream's next chunk at once, and a bad request with them
        calls = []
        for head in range(3):
            sequence = Sequence(f"encoder-ahead-{head}", start=head + step == 0, end=step == 1)
            calls.append(("encoder", {"pcm": audio[head].split(CHUNK_SAMPLES)[head + step]}, sequence))
            sequence = Sequence(f"token2wav-ahead-{head}", start=head + step == 0, end=step == 1)
            calls.append(("token2wav", {"tokens": turns[head].split(15)[head + step]}, sequence))
        bad = triton.infer("token2wav", {"tokens": torch.tensor([-3])}, Sequence(f"bad-{step}", start=True, end=True))
        results = await asyncio.gather(bad, *(triton.infer(*call) for call in calls), return_exceptions=True)
        assert isinstance(results[0], InvalidInput), results[0]
        for call, triton_out in zip(calls, results[1:], strict=True):
            assert not isinstance(triton_out, BaseException), triton_out
            assert_same(triton_out, await local.infer(*call))
    for head in range(3):
        await local.end_sequence("encoder", f"encoder-ahead-{head}")
        await local.end_sequence("token2wav", f"token2wav-ahead-{head}")
    for model in ("encoder", "token2wav"):
        executions = await _executions_batched(triton_server, model)
        assert executions > before[model], f"no {model} execute got several requests"
