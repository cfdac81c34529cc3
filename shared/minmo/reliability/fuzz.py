"""Fuzzing every RPC: hypothesis strategies built from the proto descriptors, and a runner that sends them.

Each input is one call: a short stream of request messages (often a valid first message, then anything the
schema allows: out-of-range enums, extreme numbers, NaN, long strings, nested junk) or raw bytes that may not
parse at all. The property: every call ends with a documented status (never UNKNOWN or INTERNAL) and no
process dies. `tests/stack/test_fuzz.py` runs a CI-sized sample in `make test`; `minmo fuzz` runs a big one
against the multi-process stack and prints the figures (reliability/report).

hypothesis is a development dependency (`pip install -e '.[dev]'`), imported only here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from minmo.v1 import conversation_pb2, encoder_pb2, llm_pb2, vocoder_pb2, voicelm_pb2

MAX_DEPTH = 3
MAX_TEXT = 300  # characters of a fuzzed string (long inputs are the limits' tests, not the fuzzer's)
MAX_BYTES = 400
MAX_REPEATED = 4
CALL_TIMEOUT_S = 20.0
FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Rpc:
    """One streaming RPC to fuzz: where it is served and the message it takes; `first` is a valid opening, and
    `first` then `close` a whole valid call (so every sample has calls that get past the service's checks, however
    the proto's fields shift the fuzzed draws)."""

    service: str  # the stack's service name (duplex, encoder, llm, voicelm, vocoder)
    method: str  # /package.Service/Method
    request: type[Message]
    first: Message
    close: tuple[Message, ...] = ()


RPCS = (
    Rpc(
        "duplex",
        "/minmo.v1.Conversation/Converse",
        conversation_pb2.ClientEvent,
        conversation_pb2.ClientEvent(
            session_config=conversation_pb2.SessionConfig(input_sample_rate_hz=16000, text_only=True)
        ),
    ),
    Rpc(
        "encoder",
        "/minmo.v1.AudioEncoder/Encode",
        encoder_pb2.EncodeRequest,
        encoder_pb2.EncodeRequest(config=encoder_pb2.EncodeConfig(session_id="fuzz", sample_rate_hz=16000)),
    ),
    Rpc(
        "llm",
        "/minmo.v1.Reasoner/Session",
        llm_pb2.LlmRequest,
        llm_pb2.LlmRequest(config=llm_pb2.LlmSessionConfig(session_id="fuzz")),
    ),
    Rpc(
        "voicelm",
        "/minmo.v1.VoiceDecoder/Synthesize",
        voicelm_pb2.SynthesizeRequest,
        voicelm_pb2.SynthesizeRequest(config=voicelm_pb2.SynthesizeConfig(session_id="fuzz", turn_id="t")),
        (voicelm_pb2.SynthesizeRequest(text_end=voicelm_pb2.TextEnd(total_positions=0)),),
    ),
    Rpc(
        "vocoder",
        "/minmo.v1.Vocoder/Vocode",
        vocoder_pb2.VocodeRequest,
        vocoder_pb2.VocodeRequest(
            config=vocoder_pb2.VocodeConfig(session_id="fuzz", turn_id="t", sample_rate_hz=24000)
        ),
    ),
)


def _scalar(field_descriptor: FieldDescriptor) -> st.SearchStrategy:
    kind = field_descriptor.type
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from([0, 1, -1, *INT32]), st.integers(*INT32))
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from([0, 1, -1, *INT64]), st.integers(*INT64))
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=MAX_TEXT)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=MAX_BYTES)
    if kind == FieldDescriptor.TYPE_ENUM:  # defined values and any other int32 (open enums accept them)
        defined = [value.number for value in field_descriptor.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(*INT32))
    raise ValueError(f"no strategy for field type {kind}")


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of this type the schema allows (fields set or not; one member of each oneof)."""
    cls = _message_class(descriptor)
    plain = [field for field in descriptor.fields if field.containing_oneof is None]
    oneofs = list(descriptor.oneofs)

    @st.composite
    def build(draw) -> Message:
        message = cls()
        for field_descriptor in plain:
            if draw(st.booleans()):
                _fill(draw, message, field_descriptor, depth)
        for oneof in oneofs:
            choice = draw(st.sampled_from([None, *oneof.fields]))
            if choice is not None:
                _fill(draw, message, choice, depth)
        return message

    return build()


def _fill(draw, message: Message, field_descriptor: FieldDescriptor, depth: int) -> None:
    name = field_descriptor.name
    if field_descriptor.message_type is not None and field_descriptor.message_type.GetOptions().map_entry:
        entry = field_descriptor.message_type.fields_by_name
        key_field, value_field = entry["key"], entry["value"]
        if value_field.message_type is None:
            entries = draw(st.dictionaries(_scalar(key_field), _scalar(value_field), max_size=MAX_REPEATED))
            getattr(message, name).update(entries)
        return
    if field_descriptor.message_type is not None:
        if depth >= MAX_DEPTH:
            return
        strategy = message_strategy(field_descriptor.message_type, depth + 1)
        if field_descriptor.is_repeated:
            getattr(message, name).extend(draw(st.lists(strategy, max_size=MAX_REPEATED)))
        else:
            getattr(message, name).CopyFrom(draw(strategy))
        return
    if field_descriptor.is_repeated:
        getattr(message, name).extend(draw(st.lists(_scalar(field_descriptor), max_size=MAX_REPEATED)))
    else:
        setattr(message, name, draw(_scalar(field_descriptor)))


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def call_strategy(rpc: Rpc) -> st.SearchStrategy[list[bytes]]:
    """One call's request stream, serialised: a whole valid call, a valid opening then fuzzed messages, all fuzzed
    messages, or raw bytes."""
    messages = message_strategy(rpc.request.DESCRIPTOR)
    serialised = messages.map(lambda message: message.SerializeToString())
    opening = st.just(rpc.first.SerializeToString())
    valid_call = [message.SerializeToString() for message in (rpc.first, *rpc.close)]
    return st.one_of(
        st.just(valid_call),
        st.tuples(opening, st.lists(serialised, min_size=1, max_size=3)).map(lambda pair: [pair[0], *pair[1]]),
        st.lists(serialised, min_size=1, max_size=3),
        st.lists(st.binary(max_size=MAX_BYTES), min_size=1, max_size=3),
    )


@dataclass
class FuzzTally:
    """What the fuzzed calls ended with: per RPC, per status code."""

    codes: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    forbidden: list[str] = field(default_factory=list)  # "method: CODE details" of each UNKNOWN/INTERNAL

    @property
    def inputs(self) -> int:
        return sum(sum(counter.values()) for counter in self.codes.values())

    def add(self, rpc: Rpc, code: grpc.StatusCode, details: str) -> None:
        self.codes[rpc.method][code.name] += 1
        if code in FORBIDDEN:
            self.forbidden.append(f"{rpc.method}: {code.name} {details[:200]}")


def send(channel: grpc.Channel, rpc: Rpc, requests: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """One call with these request bytes (sync client); the status it ended with."""
    call = channel.stream_stream(rpc.method, request_serializer=bytes, response_deserializer=bytes)
    responses = call(iter(requests), timeout=CALL_TIMEOUT_S)
    try:
        for _ in responses:
            pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def fuzz_rpc(
    channel_for: Callable[[str], grpc.Channel], rpc: Rpc, examples: int, tally: FuzzTally, random_seed: int = 0
) -> None:
    """Run `examples` hypothesis-generated calls of `rpc`, counting their statuses in `tally` (random_seed 0: the
    same inputs every run, as CI wants; another: a different sample)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=random_seed == 0,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(call_strategy(rpc))
    def one_call(requests: list[bytes]) -> None:
        tally.add(rpc, *send(channel_for(rpc.service), rpc, requests))

    if random_seed:
        one_call = seed(random_seed)(one_call)
    one_call()
