"""The llm (Reasoner) service over real gRPC on loopback: it equals the in-process Dialogue, cancels within a
token, rebuilds context from history, refuses bad input with clear statuses, and frees a session's KV cache.

Tolerance 1e-4 on hidden states: the service and the reference build the same context in different chunks,
so only the summation order inside matmul / SDPA kernels differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from minmo.api.tensors import tensor_from_proto, tensor_to_proto
from minmo.model.build import build_component
from minmo.model.config import load_config
from minmo.model.detokenizer import IncrementalDetokenizer
from minmo.model.dialogue import TRANSCRIBE_INSTRUCTION, Dialogue, DialogueState
from minmo.model.tokenizer import ByteTokenizer, load_tokenizer
from minmo.runtime.factory import build_local_runtime
from minmo.services.llm.main import LlmSettings, start
from minmo.services.llm.servicer import QUEUED_RESPONSES, predictor_is_trained
from minmo.serving.settings import ServerSettings
from minmo.v1 import common_pb2, llm_pb2, llm_pb2_grpc

ATOL = 1e-4
TOKENS = 8
LONG = 2000  # a response cap no test waits for: only a working cancel ends such a response early
SYSTEM = "You are MinMo."
HISTORY = [("user", "Hi!"), ("assistant", "Hello, how can I help?")]
ROLES = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}
CFG = load_config("tiny")


def _settings(max_sessions: int = 4) -> LlmSettings:
    server = ServerSettings(port=0, max_sessions=max_sessions, model_config="tiny", grace_s=1.0)
    return LlmSettings(server=server, checkpoint=None, max_response_tokens=0)


@pytest.fixture(scope="module")
def dialogue() -> Dialogue:
    return Dialogue(build_component(CFG, "llm"), build_component(CFG, "duplex_predictor"), load_tokenizer(CFG.llm))


@pytest.fixture
async def llm_service(request):
    runtime = build_local_runtime(CFG, ["llm"])
    host = await start(getattr(request, "param", None) or _settings(), runtime)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield llm_pb2_grpc.ReasonerStub(channel), runtime, channel
    finally:
        await channel.close()
        await host.stop()


def _audio(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(frames, CFG.llm.hidden_size, generator=torch.Generator().manual_seed(seed))  # (T, D)


def _config(history: list[tuple[str, str]] = (), **fields) -> llm_pb2.LlmRequest:
    turns = [llm_pb2.HistoryTurn(role=ROLES[role], text=text) for role, text in history]
    return llm_pb2.LlmRequest(
        config=llm_pb2.LlmSessionConfig(session_id="s1", system_prompt=SYSTEM, history=turns, **fields)
    )


def _audio_input(embeddings: torch.Tensor) -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(audio_input=llm_pb2.AudioInput(embeddings=tensor_to_proto(embeddings), turn_id="u1"))


def _generate(turn_id: str, max_tokens: int = TOKENS, instruction: str = "") -> llm_pb2.LlmRequest:
    request = llm_pb2.GenerateResponse(turn_id=turn_id, max_tokens=max_tokens, instruction=instruction)
    return llm_pb2.LlmRequest(generate_response=request)


def _cancel(turn_id: str) -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(cancel_generation=llm_pb2.CancelGeneration(turn_id=turn_id))


def _append(role: str, text: str) -> llm_pb2.LlmRequest:
    return llm_pb2.LlmRequest(append_turn=llm_pb2.AppendTurn(role=ROLES[role], text=text, turn_id="a"))


async def _open(stub, *requests: llm_pb2.LlmRequest):
    call = stub.Session()
    for request in requests:
        await call.write(request)
    assert (await call.read()).HasField("session_ready")
    return call


async def _response(call) -> tuple[list[llm_pb2.TextToken], llm_pb2.ResponseEnd]:
    """The next response's tokens and end (predictor signals before them are skipped)."""
    tokens = []
    while True:
        message = await call.read()
        if message.HasField("response_end"):
            return tokens, message.response_end
        if message.HasField("text_token"):
            tokens.append(message.text_token)


