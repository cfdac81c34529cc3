"""Conversation servicer: the public Converse API; each stream is one `minmo.duplex.Conversation`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from minmo.audio.vad import StreamingVad
from minmo.duplex.conversation import Conversation, DuplexPolicy, Peers, ProtocolError
from minmo.serving.server import SessionLimiter
from minmo.session.store import SessionStore
from minmo.telemetry import Telemetry
from minmo.v1 import conversation_pb2

SERVICE_NAME = "minmo.v1.Conversation"


class ConversationServicer:
    def __init__(
        self,
        policy: DuplexPolicy,
        peers: Peers,
        store: SessionStore,
        vad: StreamingVad,
        limiter: SessionLimiter,
        telemetry: Telemetry,
        slow_client_s: float = 5.0,
    ) -> None:
        self.slow_client_s = slow_client_s  # MINMO_SLOW_CLIENT_S: a client that stops reading fails after this long
        self.policy = policy
        self.peers = peers
        self.store = store
        self.vad = vad
        self.limiter = limiter
        self.telemetry = telemetry

    async def Converse(
        self, request_iterator: AsyncIterator[conversation_pb2.ClientEvent | None], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[conversation_pb2.ServerEvent]:
        async with self.limiter.admit(context):
            conversation = Conversation(
                self.policy, self.peers, self.store, self.vad, self.telemetry, self.slow_client_s
            )
            try:
                async for event in conversation.run(request_iterator):
                    yield event
            except ProtocolError as error:
                await context.abort(error.code, error.message, trailing_metadata=error.trailing_metadata)


def parse_client_event(data: bytes) -> conversation_pb2.ClientEvent | None:
    """Bytes that are not a ClientEvent become None, answered with INVALID_ARGUMENT (not INTERNAL)."""
    try:
        return conversation_pb2.ClientEvent.FromString(data)
    except DecodeError:
        return None


def conversation_handler(servicer: ConversationServicer) -> grpc.GenericRpcHandler:
    """The Conversation service with a forgiving request parser (see `parse_client_event`)."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Converse": grpc.stream_stream_rpc_method_handler(
                servicer.Converse,
                request_deserializer=parse_client_event,
                response_serializer=conversation_pb2.ServerEvent.SerializeToString,
            )
        },
    )
