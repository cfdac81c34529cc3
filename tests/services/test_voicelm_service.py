"""The voicelm service over real gRPC on loopback: streaming == offline, 15 speech tokens per 5 text positions
as they arrive, reproducible sampling, bad input, limits, cancellation, health.

Every test also checks, on teardown, that the runtime holds no sequence state once the streams are over
(read from LocalRuntime's state table: the in-process twin of a Triton instance's sequence states).
"""

import asyncio
import itertools
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.api.speech_tokens import SPEECH_TOKENS_PER_MESSAGE
from minmo.api.tensors import tensor_to_proto
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.interleave import (
    RasSampler,
    Sampler,
    TailParts,
    greedy_sampler,
    init_schedule_state,
    synthesize_step,
)
from minmo.runtime.local import LocalRuntime
from minmo.runtime.voicelm_model import VoiceLmModel
from minmo.services.voicelm.main import VoiceLmSettings, start
from minmo.serving.settings import ServerSettings
from minmo.v1 import common_pb2, voicelm_pb2, voicelm_pb2_grpc

CFG = load_config("tiny")
LLM_DIM = CFG.output_projector.llm_dim
TEXT_LENGTH = 12  # two full blocks and a tail of 2 positions
TEXT_BLOCK, SPEECH_BLOCK = CFG.voice_token_lm.text_block, CFG.voice_token_lm.speech_block
MAX_POSITIONS = 64
GREEDY = {"temperature": 0.0}
SAMPLED = {"temperature": 1.0, "top_p": 0.8, "top_k": 25}
SPEED_HZ = 25  # speech tokens per second of audio
READ_TIMEOUT_S = 10.0  # a response that never comes fails the test instead of hanging it


def _settings(max_sessions: int = 4) -> VoiceLmSettings:
    server = ServerSettings(port=0, max_sessions=max_sessions, model_config="tiny", grace_s=1.0)
    return VoiceLmSettings(server=server, max_positions_per_message=MAX_POSITIONS, checkpoint=None)


@pytest.fixture
async def voicelm(request):
    runtime = LocalRuntime([VoiceLmModel.from_config(CFG)])
    host = await start(getattr(request, "param", None) or _settings(), runtime)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield voicelm_pb2_grpc.VoiceDecoderStub(channel), runtime, channel
        assert await _eventually_empty(runtime), "a stream left its sequence state behind"
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture(scope="module")
def offline():
    """The same components, run in-process over all positions at once: the reference the service must match."""
    projector = build_component(CFG, "output_projector")
    voice_lm = build_component(CFG, "voice_token_lm")

    def run(hidden: torch.Tensor, token_embedding: torch.Tensor, sampler: Sampler = greedy_sampler) -> list[int]:
        with torch.inference_mode():
            semantic = projector(hidden[None], token_embedding[None])  # (1, N, dim)
            tokens, state = synthesize_step(voice_lm, semantic, True, init_schedule_state(voice_lm), sampler)
        assert state.finished
        return tokens

    return run


async def _eventually_empty(runtime: LocalRuntime) -> bool:
    """The server frees a cancelled stream's state when it notices the cancellation, a moment later."""
    for _ in range(50):
        if not runtime._states:
            return True
        await asyncio.sleep(0.02)
    return False


