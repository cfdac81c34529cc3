"""StatusGuard on a stream handler that grpc closes because its client went away: the close goes through as a close,
not as a failure that logs an incident and tries to answer a call that is gone."""

from __future__ import annotations

import logging

import grpc

from minmo.serving.errors import StatusGuard


class _Context:
    """The part of grpc.aio.ServicerContext the guard may touch; records any attempt to answer."""

    def __init__(self) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return None


async def test_a_stream_closed_under_its_handler_is_no_failure(caplog):
    closed = []

    async def handler(request, context):
        try:
            yield "first"
            yield "second"
        finally:
            closed.append(True)

    streaming = StatusGuard("the test service")._wrap(handler, streaming_request=False)
    context = _Context()
    responses = streaming("request", context)
    assert await anext(responses) == "first"
    with caplog.at_level(logging.ERROR, logger="minmo.serving.errors"):
        await responses.aclose()  # what grpc does when the client cancels between two responses
    assert closed == [True] and context.aborted == []
    assert not [record for record in caplog.records if "failed unexpectedly" in record.getMessage()]
