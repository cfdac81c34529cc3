from minmo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientEvent(_message.Message):
    __slots__ = ("session_config", "resume_session", "audio_chunk", "text_input", "cancel_response", "playback_position", "end_session")
    SESSION_CONFIG_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    TEXT_INPUT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_POSITION_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    session_config: SessionConfig
    resume_session: ResumeSession
    audio_chunk: AudioChunk
    text_input: TextInput
    cancel_response: CancelResponse
    playback_position: PlaybackPosition
    end_session: EndSession
    def __init__(self, session_config: _Optional[_Union[SessionConfig, _Mapping]] = ..., resume_session: _Optional[_Union[ResumeSession, _Mapping]] = ..., audio_chunk: _Optional[_Union[AudioChunk, _Mapping]] = ..., text_input: _Optional[_Union[TextInput, _Mapping]] = ..., cancel_response: _Optional[_Union[CancelResponse, _Mapping]] = ..., playback_position: _Optional[_Union[PlaybackPosition, _Mapping]] = ..., end_session: _Optional[_Union[EndSession, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("input_sample_rate_hz", "output_sample_rate_hz", "system_prompt", "voice_instruction", "turn_detection", "text_only", "voice_prompt")
    INPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    VOICE_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TURN_DETECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_ONLY_FIELD_NUMBER: _ClassVar[int]
    VOICE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    input_sample_rate_hz: int
    output_sample_rate_hz: int
    system_prompt: str
    voice_instruction: str
    turn_detection: TurnDetection
    text_only: bool
    voice_prompt: VoicePrompt
    def __init__(self, input_sample_rate_hz: _Optional[int] = ..., output_sample_rate_hz: _Optional[int] = ..., system_prompt: _Optional[str] = ..., voice_instruction: _Optional[str] = ..., turn_detection: _Optional[_Union[TurnDetection, _Mapping]] = ..., text_only: _Optional[bool] = ..., voice_prompt: _Optional[_Union[VoicePrompt, _Mapping]] = ...) -> None: ...

class VoicePrompt(_message.Message):
    __slots__ = ("audio", "sample_rate_hz")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sample_rate_hz: int
    def __init__(self, audio: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class TurnDetection(_message.Message):
    __slots__ = ("mode", "vad_threshold", "silence_ms", "prefix_padding_ms")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[TurnDetection.Mode]
        PREDICTOR: _ClassVar[TurnDetection.Mode]
        SERVER_VAD: _ClassVar[TurnDetection.Mode]
    MODE_UNSPECIFIED: TurnDetection.Mode
    PREDICTOR: TurnDetection.Mode
    SERVER_VAD: TurnDetection.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    VAD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_PADDING_MS_FIELD_NUMBER: _ClassVar[int]
    mode: TurnDetection.Mode
    vad_threshold: float
    silence_ms: int
    prefix_padding_ms: int
    def __init__(self, mode: _Optional[_Union[TurnDetection.Mode, str]] = ..., vad_threshold: _Optional[float] = ..., silence_ms: _Optional[int] = ..., prefix_padding_ms: _Optional[int] = ...) -> None: ...

class ResumeSession(_message.Message):
    __slots__ = ("session_id", "resume_token", "input_sample_rate_hz", "output_sample_rate_hz")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    resume_token: str
    input_sample_rate_hz: int
    output_sample_rate_hz: int
    def __init__(self, session_id: _Optional[str] = ..., resume_token: _Optional[str] = ..., input_sample_rate_hz: _Optional[int] = ..., output_sample_rate_hz: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("audio",)
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    def __init__(self, audio: _Optional[bytes] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "trace_context", "voice_instruction")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    text: str
    trace_context: _containers.ScalarMap[str, str]
    voice_instruction: str
    def __init__(self, text: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., voice_instruction: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class PlaybackPosition(_message.Message):
    __slots__ = ("turn_id", "played_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYED_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    played_ms: int
    def __init__(self, turn_id: _Optional[str] = ..., played_ms: _Optional[int] = ...) -> None: ...

class EndSession(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("session_started", "turn_event", "transcript", "audio_output", "latency_report", "error", "context_trimmed")
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    TURN_EVENT_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_REPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TRIMMED_FIELD_NUMBER: _ClassVar[int]
    session_started: SessionStarted
    turn_event: TurnEvent
    transcript: Transcript
    audio_output: AudioOutput
    latency_report: LatencyReport
    error: Error
    context_trimmed: _common_pb2.ContextTrimmed
    def __init__(self, session_started: _Optional[_Union[SessionStarted, _Mapping]] = ..., turn_event: _Optional[_Union[TurnEvent, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., audio_output: _Optional[_Union[AudioOutput, _Mapping]] = ..., latency_report: _Optional[_Union[LatencyReport, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., context_trimmed: _Optional[_Union[_common_pb2.ContextTrimmed, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "resume_token", "input_format", "output_format", "resumed", "history_turns", "turn_detection")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TURNS_FIELD_NUMBER: _ClassVar[int]
    TURN_DETECTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    resume_token: str
    input_format: _common_pb2.AudioFormat
    output_format: _common_pb2.AudioFormat
    resumed: bool
    history_turns: int
    turn_detection: TurnDetection
    def __init__(self, session_id: _Optional[str] = ..., resume_token: _Optional[str] = ..., input_format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., output_format: _Optional[_Union[_common_pb2.AudioFormat, _Mapping]] = ..., resumed: _Optional[bool] = ..., history_turns: _Optional[int] = ..., turn_detection: _Optional[_Union[TurnDetection, _Mapping]] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("type", "turn_id", "input_offset_ms", "heard_ms", "heard_text", "end_reason", "error_code")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[TurnEvent.Type]
        USER_SPEECH_STARTED: _ClassVar[TurnEvent.Type]
        USER_SPEECH_STOPPED: _ClassVar[TurnEvent.Type]
        RESPONSE_STARTED: _ClassVar[TurnEvent.Type]
        RESPONSE_DONE: _ClassVar[TurnEvent.Type]
        RESPONSE_INTERRUPTED: _ClassVar[TurnEvent.Type]
        BACKCHANNEL: _ClassVar[TurnEvent.Type]
    TYPE_UNSPECIFIED: TurnEvent.Type
    USER_SPEECH_STARTED: TurnEvent.Type
    USER_SPEECH_STOPPED: TurnEvent.Type
    RESPONSE_STARTED: TurnEvent.Type
    RESPONSE_DONE: TurnEvent.Type
    RESPONSE_INTERRUPTED: TurnEvent.Type
    BACKCHANNEL: TurnEvent.Type
    class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        END_REASON_UNSPECIFIED: _ClassVar[TurnEvent.EndReason]
        COMPLETED: _ClassVar[TurnEvent.EndReason]
        MAX_TOKENS: _ClassVar[TurnEvent.EndReason]
        INTERRUPTED: _ClassVar[TurnEvent.EndReason]
        FAILED: _ClassVar[TurnEvent.EndReason]
    END_REASON_UNSPECIFIED: TurnEvent.EndReason
    COMPLETED: TurnEvent.EndReason
    MAX_TOKENS: TurnEvent.EndReason
    INTERRUPTED: TurnEvent.EndReason
    FAILED: TurnEvent.EndReason
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    HEARD_MS_FIELD_NUMBER: _ClassVar[int]
    HEARD_TEXT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    type: TurnEvent.Type
    turn_id: str
    input_offset_ms: int
    heard_ms: int
    heard_text: str
    end_reason: TurnEvent.EndReason
    error_code: str
    def __init__(self, type: _Optional[_Union[TurnEvent.Type, str]] = ..., turn_id: _Optional[str] = ..., input_offset_ms: _Optional[int] = ..., heard_ms: _Optional[int] = ..., heard_text: _Optional[str] = ..., end_reason: _Optional[_Union[TurnEvent.EndReason, str]] = ..., error_code: _Optional[str] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("turn_id", "role", "text", "is_final")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    role: _common_pb2.Role
    text: str
    is_final: bool
    def __init__(self, turn_id: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., text: _Optional[str] = ..., is_final: _Optional[bool] = ...) -> None: ...

class AudioOutput(_message.Message):
    __slots__ = ("turn_id", "audio", "sample_rate_hz", "start_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    audio: bytes
    sample_rate_hz: int
    start_ms: int
    def __init__(self, turn_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., start_ms: _Optional[int] = ...) -> None: ...

class LatencyReport(_message.Message):
    __slots__ = ("turn_id", "trace_id", "duplex_decision_ms", "encoder_ms", "llm_first_token_ms", "llm_five_tokens_ms", "voicelm_first_tokens_ms", "vocoder_first_chunk_ms", "first_audio_ms", "network_ms", "queue_ms", "hops", "failovers")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLEX_DECISION_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_MS_FIELD_NUMBER: _ClassVar[int]
    LLM_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    LLM_FIVE_TOKENS_MS_FIELD_NUMBER: _ClassVar[int]
    VOICELM_FIRST_TOKENS_MS_FIELD_NUMBER: _ClassVar[int]
    VOCODER_FIRST_CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    trace_id: str
    duplex_decision_ms: float
    encoder_ms: float
    llm_first_token_ms: float
    llm_five_tokens_ms: float
    voicelm_first_tokens_ms: float
    vocoder_first_chunk_ms: float
    first_audio_ms: float
    network_ms: float
    queue_ms: float
    hops: _containers.RepeatedCompositeFieldContainer[_common_pb2.HopLatency]
    failovers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, turn_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., duplex_decision_ms: _Optional[float] = ..., encoder_ms: _Optional[float] = ..., llm_first_token_ms: _Optional[float] = ..., llm_five_tokens_ms: _Optional[float] = ..., voicelm_first_tokens_ms: _Optional[float] = ..., vocoder_first_chunk_ms: _Optional[float] = ..., first_audio_ms: _Optional[float] = ..., network_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., hops: _Optional[_Iterable[_Union[_common_pb2.HopLatency, _Mapping]]] = ..., failovers: _Optional[_Iterable[str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retryable", "session_id", "turn_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    session_id: str
    turn_id: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., session_id: _Optional[str] = ..., turn_id: _Optional[str] = ...) -> None: ...