def _llm_states(length: int = TEXT_LENGTH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(length, LLM_DIM, generator=generator), torch.randn(length, LLM_DIM, generator=generator)


def _config(**sampling) -> voicelm_pb2.SynthesizeRequest:
    return voicelm_pb2.SynthesizeRequest(
        config=voicelm_pb2.SynthesizeConfig(
            session_id="s1", turn_id="t1", sampling=common_pb2.SamplingParams(**sampling)
        )
    )


def _positions(hidden: torch.Tensor, token_embedding: torch.Tensor, first_index: int) -> voicelm_pb2.SynthesizeRequest:
    return voicelm_pb2.SynthesizeRequest(
        text_positions=voicelm_pb2.TextPositions(
            hidden=tensor_to_proto(hidden), token_embedding=tensor_to_proto(token_embedding), first_index=first_index
        )
    )


def _end(total: int) -> voicelm_pb2.SynthesizeRequest:
    return voicelm_pb2.SynthesizeRequest(text_end=voicelm_pb2.TextEnd(total_positions=total))


def _turn(hidden: torch.Tensor, token_embedding: torch.Tensor, chunk: int, **sampling) -> list:
    """A whole turn's requests, `chunk` positions per message."""
    length = hidden.shape[0]
    chunks = [_positions(hidden[i : i + chunk], token_embedding[i : i + chunk], i) for i in range(0, length, chunk)]
    return [_config(**sampling), *chunks, _end(length)]


async def _read(call) -> voicelm_pb2.SynthesizeResponse:
    return await asyncio.wait_for(call.read(), READ_TIMEOUT_S)


async def _rest_of_turn(call, received: list[int]) -> voicelm_pb2.SynthesisDone:
    """Read SpeechTokens into `received` (checking their indices) up to SynthesisDone, then the end of the stream."""
    while (response := await _read(call)).HasField("speech_tokens"):
        assert response.speech_tokens.first_index == len(received)
        received += response.speech_tokens.ids
    assert await _read(call) == grpc.aio.EOF, "the stream closes after SynthesisDone"
    return response.synthesis_done


async def _synthesize(stub, requests: list) -> list[int]:
    call = stub.Synthesize(iter(requests))
    tokens: list[int] = []
    done = await _rest_of_turn(call, tokens)
    assert done.token_count == len(tokens)
    return tokens


async def test_streamed_tokens_equal_offline_and_arrive_15_per_5_positions(voicelm, offline):
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states()
    call = stub.Synthesize()
    await call.write(_config(**GREEDY))
    streamed: list[int] = []
    for index in range(TEXT_LENGTH):
        await call.write(_positions(hidden[index : index + 1], token_embedding[index : index + 1], index))
        if (index + 1) % TEXT_BLOCK == 0:  # before TextEnd: the block must come now, not at the end
            block = (await _read(call)).speech_tokens
            assert (block.first_index, len(block.ids)) == (len(streamed), SPEECH_BLOCK)
            streamed += block.ids
    await call.write(_end(TEXT_LENGTH))
    done = await _rest_of_turn(call, streamed)
    assert streamed == offline(hidden, token_embedding)
    assert done.token_count == len(streamed) > 2 * SPEECH_BLOCK
    assert done.first_tokens_ms > 0 and done.compute_ms > 0


async def test_sampling_is_reproducible_for_a_seed_however_positions_are_chunked(voicelm, offline):
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states()
    seed = 2**63 + 12345  # above int64: the uint64 seed must survive its trip through an int64 tensor
    one_by_one = await _synthesize(stub, _turn(hidden, token_embedding, 1, seed=seed, **SAMPLED))
    in_threes = await _synthesize(stub, _turn(hidden, token_embedding, 3, seed=seed, **SAMPLED))
    other_seed = await _synthesize(stub, _turn(hidden, token_embedding, 1, seed=seed + 1, **SAMPLED))
    reference = RasSampler(top_p=0.8, top_k=25, generator=torch.Generator().manual_seed(seed))
    assert one_by_one == in_threes == offline(hidden, token_embedding, reference)
    assert one_by_one != other_seed


@pytest.mark.parametrize("from_end", [None, 20], ids=["mid-block", "mid-tail"])
async def test_a_turn_continued_after_its_prefix_tokens_gives_exactly_the_rest(voicelm, from_end):
    """Failover: a new stream given the speech tokens a lost one sent, and every text position again, sends only the
    tokens after them, numbered on, and they are the ones the lost stream would have sent (same seed); also when
    the lost stream was far into the tail (the replay does not count against a tail call's bound)."""
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states()
    whole = await _synthesize(stub, _turn(hidden, token_embedding, 2, seed=7, **SAMPLED))
    cut = SPEECH_BLOCK + 4 if from_end is None else len(whole) - from_end  # mid-block: part of a block was sent
    requests = _turn(hidden, token_embedding, 2, seed=7, **SAMPLED)
    requests[0].config.prefix_speech_tokens.extend(whole[:cut])
    call = stub.Synthesize(iter(requests))
    rest: list[int] = list(whole[:cut])  # _rest_of_turn checks first_index against what came before
    done = await _rest_of_turn(call, rest)
    assert rest == whole and done.token_count == len(whole)


def _bad_tensor() -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype="float32", shape=[1, LLM_DIM], data=b"\0" * 3)


