from minmo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeRequest(_message.Message):
    __slots__ = ("config", "text_positions", "text_end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_END_FIELD_NUMBER: _ClassVar[int]
    config: SynthesizeConfig
    text_positions: TextPositions
    text_end: TextEnd
    def __init__(self, config: _Optional[_Union[SynthesizeConfig, _Mapping]] = ..., text_positions: _Optional[_Union[TextPositions, _Mapping]] = ..., text_end: _Optional[_Union[TextEnd, _Mapping]] = ...) -> None: ...

class SynthesizeConfig(_message.Message):
    __slots__ = ("session_id", "turn_id", "trace_context", "sampling", "voice_instruction", "prefix_speech_tokens", "audio_lead_ms")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VOICE_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SPEECH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_LEAD_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    sampling: _common_pb2.SamplingParams
    voice_instruction: str
    prefix_speech_tokens: _containers.RepeatedScalarFieldContainer[int]
    audio_lead_ms: int
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., voice_instruction: _Optional[str] = ..., prefix_speech_tokens: _Optional[_Iterable[int]] = ..., audio_lead_ms: _Optional[int] = ...) -> None: ...

class TextPositions(_message.Message):
    __slots__ = ("hidden", "token_embedding", "first_index")
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    hidden: _common_pb2.Tensor
    token_embedding: _common_pb2.Tensor
    first_index: int
    def __init__(self, hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., token_embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., first_index: _Optional[int] = ...) -> None: ...

class TextEnd(_message.Message):
    __slots__ = ("total_positions",)
    TOTAL_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    total_positions: int
    def __init__(self, total_positions: _Optional[int] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("speech_tokens", "synthesis_done")
    SPEECH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIS_DONE_FIELD_NUMBER: _ClassVar[int]
    speech_tokens: _common_pb2.SpeechTokens
    synthesis_done: SynthesisDone
    def __init__(self, speech_tokens: _Optional[_Union[_common_pb2.SpeechTokens, _Mapping]] = ..., synthesis_done: _Optional[_Union[SynthesisDone, _Mapping]] = ...) -> None: ...

class SynthesisDone(_message.Message):
    __slots__ = ("token_count", "first_tokens_ms", "compute_ms")
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKENS_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    token_count: int
    first_tokens_ms: float
    compute_ms: float
    def __init__(self, token_count: _Optional[int] = ..., first_tokens_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...
