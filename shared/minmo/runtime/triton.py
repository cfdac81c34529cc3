"""`ModelRuntime` on NVIDIA Triton over gRPC: the model names, tensor names and dtypes of `LocalRuntime`.

Every streaming model (encoder, token2wav, llm, voice_lm) is stateful and decoupled in our repository
(`minmo.triton.repository`), so each call on a sequence is one short ModelStreamInfer: `infer` takes its single
response, `infer_stream` yields responses as they arrive, and closing the iterator early cancels the call, which
the model sees through `is_cancelled()`. A model outside `stateful_models` (none of ours) would take one unary
ModelInfer per call.

Requests are tritonclient's generated protobuf messages sent on a `grpc.aio` channel, not `tritonclient.grpc.aio`
calls: that client cannot ask for the empty final response (its `triton_` parameters are reserved), and without
it a stream cannot know its last response until another one comes. Responses are decoded by tritonclient's
`InferResult`. Triton adds a batch dimension of 1 to every tensor; it is added and stripped here.

Errors: the model's `InvalidInput` and `UnknownSequence` come back as themselves (model.py tags the message with
the class), and so does Triton's own rejection of a request on a sequence it does not know. Other request errors
that Triton reports (shape or dtype against config.pbtxt) are `InvalidInput`; the rest is `TritonRequestError`.

`steady` (a reply's steady work after its first audio) is not sent: Triton's sequence batcher runs a
sequence's requests in order and has no priority levels, so Triton orders the work by its own scheduler.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import torch
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from minmo.runtime.base import InvalidInput, ModelRuntime, Sequence, TensorMap, UnknownSequence
from minmo.triton.spec import STATEFUL_MODELS, STREAM_PARAMETER, TRITON_DTYPES

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a request carries one chunk (states stay in Triton): ample room
READY_POLL_S = 0.2
FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
UNKNOWN_SEQUENCE_MARK = "must specify the START flag"  # Triton's words for a request on a sequence it does not know
INTERNAL_TAG = "InternalError: "


class TritonRequestError(RuntimeError):
    """Triton failed a request for a reason other than its inputs (model crashed, server unavailable, ...)."""


def correlation_id(sequence_id: str) -> int:
    """The CORRID of a caller's string id: 63 bits of BLAKE2b, non-zero (gRPC carries it as int64; 0 is "none").

    Triton's string correlation ids break once requests are batched, hence the hash; two live ids collide with
    probability ~n²/2⁶⁴.
    """
    digest = int.from_bytes(hashlib.blake2b(sequence_id.encode(), digest_size=8).digest(), "big") >> 1
    return digest or 1


class TritonRuntime(ModelRuntime):
    def __init__(self, url: str, stateful_models: frozenset[str] = STATEFUL_MODELS) -> None:
        self.url = url
        self.stateful_models = stateful_models
        limits = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(url, options=limits)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: bool = False
    ) -> TensorMap:
        if model not in self.stateful_models:
            return await self._unary(model, inputs)
        responses = [outputs async for outputs in self._stream(model, inputs, self._require(model, sequence), False)]
        if len(responses) != 1:
            raise TritonRequestError(f"model {model!r} sent {len(responses)} responses to a single-response request")
        return responses[0]

    async def infer_stream(
        self, model: str, inputs: TensorMap, sequence: Sequence | None = None, steady: Callable[[], bool] | None = None
    ) -> AsyncIterator[TensorMap]:
        if model not in self.stateful_models:
            yield await self._unary(model, inputs)
            return
        async for outputs in self._stream(model, inputs, self._require(model, sequence), True):
            yield outputs

    async def end_sequence(self, model: str, sequence_id: str) -> None:
        """An END request with no inputs: the model drops the state and Triton the sequence. Triton rejects it for
        a sequence it does not know (never started, ended, idled out) — already the wanted outcome."""
        try:
            async for _ in self._stream(model, {}, Sequence(sequence_id, end=True), False):
                pass
        except UnknownSequence:
            pass

    async def wait_ready(self, models: list[str], timeout_s: float) -> None:
        """Wait until Triton reports every model in `models` ready (a service may start before its Triton)."""
        deadline = time.monotonic() + timeout_s
        waiting = list(models)
        while waiting:
            try:
                waiting = [m for m in waiting if not (await self._stub.ModelReady(_ready_request(m))).ready]
            except grpc.aio.AioRpcError as error:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Triton at {self.url} unreachable: {error.details()}") from error
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"Triton at {self.url}: models {waiting} not ready within {timeout_s:.0f} s")
            if waiting:
                await asyncio.sleep(READY_POLL_S)

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, model: str, inputs: TensorMap) -> TensorMap:
        try:
            response = await self._stub.ModelInfer(_request(model, inputs))
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(model, error) from None
        return _outputs(response)

    async def _stream(
        self, model: str, inputs: TensorMap, sequence: Sequence, stream: bool
    ) -> AsyncIterator[TensorMap]:
        call = self._stub.ModelStreamInfer(_once(_request(model, inputs, sequence, stream)))
        try:
            async for response in call:
                if response.error_message:
                    raise _request_error(response.error_message)
                result = response.infer_response
                final = FINAL_RESPONSE in result.parameters and result.parameters[FINAL_RESPONSE].bool_param
                if result.outputs or not final:
                    yield _outputs(result)
                if final:
                    return
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(model, error) from None
        finally:
            call.cancel()  # a no-op after the final response; otherwise the model stops at its next is_cancelled()

    @staticmethod
    def _require(model: str, sequence: Sequence | None) -> Sequence:
        if sequence is None:
            raise ValueError(f"model {model!r} is stateful: requests need a sequence")
        return sequence


def _request(
    model: str, inputs: TensorMap, sequence: Sequence | None = None, stream: bool = False
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, tensor in inputs.items():
        if tensor.dtype not in TRITON_DTYPES:
            raise InvalidInput(
                f"input {name!r} has dtype {tensor.dtype}; the models take {sorted(map(str, TRITON_DTYPES))}"
            )
        array = tensor.detach().cpu().contiguous().numpy()
        request.inputs.add(name=name, datatype=TRITON_DTYPES[tensor.dtype], shape=[1, *array.shape])
        request.raw_input_contents.append(array.tobytes())
    if sequence is not None:
        request.parameters["sequence_id"].int64_param = correlation_id(sequence.id)
        request.parameters["sequence_start"].bool_param = sequence.start
        request.parameters["sequence_end"].bool_param = sequence.end
        request.parameters[EMPTY_FINAL_RESPONSE].bool_param = True
        request.parameters[STREAM_PARAMETER].bool_param = stream
    return request


def _once(request: service_pb2.ModelInferRequest) -> Iterator[service_pb2.ModelInferRequest]:
    yield request


def _ready_request(model: str) -> service_pb2.ModelReadyRequest:
    return service_pb2.ModelReadyRequest(name=model)


def _outputs(response: service_pb2.ModelInferResponse) -> TensorMap:
    result = InferResult(response)
    return {output.name: torch.from_numpy(result.as_numpy(output.name)[0].copy()) for output in response.outputs}


def _rpc_error(model: str, error: grpc.aio.AioRpcError) -> Exception:
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return _request_error(error.details() or "")
    return TritonRequestError(f"Triton at model {model!r}: {error.code().name}: {error.details()}")


def _request_error(message: str) -> Exception:
    """The exception a request's error message stands for (see the module docstring)."""
    for error_type in (InvalidInput, UnknownSequence):
        tag = f"{error_type.__name__}: "
        if tag in message:
            return error_type(message.split(tag, 1)[1])
    if UNKNOWN_SEQUENCE_MARK in message:
        return UnknownSequence(message)
    if message.startswith(INTERNAL_TAG):
        return TritonRequestError(message)
    return InvalidInput(message)