ONE = _llm_states(1)
BAD_INPUTS = {
    "positions before config": ([_positions(*ONE, 0)], grpc.StatusCode.INVALID_ARGUMENT, "start with config"),
    "prefix token out of range": (
        [
            voicelm_pb2.SynthesizeRequest(config=voicelm_pb2.SynthesizeConfig(prefix_speech_tokens=[6561])),
            _positions(*ONE, 0),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "prefix_tokens must be speech token ids",
    ),
    "wrong rank": (
        [_config(), _positions(ONE[0][0], ONE[1][0], 0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be 2-d torch.float32",
    ),
    "half precision": (
        [_config(), _positions(ONE[0].half(), ONE[1].half(), 0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "torch.float16",
    ),
    "integer hidden": (
        [_config(), _positions(ONE[0].long(), ONE[1], 0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "torch.int64",
    ),
    "wrong width": (
        [_config(), _positions(torch.zeros(1, LLM_DIM + 1), torch.zeros(1, LLM_DIM + 1), 0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        f"(N, {LLM_DIM})",
    ),
    "length mismatch": (
        [_config(), _positions(torch.zeros(2, LLM_DIM), torch.zeros(1, LLM_DIM), 0)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "must match 'hidden'",
    ),
    "corrupt tensor": (
        [
            _config(),
            voicelm_pb2.SynthesizeRequest(
                text_positions=voicelm_pb2.TextPositions(hidden=_bad_tensor(), token_embedding=_bad_tensor())
            ),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes",
    ),
    "index gap": ([_config(), _positions(*ONE, 1)], grpc.StatusCode.INVALID_ARGUMENT, "out of order"),
    "too many positions": (
        [_config(), _positions(*_llm_states(MAX_POSITIONS + 1), 0)],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"limit of {MAX_POSITIONS}",
    ),
    "lost positions": ([_config(), _positions(*ONE, 0), _end(2)], grpc.StatusCode.INVALID_ARGUMENT, "but 1 arrived"),
    "bad sampling": ([_config(temperature=1.0, top_p=1.5)], grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    "no TextEnd": ([_config(), _positions(*ONE, 0)], grpc.StatusCode.INVALID_ARGUMENT, "before TextEnd"),
    "negative lead": (
        [voicelm_pb2.SynthesizeRequest(config=voicelm_pb2.SynthesizeConfig(audio_lead_ms=-1))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio_lead_ms must be in [0, 60000]",
    ),
    "lead past a minute": (
        [voicelm_pb2.SynthesizeRequest(config=voicelm_pb2.SynthesizeConfig(audio_lead_ms=60_001))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "audio_lead_ms must be in [0, 60000]",
    ),
}


async def _status_of(stub, requests: list) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Synthesize(iter(requests)):
            pass
    return error.value.code(), error.value.details()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_gets_a_clear_status(voicelm, case):
    requests, expected_code, expected_text = BAD_INPUTS[case]
    code, details = await _status_of(voicelm[0], requests)
    assert code == expected_code and expected_text in details, details


async def test_a_bad_stream_does_not_disturb_a_concurrent_healthy_one(voicelm, offline):
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states()
    healthy = stub.Synthesize()
    await healthy.write(_config(**GREEDY))
    await healthy.write(_positions(hidden[:TEXT_BLOCK], token_embedding[:TEXT_BLOCK], 0))
    streamed = list((await _read(healthy)).speech_tokens.ids)
    code, _details = await _status_of(stub, BAD_INPUTS["length mismatch"][0])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await healthy.write(_positions(hidden[TEXT_BLOCK:], token_embedding[TEXT_BLOCK:], TEXT_BLOCK))
    await healthy.write(_end(TEXT_LENGTH))
    await _rest_of_turn(healthy, streamed)
    assert streamed == offline(hidden, token_embedding)


@pytest.mark.parametrize("voicelm", [_settings(max_sessions=1)], indirect=True)
async def test_session_flood_is_refused_without_hurting_the_admitted_session(voicelm):
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states(TEXT_BLOCK)
    healthy = stub.Synthesize()
    await healthy.write(_config(**GREEDY))
    await healthy.write(_positions(hidden, token_embedding, 0))
    assert len((await _read(healthy)).speech_tokens.ids) == SPEECH_BLOCK
    code, details = await _status_of(stub, [_config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    await healthy.write(_end(TEXT_BLOCK))
    tokens = [0] * SPEECH_BLOCK
    assert (await _rest_of_turn(healthy, tokens)).token_count == len(tokens), "the admitted session keeps working"


async def test_client_cancel_frees_the_sequence(voicelm):
    stub, runtime, _ = voicelm
    hidden, token_embedding = _llm_states(TEXT_BLOCK)
    call = stub.Synthesize()
    await call.write(_config(**GREEDY))
    await call.write(_positions(hidden, token_embedding, 0))
    await _read(call)
    assert len(runtime._states) == 1, "the turn's state lives while the stream does"
    call.cancel()
    assert await _eventually_empty(runtime), "the cancelled turn's state was never freed"


async def test_health_is_serving_after_warm_up(voicelm):
    _, _, channel = voicelm
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "minmo.v1.VoiceDecoder"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_long_run_of_speech_tokens_travels_in_bounded_messages(voicelm, offline):
    """60 positions in one message make 180 speech tokens at once: they leave in messages the vocoder accepts."""
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states(length=60)
    sizes: list[int] = []
    tokens: list[int] = []
    async for response in stub.Synthesize(iter(_turn(hidden, token_embedding, 60, **GREEDY))):
        if response.HasField("speech_tokens"):
            assert response.speech_tokens.first_index == len(tokens)
            sizes.append(len(response.speech_tokens.ids))
            tokens += response.speech_tokens.ids
    assert len(tokens) > SPEECH_TOKENS_PER_MESSAGE and max(sizes) <= SPEECH_TOKENS_PER_MESSAGE
    assert tokens == offline(hidden, token_embedding)


async def _timed_tokens(call_requests, stub) -> list[tuple[float, list[int]]]:
    """(arrival time, ids) of every SpeechTokens message of a turn."""
    arrivals = []
    async for response in stub.Synthesize(iter(call_requests)):
        if response.HasField("speech_tokens"):
            arrivals.append((time.monotonic(), list(response.speech_tokens.ids)))
    return arrivals


async def test_the_tail_after_text_end_comes_a_chunk_per_part_equal_to_offline(voicelm, offline):
    """After TextEnd the rest of the turn is made one runtime call per token2wav chunk, each sent as made: every part
    ends where a chunk has its tokens and lookahead (the first at the chunk the two blocks left unfinished)."""
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states()
    arrivals = await _timed_tokens(_turn(hidden, token_embedding, TEXT_LENGTH, **GREEDY), stub)
    tokens = [token for _, ids in arrivals for token in ids]
    assert tokens == offline(hidden, token_embedding)
    tail = TailParts.from_config(CFG)
    ends = [sum(len(ids) for _, ids in arrivals[: index + 1]) for index in range(len(arrivals))]
    assert ends[0] == TEXT_LENGTH // TEXT_BLOCK * SPEECH_BLOCK  # the first message holds the two blocks
    assert len(ends) >= 4, "a tail long enough to need several parts"
    chunk_ready = {tail.first_audio + k * tail.chunk for k in range(len(tokens))}
    assert all(end in chunk_ready for end in ends[1:-1]), ends  # the last part ends with the turn
    assert all(later - earlier <= tail.chunk for earlier, later in itertools.pairwise(ends[1:])), ends


async def test_a_paced_tail_stays_within_the_lead_of_real_time(voicelm, offline):
    """audio_lead_ms: each part of the tail waits until what was sent is less than the lead ahead of real time."""
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states(length=3)  # no block: the whole turn is tail, 60 tokens at the bound
    lead_s = 0.5  # below the first part's audio (the first audio's tokens), so the second part waits
    requests = _turn(hidden, token_embedding, 3, **GREEDY)
    requests[0].config.audio_lead_ms = round(lead_s * 1000)
    arrivals = await _timed_tokens(requests, stub)
    assert [token for _, ids in arrivals for token in ids] == offline(hidden, token_embedding)
    first_at, sent = arrivals[0][0], 0
    for arrived, ids in arrivals:
        assert sent / SPEED_HZ - (arrived - first_at) <= lead_s + 0.05, "a part went out more than the lead ahead"
        sent += len(ids)
    assert len(arrivals) >= 2 and arrivals[-1][0] - first_at >= len(arrivals[0][1]) / SPEED_HZ - lead_s - 0.05


async def test_a_short_replys_first_tail_part_is_its_first_audio(voicelm, offline):
    """A reply too short for a voice block has no audio at TextEnd: the tail's first part is the first audio's tokens
    alone (token2wav's first chunk and lookahead), so the vocoder starts on those, not on 2 s of speech."""
    stub, _, _ = voicelm
    hidden, token_embedding = _llm_states(length=3)
    arrivals = await _timed_tokens(_turn(hidden, token_embedding, 3, **GREEDY), stub)
    assert [token for _, ids in arrivals for token in ids] == offline(hidden, token_embedding)
    tail = TailParts.from_config(CFG)
    sizes = [len(ids) for _, ids in arrivals]
    assert sizes[0] == tail.first_audio and len(sizes) >= 2 and max(sizes[1:]) <= tail.chunk, sizes
