"""The duplex's bounded outbox of ServerEvents.

A client that reads slower than its audio is produced fills its own outbox only: after `slow_client_s` without
room its session fails with RESOURCE_EXHAUSTED "the client reads too slowly ..." (`minmo.serving.backpressure`),
while other sessions keep their pace.
"""

from __future__ import annotations

import grpc

from minmo.duplex.limits import ProtocolError
from minmo.serving.backpressure import Outbox, slow_reader_message
from minmo.v1 import conversation_pb2

OUTBOX_EVENTS = 64  # ServerEvents queued for one client (audio chunks are most of them)
CLIENT = "the client"


def client_outbox(slow_client_s: float) -> Outbox[conversation_pb2.ServerEvent]:
    def slow_client() -> ProtocolError:
        message = slow_reader_message(CLIENT, f"{OUTBOX_EVENTS} queued events", slow_client_s)
        return ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    return Outbox(OUTBOX_EVENTS, slow_client_s, slow_client)
