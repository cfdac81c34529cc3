"""Entry point of the duplex service (the front door): `minmo serve duplex`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from minmo.audio.turn_detection import TurnDetectionConfig
from minmo.audio.vad import SileroVad, StreamingVad
from minmo.duplex.conversation import DuplexPolicy, Peers
from minmo.duplex.limits import MAX_SILENCE_MS, InputLimits
from minmo.duplex.links import Replicas
from minmo.duplex.peer_health import PeerHealthWatch
from minmo.model.config import load_config
from minmo.model.interleave import first_audio_positions, first_audio_tokens
from minmo.model.voice_prompt import VoicePromptModels
from minmo.services.duplex.servicer import SERVICE_NAME, ConversationServicer, conversation_handler
from minmo.serving.auth import ApiKeys
from minmo.serving.channels import open_channel
from minmo.serving.server import ServiceHost, SessionLimiter
from minmo.serving.settings import ServerSettings, SettingsError, env_float, env_int, env_str
from minmo.serving.tls import channel_credentials
from minmo.session.embedded import connect
from minmo.session.quota import SessionQuota
from minmo.session.store import SessionStore
from minmo.telemetry import start_telemetry
from minmo.v1 import encoder_pb2_grpc, llm_pb2_grpc, vocoder_pb2_grpc, voicelm_pb2_grpc

DEFAULT_PORT = 50051
MIN_AUDIO_LEAD_MS = 1000
log = logging.getLogger("minmo.duplex")


@dataclass(frozen=True)
class DuplexSettings:
    """Peers: MINMO_ENCODER_ADDR, MINMO_LLM_ADDR, MINMO_VOICELM_ADDR, MINMO_VOCODER_ADDR (host:port, a
    comma-separated list, or dns:///name:port for a headless Service). REDIS_URL (unset: embedded Redis).
    MINMO_SESSION_TTL_S, MINMO_MAX_CHUNK_MS, MINMO_MAX_RESPONSE_TOKENS (0: the model config's),
    MINMO_TURN_TIMEOUT_S (deadline of a response's voicelm and vocoder calls), MINMO_AUDIO_LEAD_MS (how far the
    vocoder and voicelm may work ahead of the client's real-time playback; 0: no pacing, every reply made at once),
    MINMO_VAD_THRESHOLD, MINMO_SILENCE_MS, MINMO_PREFIX_PADDING_MS, MINMO_MIN_SPEECH_MS, MINMO_PREDICTOR_SILENCE_MS
    (the silence that ends a segment when the model's trained predictor decides turns). Input limits
    (characters): MINMO_MAX_TEXT_CHARS, MINMO_MAX_SYSTEM_PROMPT_CHARS, MINMO_MAX_INSTRUCTION_CHARS.
    MINMO_API_KEYS_FILE: the hashed API keys clients must present (unset: no key needed; minmo.serving.auth); each
    key's session quota holds across replicas (counted in Redis, minmo.session.quota).
    MINMO_VOICE_PROMPT_MODELS: a folder with CosyVoice 2's speech_tokenizer_v2.onnx and campplus.onnx (unset: voice
    prompts are checked and kept but do not change the voice; README "Voice control")."""

    server: ServerSettings
    encoder_addr: str
    llm_addr: str
    voicelm_addr: str
    vocoder_addr: str
    redis_url: str | None
    session_ttl_s: int
    max_chunk_ms: int
    max_response_tokens: int
    turn_timeout_s: float
    audio_lead_s: float
    turn_detection: TurnDetectionConfig
    predictor_silence_ms: float
    limits: InputLimits
    api_keys_file: str | None
    voice_prompt_models: str | None = None

    @classmethod
    def from_env(cls) -> DuplexSettings:
        server = ServerSettings.from_env(DEFAULT_PORT)
        return cls(
            server=server,
            encoder_addr=env_str("MINMO_ENCODER_ADDR", "127.0.0.1:50052"),
            llm_addr=env_str("MINMO_LLM_ADDR", "127.0.0.1:50053"),
            voicelm_addr=env_str("MINMO_VOICELM_ADDR", "127.0.0.1:50054"),
            vocoder_addr=env_str("MINMO_VOCODER_ADDR", "127.0.0.1:50055"),
            redis_url=env_str("REDIS_URL", "") or None,
            session_ttl_s=env_int("MINMO_SESSION_TTL_S", 3600),
            max_chunk_ms=env_int("MINMO_MAX_CHUNK_MS", 1000),
            max_response_tokens=env_int("MINMO_MAX_RESPONSE_TOKENS", 0)
            or load_config(server.model_config).max_response_tokens,
            turn_timeout_s=env_float("MINMO_TURN_TIMEOUT_S", 300.0),
            audio_lead_s=_audio_lead_s(env_float("MINMO_AUDIO_LEAD_MS", 3000)),
            turn_detection=TurnDetectionConfig(
                threshold=env_float("MINMO_VAD_THRESHOLD", 0.5),
                prefix_padding_ms=env_float("MINMO_PREFIX_PADDING_MS", 300),
                silence_duration_ms=env_float("MINMO_SILENCE_MS", 500),
                min_speech_duration_ms=env_float("MINMO_MIN_SPEECH_MS", 100),
            ),
            predictor_silence_ms=_predictor_silence_ms(env_float("MINMO_PREDICTOR_SILENCE_MS", 200)),
            limits=InputLimits(
                max_text_chars=env_int("MINMO_MAX_TEXT_CHARS", InputLimits.max_text_chars),
                max_system_prompt_chars=env_int("MINMO_MAX_SYSTEM_PROMPT_CHARS", InputLimits.max_system_prompt_chars),
                max_instruction_chars=env_int("MINMO_MAX_INSTRUCTION_CHARS", InputLimits.max_instruction_chars),
            ),
            api_keys_file=env_str("MINMO_API_KEYS_FILE", "") or None,
            voice_prompt_models=env_str("MINMO_VOICE_PROMPT_MODELS", "") or None,
        )


def _audio_lead_s(lead_ms: float) -> float:
    """Pacing needs room for the first audio chunk's tokens and the next chunk's compute: 0 (off) or >= 1 s."""
    if lead_ms != 0 and lead_ms < MIN_AUDIO_LEAD_MS:
        raise SettingsError(f"MINMO_AUDIO_LEAD_MS={lead_ms:g}: use 0 (no pacing) or at least {MIN_AUDIO_LEAD_MS}")
    return lead_ms / 1000


def _predictor_silence_ms(silence_ms: float) -> float:
    if not 0 <= silence_ms <= MAX_SILENCE_MS:
        raise SettingsError(f"MINMO_PREDICTOR_SILENCE_MS={silence_ms:g}: use 0 to {MAX_SILENCE_MS}")
    return silence_ms


async def start(settings: DuplexSettings, stack: contextlib.AsyncExitStack) -> ServiceHost:
    """Connect Redis and the peers, load the VAD, serve; resources close with `stack`."""
    telemetry = start_telemetry("minmo-duplex", settings.server)
    redis_client = await stack.enter_async_context(connect(settings.redis_url))
    store = SessionStore(redis_client, ttl_s=settings.session_ttl_s)
    credentials = channel_credentials(settings.server.tls)
    channels = [
        open_channel(address, settings.server.max_message_bytes, credentials)
        for address in (settings.encoder_addr, settings.llm_addr, settings.voicelm_addr, settings.vocoder_addr)
    ]
    for channel in channels:
        stack.push_async_callback(channel.close)
    limit = settings.server.max_message_bytes
    peers = Peers(
        encoder=Replicas("encoder", settings.encoder_addr, encoder_pb2_grpc.AudioEncoderStub, limit, credentials),
        llm=Replicas("llm", settings.llm_addr, llm_pb2_grpc.ReasonerStub, limit, credentials),
        voicelm=Replicas("voicelm", settings.voicelm_addr, voicelm_pb2_grpc.VoiceDecoderStub, limit, credentials),
        vocoder=Replicas("vocoder", settings.vocoder_addr, vocoder_pb2_grpc.VocoderStub, limit, credentials),
    )
    for replicas in (peers.encoder, peers.llm, peers.voicelm, peers.vocoder):
        stack.push_async_callback(replicas.close)
    model_config = load_config(settings.server.model_config)
    policy = DuplexPolicy(
        replica_id=settings.server.replica_id,
        max_chunk_ms=settings.max_chunk_ms,
        max_response_tokens=settings.max_response_tokens,
        turn_timeout_s=settings.turn_timeout_s,
        audio_lead_s=settings.audio_lead_s,
        turn_detection=settings.turn_detection,
        predictor_silence_ms=settings.predictor_silence_ms,
        limits=settings.limits,
        voice_prompt_models=VoicePromptModels(settings.voice_prompt_models) if settings.voice_prompt_models else None,
        first_audio_positions=first_audio_positions(model_config),
        first_audio_tokens=first_audio_tokens(model_config),
    )
    vad = StreamingVad(SileroVad.from_pretrained())
    limiter = SessionLimiter(settings.server.max_sessions)
    servicer = ConversationServicer(policy, peers, store, vad, limiter, telemetry, settings.server.slow_client_s)
    api_keys = ApiKeys(settings.api_keys_file, SessionQuota(redis_client)) if settings.api_keys_file else None
    host = ServiceHost(settings.server, telemetry, front_door=True, api_keys=api_keys)
    host.add_handler(conversation_handler(servicer), SERVICE_NAME, servicer)
    port = await host.start()
    names = ("encoder", "llm", "voicelm", "vocoder")
    watch = PeerHealthWatch(dict(zip(names, channels, strict=True)), host.set_serving)
    await watch.check()  # SERVING only once every peer is
    watch.start()
    host.on_stop(watch.stop)
    log.info("duplex serving on %s:%d", settings.server.host, port)
    return host


async def serve(settings: DuplexSettings) -> None:
    async with contextlib.AsyncExitStack() as stack:
        host = await start(settings, stack)
        await host.serve_until_signal()


def main() -> None:
    asyncio.run(serve(DuplexSettings.from_env()))


if __name__ == "__main__":
    main()
