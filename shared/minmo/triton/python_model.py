"""Triton python-backend model around one `minmo.runtime` model; `minmo triton export` copies it to <model>/1/model.py.

Which runtime model, its MinMo config and checkpoint come from the parameters of config.pbtxt, and the work is
`minmo.triton.backend`'s; this file only converts between Triton's request objects and named torch tensors.
Tensors cross by DLPack, never numpy: the stub is built against numpy 1 and misreads numpy 2 arrays.

Stateless models return one response per request (dynamic batching hands several requests to one `execute`).
The requests the sequence batcher hands one `execute` run as one batched forward for the models with
`execute_batch` (the encoder and token2wav: the batched steps of the local runtime's batching worker); the llm's
and voice LM's requests run one by one (their batching is per decode step, inside a request).
Stateful models are decoupled: each request gets its responses through its response sender, then the final flag
alone; the client asks for that empty final response, so streamed responses leave as soon as they exist.
Errors reach the client as "InvalidInput: <message>" or "UnknownSequence: <message>", which `TritonRuntime` turns
back into those exceptions, or "InternalError: ..." for anything else.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from minmo.runtime.base import InvalidInput, TensorMap, UnknownSequence
from minmo.triton import backend
from minmo.triton.spec import CONTROL_CORRID, CONTROL_END, CONTROL_START, STREAM_PARAMETER

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
REQUEST_ERRORS = (InvalidInput, UnknownSequence)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """Build and warm the model; a config that does not fit the model fails the load with the reason."""
        model_config = json.loads(args["model_config"])
        try:
            device = backend.instance_device(args)
            self.loaded = backend.load_model(model_config, Path(args["model_repository"]), device)
        except ValueError as error:
            raise pb_utils.TritonModelException(f"model {args['model_name']!r}: {error}") from error
        self.input_names = [tensor.name for tensor in self.loaded.spec.inputs]
        self.states = backend.SequenceStates(backend.idle_timeout_s(model_config))
        backend.warm_up(self.loaded)

    def execute(self, requests: list) -> list | None:
        if not self.loaded.spec.stateful:
            return [self._stateless(request) for request in requests]
        if hasattr(self.loaded.model, "execute_batch"):
            self._sequences(requests)
            return None
        for request in requests:
            self._sequence(request)
        return None

    def _sequences(self, requests: list) -> None:
        """The requests of a model that batches them (one response each), run as one batched forward."""
        senders = [request.get_response_sender() for request in requests]
        parsed, indices = [], []
        for index, (request, sender) in enumerate(zip(requests, senders, strict=True)):
            try:
                parsed.append(self._parse(request))
                indices.append(index)
            except Exception as error:
                sender.send(pb_utils.InferenceResponse(error=_triton_error(error)), flags=FINAL)
        try:
            results = backend.run_sequence_batch(self.loaded.model, self.states, parsed)
        except Exception as error:  # the batch failed as a whole: each of its requests hears why
            results = [error] * len(parsed)
        for index, result in zip(indices, results, strict=True):
            sender = senders[index]
            if isinstance(result, Exception):
                sender.send(pb_utils.InferenceResponse(error=_triton_error(result)), flags=FINAL)
                continue
            if result is not None:
                sender.send(pb_utils.InferenceResponse(_tensors(result)))
            sender.send(flags=FINAL)

    def _stateless(self, request) -> "pb_utils.InferenceResponse":
        try:
            outputs = backend.run_stateless(self.loaded.model, self._inputs(request))
        except Exception as error:  # one bad request must not fail the others batched with it
            return pb_utils.InferenceResponse(error=_triton_error(error))
        return pb_utils.InferenceResponse(_tensors(outputs))

    def _sequence(self, request) -> None:
        sender = request.get_response_sender()
        try:
            sequence_request = self._parse(request)
            for outputs in backend.run_sequence(self.loaded.model, self.states, sequence_request, sender.is_cancelled):
                sender.send(pb_utils.InferenceResponse(_tensors(outputs)))
        except Exception as error:  # reported on this request's stream; the instance serves on
            sender.send(pb_utils.InferenceResponse(error=_triton_error(error)), flags=FINAL)
            return
        sender.send(flags=FINAL)

    def _parse(self, request) -> backend.SequenceRequest:
        return backend.SequenceRequest(
            correlation_id=int(self._control(request, CONTROL_CORRID)),
            start=bool(self._control(request, CONTROL_START)),
            end=bool(self._control(request, CONTROL_END)),
            stream=bool(json.loads(request.parameters() or "{}").get(STREAM_PARAMETER, False)),
            inputs=self._inputs(request),
        )

    def _inputs(self, request) -> TensorMap:
        """The request's model inputs without the batch dimension, copied out of the shared-memory buffer
        (a kept state may hold on to an input, and the buffer goes with the request)."""
        inputs = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = from_dlpack(tensor.to_dlpack())[0].clone()
        return inputs

    @staticmethod
    def _control(request, name: str) -> int:
        return int(from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack()).flatten()[0])


def _tensors(outputs: TensorMap) -> list:
    return [pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor[None].contiguous())) for name, tensor in outputs.items()]


def _triton_error(error: Exception) -> "pb_utils.TritonError":
    if isinstance(error, REQUEST_ERRORS):
        return pb_utils.TritonError(f"{type(error).__name__}: {error.args[0]}", pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"InternalError: {type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)
