"""Every failure a client can see is a documented status code with a sentence a person understands.

`StatusGuard` is the server interceptor every service runs behind (ServiceHost installs it):
- a request message that does not parse is INVALID_ARGUMENT (grpc's own answer would be INTERNAL);
- an exception a handler did not turn into a status is mapped by `status_for`: a failed downstream call
  becomes UNAVAILABLE (or RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED when the peer said so), the session
  store UNAVAILABLE, anything else UNAVAILABLE with an incident id that is logged with the traceback;
- a handler that aborted with INTERNAL or UNKNOWN is answered UNAVAILABLE instead.
So UNKNOWN and INTERNAL never reach a client, and internal text (exception reprs, peer addresses, core
messages) stays in the logs. The codes clients can get are listed in the README ("Status codes").
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Codes a downstream service may answer that keep their meaning for the caller; any other becomes UNAVAILABLE.
PASSED_THROUGH = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "a service this request needs is at capacity; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "a service this request needs did not answer in time; retry",
}
HIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class Unparseable:
    """What a guarded deserializer returns for bytes that are not the expected message."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


class RequestRejected(Exception):
    """Raised by a guarded request stream for a message that did not parse; carries its status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_for(error: BaseException, what: str = "the service") -> tuple[grpc.StatusCode, str]:
    """The documented status and a human sentence for a failure no handler turned into one."""
    code = getattr(error, "code", None)
    if isinstance(code, grpc.StatusCode) and code not in HIDDEN and code != grpc.StatusCode.OK:
        return code, str(getattr(error, "message", None) or getattr(error, "details", None) or error)
    if isinstance(error, grpc.aio.AioRpcError):
        downstream = error.code()
        return downstream if downstream in PASSED_THROUGH else grpc.StatusCode.UNAVAILABLE, PASSED_THROUGH.get(
            downstream, "a service this request needs is unavailable; retry"
        )
    if isinstance(error, RedisError):
        return grpc.StatusCode.UNAVAILABLE, "the session store is unavailable; retry shortly"
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed unexpectedly (incident %s)", what, incident, exc_info=error)
    return grpc.StatusCode.UNAVAILABLE, f"{what} failed unexpectedly (incident {incident}); retry"


def guarded_deserializer(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None
    message_type = getattr(getattr(deserialize, "__self__", None), "__name__", "the request message")

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception:
            return Unparseable(message_type)

    return parse


def _rejected(item: Unparseable) -> RequestRejected:
    return RequestRejected(grpc.StatusCode.INVALID_ARGUMENT, f"could not parse a request as {item.message_type}")


async def _guarded_requests(requests: AsyncIterator) -> AsyncIterator:
    async for item in requests:
        if isinstance(item, Unparseable):
            raise _rejected(item)
        yield item


class StatusGuard(grpc.aio.ServerInterceptor):
    """Maps every failure to a documented status (module docstring); wraps the handler's behaviour, so stream
    handlers are covered too."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], object],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind, factory in HANDLER_FACTORIES.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None and _is_async(behaviour):
                streaming_request = kind.startswith("stream")
                return factory(
                    self._wrap(behaviour, streaming_request),
                    guarded_deserializer(handler.request_deserializer),
                    handler.response_serializer,
                )
        return handler

    def _wrap(self, behaviour: Callable, streaming_request: bool) -> Callable:
        what = self.service_name

        def prepared(request):
            if streaming_request:
                return _guarded_requests(request)
            if isinstance(request, Unparseable):
                raise _rejected(request)
            return request

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request, context: grpc.aio.ServicerContext):
                try:
                    async with contextlib.aclosing(behaviour(prepared(request), context)) as responses:
                        async for response in responses:  # closed with this one: its `finally` runs now
                            yield response
                except BaseException as error:
                    await _answer(error, context, what)

            return streaming

        async def unary(request, context: grpc.aio.ServicerContext):
            try:
                return await behaviour(prepared(request), context)
            except BaseException as error:
                await _answer(error, context, what)

        return unary


async def _answer(error: BaseException, context: grpc.aio.ServicerContext, what: str) -> None:
    """Re-raise what is already a proper ending; abort with a documented status otherwise. GeneratorExit is grpc
    closing a stream handler whose client went away: there is no one to answer, and it is no failure."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt | SystemExit):
        raise error
    if isinstance(error, grpc.aio.BaseError) and not isinstance(error, grpc.aio.AbortError):
        raise error  # the call itself broke (server stopping, client gone): there is no one to answer
    if isinstance(error, grpc.aio.AbortError):
        if context.code() in HIDDEN:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(f"{what} failed unexpectedly; retry")
        raise error
    code, message = status_for(error, what)
    await context.abort(code, message)


def _is_async(behaviour: Callable) -> bool:
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


HANDLER_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
