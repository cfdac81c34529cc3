"""One turn is one trace across the five services; a failed hop's span says so."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import StatusCode
from stack.test_conversation import _config, _events_until, _is_latency, _text

from minmo.audio.synthetic import utterance
from minmo.client.chat import ChatRequest, run_chat
from minmo.client.wav import InputAudio
from minmo.telemetry import inject
from minmo.v1 import common_pb2, conversation_pb2, vocoder_pb2, vocoder_pb2_grpc

from .conftest import wait_for_spans

SERVICES = {"minmo-duplex", "minmo-encoder", "minmo-llm", "minmo-voicelm", "minmo-vocoder"}
SPOKEN_TURN = {
    "duplex.turn",
    "encoder.utterance",
    "llm.audio",
    "duplex.response",
    "llm.generate",
    "voicelm.synthesize",
    "vocoder.vocode",
}


def _by_name(spans: list[ReadableSpan], trace_id: int) -> dict[str, ReadableSpan]:
    in_trace = [span for span in spans if span.context.trace_id == trace_id]
    names = [span.name for span in in_trace]
    assert len(names) == len(set(names)), f"one span per hop in a turn, got {sorted(names)}"
    return {span.name: span for span in in_trace}


def _service(span: ReadableSpan) -> str:
    return span.resource.attributes["service.name"]


async def test_a_spoken_turn_is_one_trace_through_the_five_services(spans, full_stack):
    events: list[conversation_pb2.ServerEvent] = []
    request = ChatRequest(audio=InputAudio(utterance(seed=1), 16000), realtime=False, timeout_s=120)
    result = await run_chat(full_stack.address("duplex"), request, events.append)
    assert result.problems() == []
    [report] = [event.latency_report for event in events if event.HasField("latency_report")]
    finished = await wait_for_spans(spans, SPOKEN_TURN)

    [turn] = [span for span in finished if span.name == "duplex.turn"]
    hops = _by_name(finished, turn.context.trace_id)
    assert set(hops) == SPOKEN_TURN
    assert {_service(span) for span in hops.values()} == SERVICES
    assert report.trace_id == trace.format_trace_id(turn.context.trace_id)
    assert turn.parent is None, "the turn is the root of its trace"
    response = hops["duplex.response"]
    parents = {name: span.parent.span_id for name, span in hops.items() if span.parent is not None}
    assert parents == {
        "encoder.utterance": turn.context.span_id,
        "llm.audio": turn.context.span_id,
        "duplex.response": turn.context.span_id,
        "llm.generate": response.context.span_id,
        "voicelm.synthesize": response.context.span_id,
        "vocoder.vocode": response.context.span_id,
    }
    session_ids = {span.attributes["minmo.session_id"] for span in hops.values()}
    assert len(session_ids) == 1 and session_ids != {""}
    assert hops["llm.generate"].attributes["minmo.turn_id"] == report.turn_id
    assert hops["encoder.utterance"].attributes["minmo.turn_id"] == turn.attributes["minmo.turn_id"]
    assert turn.attributes["minmo.first_audio_ms"] == report.first_audio_ms
    assert hops["llm.generate"].attributes["minmo.first_token_ms"] > 0
    assert hops["voicelm.synthesize"].attributes["minmo.first_tokens_ms"] > 0
    vocode = hops["vocoder.vocode"].attributes
    assert vocode["minmo.chunks"] >= 1 and vocode["minmo.rtf"] > 0 and vocode["minmo.first_chunk_ms"] > 0
    assert all(span.status.status_code != StatusCode.ERROR for span in hops.values())


async def test_a_typed_turn_continues_the_clients_trace(spans, full_stack):
    client_span = TracerProvider().get_tracer("client").start_span("client turn")
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config(text_only=True))
    await call.read()
    text = conversation_pb2.TextInput(text="hello there", trace_context=inject(client_span))
    await call.write(conversation_pb2.ClientEvent(text_input=text))
    await _events_until(call, _is_latency)
    call.cancel()

    finished = await wait_for_spans(spans, {"duplex.turn", "llm.append_turn", "llm.generate"})
    hops = _by_name(finished, client_span.get_span_context().trace_id)
    assert hops["duplex.turn"].parent.span_id == client_span.get_span_context().span_id
    assert hops["llm.append_turn"].parent.span_id == hops["duplex.turn"].context.span_id
    assert hops["llm.generate"].parent.span_id == hops["duplex.response"].context.span_id


async def test_a_bad_request_marks_the_hops_span_error(spans, full_stack):
    client_span = TracerProvider().get_tracer("client").start_span("client turn")
    async with grpc.aio.insecure_channel(full_stack.address("vocoder")) as channel:
        call = vocoder_pb2_grpc.VocoderStub(channel).Vocode()
        config = vocoder_pb2.VocodeConfig(session_id="s", turn_id="t", trace_context=inject(client_span))
        await call.write(vocoder_pb2.VocodeRequest(config=config))
        out_of_order = common_pb2.SpeechTokens(ids=[1, 2, 3], first_index=7)
        await call.write(vocoder_pb2.VocodeRequest(speech_tokens=out_of_order))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [vocode] = await wait_for_spans(spans, {"vocoder.vocode"})
    assert vocode.parent.span_id == client_span.get_span_context().span_id
    assert vocode.status.status_code == StatusCode.ERROR
    assert vocode.status.description.startswith("INVALID_ARGUMENT: speech tokens out of order")
    assert vocode.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_losing_the_vocoder_mid_session_marks_the_turn_error(spans, full_stack):
    _, stub = full_stack.conversation()
    call = stub.Converse()
    await call.write(_config())
    await call.read()
    await full_stack.hosts["vocoder"][0].stop()
    await call.write(_text("are you there?"))
    events = await _events_until(call, _is_latency)
    call.cancel()
    assert any(event.HasField("error") for event in events)

    finished = await wait_for_spans(spans, {"duplex.turn", "duplex.response"})
    [turn] = [span for span in finished if span.name == "duplex.turn"]
    hops = _by_name(finished, turn.context.trace_id)
    for name in ("duplex.turn", "duplex.response"):
        assert hops[name].status.status_code == StatusCode.ERROR, name
        assert hops[name].attributes["minmo.error_code"] == "UNAVAILABLE"
