"""Per-session streams from duplex to the encoder and the LLM, the reader tasks that route replies, and the
replica sets every stream is opened on.

A session holds one Encode stream and one Session stream (the stream is the session's affinity: the
LLM's KV cache lives as long as it). When a stream breaks (its replica is gone), the link is marked
lost; the next turn reopens it on any live replica, and the LLM context is rebuilt from the history in
Redis, so nothing the user said or heard is lost with one replica.

Admission by capacity: every replica of a hop has its own channel (`Replicas`), and a stream is opened on one
replica after another, starting at the next in turn, until one admits it. A full replica refuses at once with
RESOURCE_EXHAUSTED (an unreachable one with UNAVAILABLE) before any work is sent; only when every replica refused
does opening fail, with `ReplicasFull`, which duplex turns into RESOURCE_EXHAUSTED for its client at session start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

import grpc

from minmo.api.tensors import tensor_from_proto, tensor_to_proto
from minmo.duplex.replay import LlmTurnLog, UtteranceLog
from minmo.model.config import ENCODER_SAMPLE_RATE_HZ
from minmo.serving.channels import open_channel
from minmo.serving.server import ADMITTED_METADATA, RETRY_AFTER_METADATA
from minmo.v1 import common_pb2, encoder_pb2, llm_pb2

log = logging.getLogger(__name__)
DNS_SCHEME = "dns:///"
RETRY_NEXT = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)  # at open: try the next replica
FAILOVER_DELAYS_S = (0.0, 0.5, 1.0, 2.0)  # waits before each reopening of a stream broken mid-turn
# A hop that answers these refuses the turn itself (bad input, a deadline spent): another replica would too.
NOT_RETRIED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class LinkLost(RuntimeError):
    """A downstream stream ended unexpectedly; the message names the hop and the gRPC status."""

    code = grpc.StatusCode.UNAVAILABLE


class ReplicasFull(LinkLost):
    """Every replica of a hop refused a new stream (full or unreachable); `retry_after_ms` is the smallest hint."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int | None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


def replica_addresses(addresses: str) -> list[str]:
    """The host:port of every replica: a comma-separated list as given, or every address a name resolves to (a
    headless Kubernetes Service resolves to one address per ready pod), e.g. "dns:///minmo-llm:50053"."""
    return [address for address, _ in replica_targets(addresses)]