async def _rest(call) -> list[llm_pb2.LlmResponse]:
    """Everything until the server ends the stream."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


def _reference(dialogue: Dialogue, state: DialogueState, instruction: str = "", steps: int = TOKENS):
    state = dialogue.begin_response(state, instruction)
    steps_taken = []
    for _ in range(steps):
        step, state = dialogue.generate_step(state)
        steps_taken.append(step)
    return steps_taken


def _assert_matches(tokens: list[llm_pb2.TextToken], expected) -> None:
    assert [t.token_id for t in tokens] == [s.token_id for s in expected]
    for token, step in zip(tokens, expected, strict=True):
        torch.testing.assert_close(tensor_from_proto(token.hidden), step.hidden, atol=ATOL, rtol=0)
        torch.testing.assert_close(tensor_from_proto(token.token_embedding), step.token_embedding, atol=ATOL, rtol=0)


async def test_health_is_serving_after_start(llm_service):
    _, _, channel = llm_service
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="minmo.v1.Reasoner")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_each_audio_input_gets_one_predictor_signal(llm_service, dialogue):
    stub, _, _ = llm_service
    chunks = [_audio(3, seed) for seed in range(3)]
    call = await _open(stub, _config(), *[_audio_input(chunk) for chunk in chunks])
    await call.done_writing()
    signals = [message.predictor_signal for message in await _rest(call)]
    state = dialogue.start(SYSTEM)
    for index, (signal, chunk) in enumerate(zip(signals, chunks, strict=True)):
        probs = torch.tensor([signal.keep_listening, signal.respond, signal.stop_speaking, signal.backchannel])
        expected, state = dialogue.append_audio(state, chunk[None])
        assert signal.chunk_index == index and signal.turn_id == "u1"
        assert abs(probs.sum().item() - 1) < 1e-5
        torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)


async def test_response_equals_the_in_process_dialogue(llm_service, dialogue):
    stub, _, _ = llm_service
    chunks = [_audio(4, 10), _audio(2, 11)]
    call = await _open(stub, _config(HISTORY), *[_audio_input(chunk) for chunk in chunks])
    await call.write(_generate("r1", instruction="Speak with a tone of sadness"))
    started = time.perf_counter()
    tokens, end = await _response(call)
    elapsed = time.perf_counter() - started
    state = dialogue.start(SYSTEM, HISTORY)
    for chunk in chunks:
        _, state = dialogue.append_audio(state, chunk[None])
    expected = _reference(dialogue, state, "Speak with a tone of sadness")
    _assert_matches(tokens, expected)
    assert end.reason == llm_pb2.ResponseEnd.LENGTH and end.token_count == TOKENS
    assert end.text == dialogue.tokenizer.decode([s.token_id for s in expected]) == "".join(t.text for t in tokens)
    assert 0 < end.first_token_ms <= end.five_tokens_ms
    print(f"tiny over gRPC: {1000 * elapsed / TOKENS:.2f} ms/token, first token {end.first_token_ms:.1f} ms")
    await call.done_writing()


async def test_a_response_continued_after_its_prefix_on_a_new_stream_sends_only_the_rest(llm_service):
    """Failover: a new stream given the same context and the tokens a lost one sent continues the reply: the next
    indices, the same tokens (greedy), and a ResponseEnd that counts and decodes the whole reply."""
    stub, _, _ = llm_service
    chunks = [_audio(4, 10), _audio(2, 11)]
    lost = await _open(stub, _config(HISTORY), *[_audio_input(chunk) for chunk in chunks])
    await lost.write(_generate("r1"))
    whole, whole_end = await _response(lost)
    lost.cancel()
    cut = TOKENS // 2
    call = await _open(stub, _config(HISTORY), *[_audio_input(chunk) for chunk in chunks])
    request = _generate("r1")
    request.generate_response.prefix_token_ids.extend(token.token_id for token in whole[:cut])
    await call.write(request)
    rest, end = await _response(call)
    assert [token.index for token in rest] == list(range(cut, TOKENS))
    assert [token.token_id for token in rest] == [token.token_id for token in whole[cut:]]
    for token, expected in zip(rest, whole[cut:], strict=True):
        hidden, expected_hidden = tensor_from_proto(token.hidden), tensor_from_proto(expected.hidden)
        torch.testing.assert_close(hidden, expected_hidden, atol=ATOL, rtol=0)
    assert (end.reason, end.token_count, end.text) == (whole_end.reason, TOKENS, whole_end.text)
    await call.done_writing()


async def test_a_response_paused_after_its_first_tokens_waits_for_resume_then_equals_the_unpaused_one(
    llm_service, dialogue
):
    """Duplex's first-audio pause: pause_after_tokens tokens, then nothing (not even the transcript) until
    ResumeGeneration; the reply is the same as without a pause."""
    stub, _, _ = llm_service
    call = await _open(stub, _config(), _audio_input(_audio(5, 40)))
    request = _generate("r1")
    request.generate_response.pause_after_tokens = 3
    await call.write(request)
    first = [message for message in [await call.read() for _ in range(4)] if message.HasField("text_token")]
    assert len(first) == 3
    next_message = asyncio.ensure_future(call.read())  # not cancelled on the timeout: that would end the call
    done, _ = await asyncio.wait([next_message], timeout=0.5)
    assert not done, "paused: well under PAUSE_LIMIT_S (2 s) it sends nothing"
    await call.write(llm_pb2.LlmRequest(resume_generation=llm_pb2.ResumeGeneration(turn_id="r1")))
    fourth = (await next_message).text_token
    rest, end = await _response(call)
    rest = [fourth, *rest]
    _, state = dialogue.append_audio(dialogue.start(SYSTEM), _audio(5, 40)[None])
    _assert_matches([m.text_token for m in first] + rest, _reference(dialogue, state))
    assert end.reason == llm_pb2.ResponseEnd.LENGTH
    await call.done_writing()


async def test_a_cancel_ends_a_paused_response_at_once(llm_service):
    stub, _, _ = llm_service
    call = await _open(stub, _config(), _audio_input(_audio(5, 40)))
    request = _generate("r1", max_tokens=LONG)
    request.generate_response.pause_after_tokens = 2
    await call.write(request)
    tokens = 0
    while tokens < 2:
        tokens += (await call.read()).HasField("text_token")
    started = time.perf_counter()
    await call.write(_cancel("r1"))
    rest, end = await _response(call)
    assert end.reason == llm_pb2.ResponseEnd.CANCELLED and not rest
    assert time.perf_counter() - started < 1.5, "the cancel, not the pause limit (2 s), ended it"
    await call.done_writing()


async def test_cancel_stops_within_a_token_and_leaves_no_trace(llm_service, dialogue):
    stub, _, _ = llm_service
    call = await _open(stub, _config(), _audio_input(_audio(5, 20)), _generate("r1", max_tokens=LONG))
    while not (await call.read()).HasField("text_token"):
        pass
    await call.write(_cancel("r1"))
    tokens, end = await _response(call)
    assert end.reason == llm_pb2.ResponseEnd.CANCELLED and end.turn_id == "r1"
    assert end.token_count == len(tokens) + 1 < LONG
    await call.write(_generate("r2"))
    tokens, end = await _response(call)
    _, state = dialogue.append_audio(dialogue.start(SYSTEM), _audio(5, 20)[None])
    # The cancelled response left only the closed user turn: the next one is the greedy answer to it.
    _assert_matches(tokens, _reference(dialogue, state))
    await call.done_writing()


async def test_cancel_after_the_end_drops_the_last_response(llm_service, dialogue):
    """Duplex's barge-in while the response's audio still plays: drop it, append the heard text instead."""
    stub, _, _ = llm_service
    call = await _open(stub, _config(), _audio_input(_audio(3, 30)), _generate("r1"))
    await _response(call)
    await call.write(_cancel("r1"))
    tokens, end = await _response(call)
    assert end.reason == llm_pb2.ResponseEnd.CANCELLED and end.turn_id == "r1" and not tokens
    for request in (_append("assistant", "Well"), _audio_input(_audio(2, 31)), _generate("r2")):
        await call.write(request)
    tokens, _ = await _response(call)
    _, state = dialogue.append_audio(dialogue.start(SYSTEM), _audio(3, 30)[None])
    state = dialogue.append_text_turn(dialogue.drop_response(dialogue.begin_response(state)), "assistant", "Well")
    _, state = dialogue.append_audio(state, _audio(2, 31)[None])
    _assert_matches(tokens, _reference(dialogue, state))
    await call.write(_cancel("r1"))  # already dropped: changes nothing, no answer
    await call.done_writing()
    rest = await _rest(call)
    assert [message.WhichOneof("response") for message in rest] == ["user_transcript"], "only r2's spoken turn"


async def test_the_spoken_turn_is_transcribed_after_its_response(llm_service, dialogue):
    stub, _, _ = llm_service
    call = await _open(stub, _config(max_response_tokens=5), _audio_input(_audio(3, 30)), _generate("r1"))
    await _response(call)
    message = await call.read()
    assert message.WhichOneof("response") == "user_transcript", "after ResponseEnd, off the reply's critical path"
    _, spoken = dialogue.append_audio(dialogue.start(SYSTEM), _audio(3, 30)[None])
    asr, ids = dialogue.begin_response(spoken, TRANSCRIBE_INSTRUCTION), []
    while len(ids) < 5:  # the session's max_response_tokens caps the transcript too
        step, asr = dialogue.generate_step(asr)
        if step.is_end:
            break
        ids.append(step.token_id)
    transcript = message.user_transcript
    assert transcript.turn_id == "u1" and transcript.text == dialogue.tokenizer.decode(ids)
    await call.done_writing()


async def test_session_ready_reports_the_prefilled_context(llm_service, dialogue):
    call = llm_service[0].Session()
    await call.write(_config(HISTORY))
    ready = (await call.read()).session_ready
    assert ready.session_id == "s1" and ready.context_tokens == dialogue.start(SYSTEM, HISTORY).position
    assert not ready.predictor_trained, "no checkpoint: duplex must fall back to VAD endpointing"
    await call.done_writing()


def test_the_predictor_is_trained_where_its_weights_load_from(tmp_path) -> None:
    tiny, nano = load_config("tiny"), load_config("nano")
    assert predictor_is_trained(None, nano), "nano's shipped checkpoint (its preset's own) has the trained predictor"
    assert not predictor_is_trained(None, tiny), "tiny has no checkpoint: random weights"
    assert not predictor_is_trained(str(tmp_path), nano), "a checkpoint without the predictor's weights"
    (tmp_path / "duplex_predictor.safetensors").write_bytes(b"")
    assert predictor_is_trained(str(tmp_path), tiny)


async def test_history_rebuilds_the_context_of_live_turns(llm_service):
    stub, _, _ = llm_service
    rebuilt = await _open(stub, _config(HISTORY), _generate("r1"))
    live = await _open(stub, _config(), *[_append(role, text) for role, text in HISTORY], _generate("r1"))
    (expected, _), (tokens, _) = await _response(rebuilt), await _response(live)
    assert [t.token_id for t in tokens] == [t.token_id for t in expected]
    for token, reference in zip(tokens, expected, strict=True):
        torch.testing.assert_close(
            tensor_from_proto(token.hidden), tensor_from_proto(reference.hidden), atol=ATOL, rtol=0
        )
    for call in (rebuilt, live):
        await call.done_writing()


async def _status_of(stub, requests: list[llm_pb2.LlmRequest]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Session(iter(requests)):
            pass
    return error.value.code(), error.value.details()


def _bad_tensor() -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype="float32", shape=[2, CFG.llm.hidden_size], data=b"\0" * 12)


def _long_prefix(tokens: int) -> llm_pb2.GenerateResponse:
    return llm_pb2.GenerateResponse(max_tokens=2 * tokens, prefix_token_ids=[1] * tokens)


@pytest.mark.parametrize(
    ("requests", "code", "hint"),
    [
        ([_audio_input(_audio(2, 0))], grpc.StatusCode.INVALID_ARGUMENT, "start with config"),
        ([_config(), _audio_input(_audio(2, 0)[:, :-1])], grpc.StatusCode.INVALID_ARGUMENT, "float32 (T, 64)"),
        ([_config(), _audio_input(_audio(2, 0).half())], grpc.StatusCode.INVALID_ARGUMENT, "float32"),
        ([_config(), _audio_input(_audio(0, 0))], grpc.StatusCode.INVALID_ARGUMENT, "no frames"),
        (
            [_config(), llm_pb2.LlmRequest(audio_input=llm_pb2.AudioInput(embeddings=_bad_tensor()))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "bytes",
        ),
        (
            [_config(), llm_pb2.LlmRequest(append_turn=llm_pb2.AppendTurn(text="x"))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "role",
        ),
        ([_config(), _generate("r1", LONG), _generate("r2")], grpc.StatusCode.FAILED_PRECONDITION, "still generating"),
        (
            [
                _config(),
                llm_pb2.LlmRequest(generate_response=llm_pb2.GenerateResponse(max_tokens=2, prefix_token_ids=[1, 2])),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "fewer than its max_tokens",
        ),
        (
            [_config(), llm_pb2.LlmRequest(generate_response=_long_prefix(5_000))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "the context has room",
        ),
        (
            [_config(), llm_pb2.LlmRequest(generate_response=llm_pb2.GenerateResponse(prefix_token_ids=[-1]))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "prefix_ids must be token ids",
        ),
        (
            [_config(), llm_pb2.LlmRequest(generate_response=llm_pb2.GenerateResponse(pause_after_tokens=-1))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "pause_after_tokens",
        ),
    ],
    ids=[
        "before-config",
        "wrong-dim",
        "wrong-dtype",
        "empty",
        "corrupt",
        "no-role",
        "generate-twice",
        "long-prefix",
        "prefix-past-the-context",
        "bad-prefix",
        "negative-pause",
    ],
)
async def test_bad_input_gets_a_clear_status(llm_service, requests, code, hint):
    actual, details = await _status_of(llm_service[0], requests)
    assert actual == code and hint in details, details


@pytest.mark.parametrize("llm_service", [_settings(max_sessions=1)], indirect=True)
async def test_session_flood_is_refused(llm_service):
    stub, _, _ = llm_service
    admitted = await _open(stub, _config())
    code, details = await _status_of(stub, [_config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 1" in details
    await admitted.write(_generate("r1", 2))
    assert len((await _response(admitted))[0]) == 2, "the admitted session keeps working"
    await admitted.done_writing()


async def test_client_cancel_ends_the_sequence(llm_service):
    stub, runtime, _ = llm_service
    call = await _open(stub, _config(), _generate("r1", LONG))
    await call.read()
    assert [key for key in runtime._states if key[0] == "llm"], "the session holds a context"
    call.cancel()
    for _ in range(100):  # the server notices the cancellation asynchronously
        await asyncio.sleep(0.02)
        if not [key for key in runtime._states if key[0] == "llm"]:
            return
    pytest.fail("the cancelled session's context was never freed")


def test_text_pieces_never_split_a_character():
    """Characters of several byte tokens ("é", "🇫") come out whole, once their last byte arrives."""
    tokenizer = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token_id) for token_id in tokenizer.encode("né🇫!")]
    assert pieces == ["n", "", "é", "", "", "", "🇫", "!"]


async def test_a_new_response_right_after_a_cancel_is_queued_not_refused(llm_service):
    """Duplex cancels a response whose speech hop failed and asks for the next one at once: the LLM must not
    answer FAILED_PRECONDITION ("... while turn ... is still generating") for the new one."""
    stub, _, _ = llm_service
    call = await _open(stub, _config(), _generate("r1", max_tokens=LONG))
    while not (await call.read()).HasField("text_token"):
        pass
    await call.write(_cancel("r1"))
    await call.write(_generate("r2"))
    _, first = await _response(call)
    assert first.turn_id == "r1" and first.reason == llm_pb2.ResponseEnd.CANCELLED
    tokens, second = await _response(call)
    assert second.turn_id == "r2" and second.reason != llm_pb2.ResponseEnd.CANCELLED and tokens
    await call.done_writing()


async def test_cancelling_a_token_stream_mid_step_stops_it_from_another_task():
    """Cancelling the task that reads a runtime token stream while a step is running (grpc cancels from its own
    task) waits out that one step and closes the generator: no "generator already executing", no more steps."""
    from minmo.runtime.base import Sequence
    from minmo.runtime.llm_model import OP_BEGIN_RESPONSE, OP_GENERATE, OP_START, text_tensor

    runtime = build_local_runtime(CFG, ["llm"])
    try:
        sequence = "cancel-test"
        start = {"op": torch.tensor([OP_START]), "system_prompt": text_tensor(SYSTEM)}
        await runtime.infer("llm", start, Sequence(sequence, start=True))
        await runtime.infer("llm", {"op": torch.tensor([OP_BEGIN_RESPONSE])}, Sequence(sequence))
        steps = 0

        async def read() -> None:
            nonlocal steps
            inputs = {"op": torch.tensor([OP_GENERATE]), "max_tokens": torch.tensor([LONG])}
            async for _ in runtime.infer_stream("llm", inputs, Sequence(sequence)):
                steps += 1

        for _ in range(5):  # each round cancels at a different point of a step
            reader = asyncio.create_task(read())
            while steps == 0:
                await asyncio.sleep(0.001)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            after_cancel = steps
            await asyncio.sleep(0.2)
            assert steps == after_cancel, "no step runs after the cancel"
            steps = 0
    finally:
        await runtime.close()


async def test_the_context_never_exceeds_the_model_limit_and_trims_oldest_turns(llm_service):
    """A history larger than the context is cut to its newest turns at start; appended turns that push it past 3/4
    of max_positions are trimmed between turns, with a ContextTrimmed, keeping the system prompt."""
    stub, _, _ = llm_service
    limit = CFG.llm.max_positions
    history = [("user" if index % 2 == 0 else "assistant", f"turn {index} " + "z" * 400) for index in range(20)]
    call = stub.Session()
    await call.write(_config(history))
    ready = (await call.read()).session_ready
    assert ready.max_context_tokens == limit and 0 < ready.dropped_history_turns < len(history)
    assert ready.context_tokens <= limit // 2
    trimmed = None
    for index in range(12):
        await call.write(_append("user", f"more {index} " + "w" * 400))
        await call.write(_generate(f"r{index}"))
        while True:
            message = await call.read()
            if message.HasField("context_trimmed"):
                trimmed = message.context_trimmed
            if message.HasField("response_end"):
                break
        if trimmed is not None:
            break
    assert trimmed is not None and trimmed.dropped_turns > 0, "3/4 of the context was passed: a trim is due"
    assert trimmed.context_tokens <= limit // 2 and trimmed.max_context_tokens == limit
    await call.write(_generate("after"))
    tokens, end = await _response(call)
    assert end.reason != llm_pb2.ResponseEnd.CANCELLED and tokens, "the trimmed context still answers"
    await call.done_writing()


async def test_a_system_prompt_over_half_the_context_is_invalid_argument(llm_service):
    stub, _, _ = llm_service
    call = stub.Session()
    await call.write(
        llm_pb2.LlmRequest(config=llm_pb2.LlmSessionConfig(session_id="s", system_prompt="p" * CFG.llm.max_positions))
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "system prompt" in error.value.details()


async def test_a_caller_that_stops_reading_fails_its_own_session_with_resource_exhausted():
    """A predictor signal answers every audio input; a caller that reads none fills its bounded queue
    (QUEUED_RESPONSES), and its session then fails with RESOURCE_EXHAUSTED and frees its context at once, while
    another session on the same replica keeps working."""
    server = ServerSettings(port=0, model_config="tiny", grace_s=1.0, slow_client_s=0.5)
    runtime = build_local_runtime(CFG, ["llm"])
    host = await start(LlmSettings(server=server, checkpoint=None, max_response_tokens=0), runtime)
    stalled_options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]  # holds few bytes
    frame = _audio_input(_audio(1, seed=0))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{host.port}", options=stalled_options) as stalled_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel,
        ):
            stalled = await _open(llm_pb2_grpc.ReasonerStub(stalled_channel), _config())
            for _ in range(QUEUED_RESPONSES + 100):
                await stalled.write(frame)
            async with asyncio.timeout(60):
                while any(key[0] == "llm" for key in runtime._states):  # ended on the server, unread
                    await asyncio.sleep(0.1)
            other = await _open(llm_pb2_grpc.ReasonerStub(channel), _config(), _generate("r2"))
            tokens, end = await _response(other)
            assert tokens and end.reason in (llm_pb2.ResponseEnd.EOS, llm_pb2.ResponseEnd.LENGTH)
            other.cancel()
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await stalled.read() is not grpc.aio.EOF:  # what was in flight, then the status
                    pass
            assert await stalled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"the caller reads too slowly: {QUEUED_RESPONSES} queued responses" in await stalled.details()
    finally:
        await host.stop()
