from minmo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LlmRequest(_message.Message):
    __slots__ = ("config", "audio_input", "generate_response", "cancel_generation", "append_turn", "resume_generation")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_INPUT_FIELD_NUMBER: _ClassVar[int]
    GENERATE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPEND_TURN_FIELD_NUMBER: _ClassVar[int]
    RESUME_GENERATION_FIELD_NUMBER: _ClassVar[int]
    config: LlmSessionConfig
    audio_input: AudioInput
    generate_response: GenerateResponse
    cancel_generation: CancelGeneration
    append_turn: AppendTurn
    resume_generation: ResumeGeneration
    def __init__(self, config: _Optional[_Union[LlmSessionConfig, _Mapping]] = ..., audio_input: _Optional[_Union[AudioInput, _Mapping]] = ..., generate_response: _Optional[_Union[GenerateResponse, _Mapping]] = ..., cancel_generation: _Optional[_Union[CancelGeneration, _Mapping]] = ..., append_turn: _Optional[_Union[AppendTurn, _Mapping]] = ..., resume_generation: _Optional[_Union[ResumeGeneration, _Mapping]] = ...) -> None: ...

class LlmSessionConfig(_message.Message):
    __slots__ = ("session_id", "system_prompt", "history", "max_response_tokens", "sampling", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    system_prompt: str
    history: _containers.RepeatedCompositeFieldContainer[HistoryTurn]
    max_response_tokens: int
    sampling: _common_pb2.SamplingParams
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., system_prompt: _Optional[str] = ..., history: _Optional[_Iterable[_Union[HistoryTurn, _Mapping]]] = ..., max_response_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HistoryTurn(_message.Message):
    __slots__ = ("role", "text")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.Role
    text: str
    def __init__(self, role: _Optional[_Union[_common_pb2.Role, str]] = ..., text: _Optional[str] = ...) -> None: ...

class AudioInput(_message.Message):
    __slots__ = ("embeddings", "start_position", "turn_id", "trace_context", "is_last_of_utterance")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    START_POSITION_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    IS_LAST_OF_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.Tensor
    start_position: int
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    is_last_of_utterance: bool
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., start_position: _Optional[int] = ..., turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., is_last_of_utterance: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("turn_id", "trace_context", "instruction", "max_tokens", "prefix_token_ids", "pause_after_tokens")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    instruction: str
    max_tokens: int
    prefix_token_ids: _containers.RepeatedScalarFieldContainer[int]
    pause_after_tokens: int
    def __init__(self, turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., instruction: _Optional[str] = ..., max_tokens: _Optional[int] = ..., prefix_token_ids: _Optional[_Iterable[int]] = ..., pause_after_tokens: _Optional[int] = ...) -> None: ...

class ResumeGeneration(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class CancelGeneration(_message.Message):
    __slots__ = ("turn_id", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AppendTurn(_message.Message):
    __slots__ = ("role", "text", "turn_id", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.Role
    text: str
    turn_id: str
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, role: _Optional[_Union[_common_pb2.Role, str]] = ..., text: _Optional[str] = ..., turn_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LlmResponse(_message.Message):
    __slots__ = ("session_ready", "predictor_signal", "text_token", "response_end", "user_transcript", "context_trimmed")
    SESSION_READY_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_END_FIELD_NUMBER: _ClassVar[int]
    USER_TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TRIMMED_FIELD_NUMBER: _ClassVar[int]
    session_ready: LlmSessionReady
    predictor_signal: PredictorSignal
    text_token: TextToken
    response_end: ResponseEnd
    user_transcript: UserTranscript
    context_trimmed: _common_pb2.ContextTrimmed
    def __init__(self, session_ready: _Optional[_Union[LlmSessionReady, _Mapping]] = ..., predictor_signal: _Optional[_Union[PredictorSignal, _Mapping]] = ..., text_token: _Optional[_Union[TextToken, _Mapping]] = ..., response_end: _Optional[_Union[ResponseEnd, _Mapping]] = ..., user_transcript: _Optional[_Union[UserTranscript, _Mapping]] = ..., context_trimmed: _Optional[_Union[_common_pb2.ContextTrimmed, _Mapping]] = ...) -> None: ...

class LlmSessionReady(_message.Message):
    __slots__ = ("session_id", "context_tokens", "predictor_trained", "compute_ms", "max_context_tokens", "dropped_history_turns")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_TRAINED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_HISTORY_TURNS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    context_tokens: int
    predictor_trained: bool
    compute_ms: float
    max_context_tokens: int
    dropped_history_turns: int
    def __init__(self, session_id: _Optional[str] = ..., context_tokens: _Optional[int] = ..., predictor_trained: _Optional[bool] = ..., compute_ms: _Optional[float] = ..., max_context_tokens: _Optional[int] = ..., dropped_history_turns: _Optional[int] = ...) -> None: ...

class PredictorSignal(_message.Message):
    __slots__ = ("turn_id", "chunk_index", "keep_listening", "respond", "stop_speaking", "backchannel", "compute_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    KEEP_LISTENING_FIELD_NUMBER: _ClassVar[int]
    RESPOND_FIELD_NUMBER: _ClassVar[int]
    STOP_SPEAKING_FIELD_NUMBER: _ClassVar[int]
    BACKCHANNEL_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    chunk_index: int
    keep_listening: float
    respond: float
    stop_speaking: float
    backchannel: float
    compute_ms: float
    def __init__(self, turn_id: _Optional[str] = ..., chunk_index: _Optional[int] = ..., keep_listening: _Optional[float] = ..., respond: _Optional[float] = ..., stop_speaking: _Optional[float] = ..., backchannel: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class TextToken(_message.Message):
    __slots__ = ("turn_id", "token_id", "text", "hidden", "token_embedding", "index")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    token_id: int
    text: str
    hidden: _common_pb2.Tensor
    token_embedding: _common_pb2.Tensor
    index: int
    def __init__(self, turn_id: _Optional[str] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ..., hidden: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., token_embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...

class ResponseEnd(_message.Message):
    __slots__ = ("turn_id", "reason", "token_count", "first_token_ms", "five_tokens_ms", "text")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[ResponseEnd.Reason]
        EOS: _ClassVar[ResponseEnd.Reason]
        LENGTH: _ClassVar[ResponseEnd.Reason]
        CANCELLED: _ClassVar[ResponseEnd.Reason]
    REASON_UNSPECIFIED: ResponseEnd.Reason
    EOS: ResponseEnd.Reason
    LENGTH: ResponseEnd.Reason
    CANCELLED: ResponseEnd.Reason
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    FIVE_TOKENS_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    reason: ResponseEnd.Reason
    token_count: int
    first_token_ms: float
    five_tokens_ms: float
    text: str
    def __init__(self, turn_id: _Optional[str] = ..., reason: _Optional[_Union[ResponseEnd.Reason, str]] = ..., token_count: _Optional[int] = ..., first_token_ms: _Optional[float] = ..., five_tokens_ms: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class UserTranscript(_message.Message):
    __slots__ = ("turn_id", "text", "compute_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    text: str
    compute_ms: float
    def __init__(self, turn_id: _Optional[str] = ..., text: _Optional[str] = ..., compute_ms: _Optional[float] = ...) -> None: ...