def replica_targets(addresses: str) -> list[tuple[str, str | None]]:
    """(host:port, name) of every replica, where name is what it was resolved from (the host its TLS certificate
    names; None when it was given as an IP)."""
    replicas = []
    for part in (part.strip() for part in addresses.split(",")):
        if not part:
            continue
        part = part.removeprefix(DNS_SCHEME).removeprefix("ipv4:")
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a replica address must be host:port (or dns:///name:port), got {part!r}")
        if _is_ip(host):
            replicas.append((f"{host}:{port}", None))
            continue
        infos = socket.getaddrinfo(host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM)
        replicas.extend(sorted({(f"{info[4][0]}:{port}", host) for info in infos}))
    if not replicas:
        raise ValueError(f"no replica addresses in {addresses!r}")
    return replicas


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Replicas:
    """All replicas of one hop, one channel each; `open` starts a stream on the first that admits it.

    Names are resolved again at every open, so replicas the autoscaler added are used from the next session on.
    """

    def __init__(
        self,
        hop: str,
        addresses: str,
        stub_type: type,
        max_message_bytes: int = 4 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS (mTLS) to the replicas, each checked against the name it was resolved from."""
        self.hop = hop
        self.addresses = addresses
        self.stub_type = stub_type
        self.max_message_bytes = max_message_bytes
        self.credentials = credentials
        self._stubs: dict[str, object] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._next = 0

    def stub(self, address: str, server_name: str | None = None):
        if address not in self._stubs:
            channel = open_channel(address, self.max_message_bytes, self.credentials, server_name)
            self._channels.append(channel)
            self._stubs[address] = self.stub_type(channel)
        return self._stubs[address]

    async def open(self, method: str, **call_options) -> grpc.aio.StreamStreamCall:
        """A `method` stream admitted by some replica, tried from the next in turn; ReplicasFull when none admits."""
        replicas = await asyncio.to_thread(replica_targets, self.addresses)
        start, self._next = self._next, self._next + 1
        refusals, hints, full = [], [], False
        for offset in range(len(replicas)):
            address, server_name = replicas[(start + offset) % len(replicas)]
            call = getattr(self.stub(address, server_name), method)(**call_options)
            metadata = await call.initial_metadata()
            if metadata is not None and ADMITTED_METADATA in dict(metadata):
                return call
            code = await call.code()
            if code not in RETRY_NEXT:
                raise LinkLost(f"{self.hop} at {address} refused the stream ({code.name}: {await call.details()})")
            refusals.append(f"{address}: {code.name}")
            full = full or code == grpc.StatusCode.RESOURCE_EXHAUSTED
            hint = dict(await call.trailing_metadata() or ()).get(RETRY_AFTER_METADATA)
            if hint is not None and hint.isdigit():
                hints.append(int(hint))
        if not full:  # nothing answered: the hop is down, not at capacity
            raise LinkLost(f"no {self.hop} replica is reachable ({'; '.join(refusals)})")
        raise ReplicasFull(
            f"every {self.hop} replica is full or unreachable ({'; '.join(refusals)})", min(hints, default=None)
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class _Link:
    """A bidi call plus the task that reads it; `lost` is set once the call ends unexpectedly.

    Writes go one at a time (`write_lock`): several tasks write the session's LLM stream (the encoder's reader its
    embeddings, the response its generate / resume / cancel, the history its turns), and a gRPC stream takes one
    pending write; grpc.aio does not guard it, and two writes started together hang the stream for good."""

    hop = ""

    def __init__(self) -> None:
        self.call: grpc.aio.StreamStreamCall | None = None
        self.reader: asyncio.Task | None = None
        self.lost: LinkLost | None = None
        self.write_lock = asyncio.Lock()

    @property
    def usable(self) -> bool:
        return self.call is not None and self.lost is None

    async def write(self, request) -> None:
        async with self.write_lock:
            if not self.usable:
                raise self.lost or LinkLost(f"{self.hop} stream is not open")
            try:
                await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                self._mark_lost(error)
                raise self.lost from error

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        self.call = None
        self.reader = None

    def _mark_lost(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = LinkLost(f"{self.hop} stream lost ({_describe(error)})")
            log.warning("%s", self.lost)


def _describe(error: BaseException) -> str:
    """One line for a log or a LinkLost: the gRPC status and its details, else the exception's repr."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


class EncoderLink(_Link):
    """The session's Encode stream; embeddings and flush markers go to the callbacks in order.

    Failover: the encoder keeps the session's caches in its replica, so when that replica dies mid-utterance the
    link reopens the stream on another replica and replays the utterance's audio from its `UtteranceLog`
    (`minmo.duplex.replay`); the embeddings the LLM already has are dropped, so the turn goes on as if nothing
    happened. Only when no replica takes the stream (FAILOVER_DELAYS_S spent) or the utterance outgrew the log is
    the link lost (and `on_lost` told).
    """

    hop = "encoder"

    def __init__(
        self,
        replicas: Replicas,
        on_embeddings: Callable[[encoder_pb2.Embeddings], Awaitable[None]],
        on_flush_done: Callable[[encoder_pb2.FlushDone], Awaitable[None]],
        on_lost: Callable[[LinkLost], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.replicas = replicas
        self.on_embeddings = on_embeddings
        self.on_flush_done = on_flush_done
        self.on_lost = on_lost  # told when the stream breaks (a turn waiting for its flush must end)
        self.position = 0  # embeddings delivered so far (the next one's position)
        self.log = UtteranceLog()
        self.failovers = 0  # streams rebuilt on another replica
        self.utterance_failovers = 0  # those that replayed an utterance in progress (a user turn's LatencyReport)
        self.session_id = ""
        self._lock = asyncio.Lock()  # one writer or one failover at a time: the log and the call change together

    async def open(self, session_id: str) -> None:
        await self.close()
        self.lost = None
        self.session_id = session_id
        self.log.restart(self.position)
        self.call = await self._start(self.position)
        self.reader = asyncio.create_task(self._read(self.call), name=f"encoder-reader-{session_id}")

    async def write(self, request: encoder_pb2.EncodeRequest) -> None:
        async with self._lock:
            if not self.usable:
                raise self.lost or LinkLost(f"{self.hop} stream is not open")
            self.log.add(request)
            try:
                await self.call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                if not await self._failover(self.call, error):
                    raise self.lost from error

    async def _start(self, position: int) -> grpc.aio.StreamStreamCall:
        call = await self.replicas.open("Encode")
        config = encoder_pb2.EncodeConfig(
            session_id=self.session_id, sample_rate_hz=ENCODER_SAMPLE_RATE_HZ, start_position=position
        )
        await call.write(encoder_pb2.EncodeRequest(config=config))
        return call

    async def _failover(self, broken: grpc.aio.StreamStreamCall, error: BaseException) -> bool:
        """Rebuild the stream on a live replica from the log (the caller holds the lock); False: the link is lost."""
        if broken is not self.call or self.lost is not None:
            return self.usable  # another task already rebuilt it (or gave up)
        retried = not isinstance(error, grpc.aio.AioRpcError) or error.code() not in NOT_RETRIED
        if not (retried and self.log.replayable):
            self._mark_lost(error)
            return False
        broken.cancel()
        for delay in FAILOVER_DELAYS_S:
            await asyncio.sleep(delay)
            try:
                call = await self._start(self.log.start_position)
                for request in self.log.requests:
                    await call.write(request)
            except (LinkLost, grpc.aio.AioRpcError, asyncio.InvalidStateError) as reopen_error:
                log.warning("session %s: encoder failover attempt failed: %s", self.session_id, _describe(reopen_error))
                continue
            self.call = call
            self.failovers += 1
            self.utterance_failovers += bool(self.log.requests)
            self.reader = asyncio.create_task(self._read(call), name=f"encoder-reader-{self.session_id}")
            log.warning(
                "session %s: encoder stream lost (%s); replayed the utterance on another replica",
                self.session_id,
                _describe(error),
            )
            return True
        self._mark_lost(error)
        return False

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.HasField("embeddings"):
                    embeddings = self._new_frames(response.embeddings)
                    if embeddings is not None:
                        self.position = embeddings.start_position + embeddings.embeddings.shape[0]
                        await self.on_embeddings(embeddings)
                else:
                    self.log.flushed(response.flush_done.end_position)
                    await self.on_flush_done(response.flush_done)
            error: BaseException = RuntimeError("the encoder closed the stream")
        except grpc.aio.AioRpcError as rpc_error:
            error = rpc_error
        async with self._lock:
            if await self._failover(call, error) or call is not self.call:
                return
        if self.on_lost is not None:
            await self.on_lost(self.lost)

    def _new_frames(self, embeddings: encoder_pb2.Embeddings) -> encoder_pb2.Embeddings | None:
        """The frames not delivered yet: after a replay the new stream recomputes the utterance from its start."""
        skip = self.position - embeddings.start_position
        if skip <= 0:
            return embeddings
        frames = tensor_from_proto(embeddings.embeddings)
        if skip >= frames.shape[0]:
            return None
        rest = encoder_pb2.Embeddings()
        rest.CopyFrom(embeddings)
        rest.embeddings.CopyFrom(tensor_to_proto(frames[skip:]))
        rest.start_position = self.position
        return rest


TURN_END_MESSAGES = 3  # besides its tokens, a turn's queue holds up to two ResponseEnds and one LinkLost


class TooManyTokens(Exception):
    """The llm broke the stream's contract: more messages for a turn than it asked for."""


class LlmLink(_Link):
    """The session's Session stream: predictor signals and user transcripts go to callbacks, text tokens to the
    turn's queue. `log` keeps the user turn's audio for a failover (`minmo.duplex.failover`)."""

    hop = "llm"

    def __init__(
        self,
        replicas: Replicas,
        on_predictor: Callable[[llm_pb2.PredictorSignal], Awaitable[None]],
        on_user_transcript: Callable[[llm_pb2.UserTranscript], Awaitable[None]],
        on_context_trimmed: Callable[[common_pb2.ContextTrimmed], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.replicas = replicas
        self.on_predictor = on_predictor
        self.on_user_transcript = on_user_transcript
        self.on_context_trimmed = on_context_trimmed
        self.turns: dict[str, asyncio.Queue] = {}
        self.ready: llm_pb2.LlmSessionReady | None = None
        self.log = LlmTurnLog()
        self.replayed_chunks = 0  # AudioInputs replayed on this stream: their predictor signals were heard before

    async def open(self, config: llm_pb2.LlmSessionConfig) -> llm_pb2.LlmSessionReady:
        """Open a stream on a replica that admits it and wait until it has the context (prompt + history)."""
        await self.close()
        self.lost = None
        self.log.restart()
        self.replayed_chunks = 0
        self.call = await self.replicas.open("Session")
        try:
            async with self.write_lock:
                await self.call.write(llm_pb2.LlmRequest(config=config))
            first = await self.call.read()
        except asyncio.CancelledError as cancelled:  # e.g. a barge-in during a failover: no half-open stream stays
            self._mark_lost(cancelled)
            raise
        except grpc.aio.AioRpcError as error:
            self._mark_lost(error)
            raise self.lost from error
        if first is grpc.aio.EOF or not first.HasField("session_ready"):
            self._mark_lost(RuntimeError("the llm did not acknowledge the session"))
            raise self.lost
        self.ready = first.session_ready
        self.reader = asyncio.create_task(self._read(), name=f"llm-reader-{config.session_id}")
        return self.ready

    async def write(self, request: llm_pb2.LlmRequest) -> None:
        self.log.record(request)
        await super().write(request)

    async def replay(self, audio: list[llm_pb2.AudioInput]) -> None:
        """A user turn's AudioInputs again, on a stream just opened (failover); their signals are not passed on."""
        self.replayed_chunks += len(audio)
        for audio_input in audio:
            await self.write(llm_pb2.LlmRequest(audio_input=audio_input))

    def subscribe(self, turn_id: str, max_tokens: int) -> asyncio.Queue:
        """The queue that will receive this turn's TextToken and ResponseEnd messages (or a LinkLost): bounded by
        what the turn may produce: its `max_tokens` tokens, its ResponseEnds (a second one when a finished response
        is dropped) and one LinkLost."""
        assert max_tokens > 0, f"a turn's token queue needs its max_tokens, got {max_tokens}"
        queue: asyncio.Queue = asyncio.Queue(maxsize=max_tokens + TURN_END_MESSAGES)
        self.turns[turn_id] = queue
        return queue

    def unsubscribe(self, turn_id: str) -> None:
        self.turns.pop(turn_id, None)

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                kind = response.WhichOneof("response")
                if kind == "predictor_signal":
                    if response.predictor_signal.chunk_index >= self.replayed_chunks:
                        await self.on_predictor(response.predictor_signal)
                elif kind == "user_transcript":
                    await self.on_user_transcript(response.user_transcript)
                elif kind == "context_trimmed" and self.on_context_trimmed is not None:
                    await self.on_context_trimmed(response.context_trimmed)
                elif kind in ("text_token", "response_end"):
                    message = getattr(response, kind)
                    queue = self.turns.get(message.turn_id)
                    if queue is not None and queue.qsize() < queue.maxsize - 1:  # the last slot is the LinkLost's
                        queue.put_nowait(message)
                    elif queue is not None:
                        raise TooManyTokens(f"the llm sent more than the {queue.maxsize} messages a turn may have")
            self._mark_lost(RuntimeError("the llm closed the stream"))
        except (grpc.aio.AioRpcError, TooManyTokens) as error:
            self._mark_lost(error)
        for queue in self.turns.values():
            queue.put_nowait(self.lost)


def history_turn(role: str, text: str) -> llm_pb2.HistoryTurn:
    proto_role = common_pb2.ROLE_USER if role == "user" else common_pb2.ROLE_ASSISTANT
    return llm_pb2.HistoryTurn(role=proto_role, text=text)
