from minmo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VocodeRequest(_message.Message):
    __slots__ = ("config", "speech_tokens", "flush")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SPEECH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    config: VocodeConfig
    speech_tokens: _common_pb2.SpeechTokens
    flush: Flush
    def __init__(self, config: _Optional[_Union[VocodeConfig, _Mapping]] = ..., speech_tokens: _Optional[_Union[_common_pb2.SpeechTokens, _Mapping]] = ..., flush: _Optional[_Union[Flush, _Mapping]] = ...) -> None: ...

class VocodeConfig(_message.Message):
    __slots__ = ("session_id", "turn_id", "trace_context", "sample_rate_hz", "voice", "resume_at_sample")
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
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    RESUME_AT_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    sample_rate_hz: int
    voice: VoiceConditioning
    resume_at_sample: int
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., sample_rate_hz: _Optional[int] = ..., voice: _Optional[_Union[VoiceConditioning, _Mapping]] = ..., resume_at_sample: _Optional[int] = ...) -> None: ...

class VoiceConditioning(_message.Message):
    __slots__ = ("speaker_embedding", "prompt_speech_tokens", "prompt_mel")
    SPEAKER_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SPEECH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MEL_FIELD_NUMBER: _ClassVar[int]
    speaker_embedding: _common_pb2.Tensor
    prompt_speech_tokens: _containers.RepeatedScalarFieldContainer[int]
    prompt_mel: _common_pb2.Tensor
    def __init__(self, speaker_embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., prompt_speech_tokens: _Optional[_Iterable[int]] = ..., prompt_mel: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class Flush(_message.Message):
    __slots__ = ("total_tokens",)
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    total_tokens: int
    def __init__(self, total_tokens: _Optional[int] = ...) -> None: ...

class VocodeResponse(_message.Message):
    __slots__ = ("pcm_chunk", "vocode_done")
    PCM_CHUNK_FIELD_NUMBER: _ClassVar[int]
    VOCODE_DONE_FIELD_NUMBER: _ClassVar[int]
    pcm_chunk: PcmChunk
    vocode_done: VocodeDone
    def __init__(self, pcm_chunk: _Optional[_Union[PcmChunk, _Mapping]] = ..., vocode_done: _Optional[_Union[VocodeDone, _Mapping]] = ...) -> None: ...

class PcmChunk(_message.Message):
    __slots__ = ("audio", "start_sample", "compute_ms")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    start_sample: int
    compute_ms: float
    def __init__(self, audio: _Optional[bytes] = ..., start_sample: _Optional[int] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class VocodeDone(_message.Message):
    __slots__ = ("total_samples", "first_chunk_ms", "compute_ms")
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FIRST_CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    total_samples: int
    first_chunk_ms: float
    compute_ms: float
    def __init__(self, total_samples: _Optional[int] = ..., first_chunk_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...
