from minmo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("config", "audio_chunk", "end_of_utterance")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_OF_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    config: EncodeConfig
    audio_chunk: EncodeAudioChunk
    end_of_utterance: EndOfUtterance
    def __init__(self, config: _Optional[_Union[EncodeConfig, _Mapping]] = ..., audio_chunk: _Optional[_Union[EncodeAudioChunk, _Mapping]] = ..., end_of_utterance: _Optional[_Union[EndOfUtterance, _Mapping]] = ...) -> None: ...

class EncodeConfig(_message.Message):
    __slots__ = ("session_id", "sample_rate_hz", "start_position")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sample_rate_hz: int
    start_position: int
    def __init__(self, session_id: _Optional[str] = ..., sample_rate_hz: _Optional[int] = ..., start_position: _Optional[int] = ...) -> None: ...

class EncodeAudioChunk(_message.Message):
    __slots__ = ("audio", "turn_id", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, audio: _Optional[bytes] = ..., turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EndOfUtterance(_message.Message):
    __slots__ = ("turn_id", "trace_context", "audio")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    audio: bytes
    def __init__(self, turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("embeddings", "flush_done")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_DONE_FIELD_NUMBER: _ClassVar[int]
    embeddings: Embeddings
    flush_done: FlushDone
    def __init__(self, embeddings: _Optional[_Union[Embeddings, _Mapping]] = ..., flush_done: _Optional[_Union[FlushDone, _Mapping]] = ...) -> None: ...

class Embeddings(_message.Message):
    __slots__ = ("embeddings", "start_position", "turn_id", "compute_ms", "queue_ms")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.Tensor
    start_position: int
    turn_id: str
    compute_ms: float
    queue_ms: float
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., start_position: _Optional[int] = ..., turn_id: _Optional[str] = ..., compute_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class FlushDone(_message.Message):
    __slots__ = ("turn_id", "end_position", "compute_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    END_POSITION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    end_position: int
    compute_ms: float
    def __init__(self, turn_id: _Optional[str] = ..., end_position: _Optional[int] = ..., compute_ms: _Optional[float] = ...) -> None: ...
