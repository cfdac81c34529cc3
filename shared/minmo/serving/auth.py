"""API keys at the front door: who may open sessions, and how many at once.

A client sends its key in the call metadata, `authorization: Bearer <key>` or `x-api-key: <key>`. The
keys file (MINMO_API_KEYS_FILE, e.g. a mounted Kubernetes Secret) never holds a key itself, only its
SHA-256 (keys are random 32-byte tokens, so a fast hash is enough: there is nothing to brute-force).
One key per line, `#` starts a comment:

    # name        sha256 of the key (hex)                                            max sessions
    alice         9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   4
    revoked-bob   60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752   0

`minmo api-key NAME --sessions N` makes a key and prints the line to add. The file is re-read when it
changes. Answers: no key -> UNAUTHENTICATED; a key not in the file -> UNAUTHENTICATED; a key with 0
sessions (revoked) -> PERMISSION_DENIED; a key with all its sessions open (on any replica: they are counted in
Redis, `minmo.session.quota`) -> RESOURCE_EXHAUSTED, before any work starts; Redis unreachable -> UNAVAILABLE.
Health checks need no key (probes carry none).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import inspect
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from minmo.serving.errors import HANDLER_FACTORIES
from minmo.session.quota import QuotaUnavailable, SessionQuota

HEALTH_PREFIX = "/grpc.health.v1.Health/"
KEY_BYTES = 32


class KeysFileError(ValueError):
    """The keys file is malformed; the message names the line."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: str  # hex SHA-256 of the key
    max_sessions: int


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)  # hex: never starts with "-", so it passes as a command-line value


def parse_keys(text: str) -> dict[str, ApiKey]:
    """digest -> ApiKey from the file format in the module docstring."""
    keys: dict[str, ApiKey] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise KeysFileError(f"line {number}: expected 'name sha256-hex max-sessions', got {len(fields)} fields")
        name, digest, sessions = fields
        if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest.lower()):
            raise KeysFileError(f"line {number}: the key digest must be 64 hex characters (SHA-256)")
        if not sessions.isdigit():
            raise KeysFileError(f"line {number}: max sessions must be an integer >= 0")
        keys[digest.lower()] = ApiKey(name, digest.lower(), int(sessions))
    return keys


class ApiKeys:
    """The keys file (re-read when it changes) and the sessions each key has open on every replica (`quota`)."""

    def __init__(self, path: str, quota: SessionQuota) -> None:
        self.path = path
        self.quota = quota
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, ApiKey] = {}
        self._reload()

    def _reload(self) -> None:
        stat = os.stat(self.path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._keys = parse_keys(Path(self.path).read_text())
                self._stamp = stamp

    def lookup(self, key: str) -> ApiKey | None:
        with contextlib.suppress(OSError, KeysFileError):  # a half-written update: keep the keys we have
            self._reload()
        digest = key_digest(key)
        for known, api_key in self._keys.items():
            if hmac.compare_digest(known, digest):
                return api_key
        return None


def presented_key(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for name, value in metadata or ():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if name == "x-api-key":
            return text.strip()
        if name == "authorization" and text[:7].lower() == "bearer ":
            return text[7:].strip()
    return None


class ApiKeyAuth(grpc.aio.ServerInterceptor):
    """Checks the key of every call but health checks, and holds one of the key's session slots while the call
    runs (module docstring for the answers)."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], object],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        presented = presented_key(handler_call_details.invocation_metadata)
        api_key = self.keys.lookup(presented) if presented else None
        for kind, factory in HANDLER_FACTORIES.items():
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                wrapped = self._wrap(behaviour, presented is not None, api_key)
                return factory(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler

    def _wrap(self, behaviour: Callable, presented: bool, api_key: ApiKey | None) -> Callable:
        quota = self.keys.quota

        @contextlib.asynccontextmanager
        async def admitted(context: grpc.aio.ServicerContext):
            if not presented:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs an API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                )
            if api_key is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid")
            if api_key.max_sessions == 0:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this API key may not open sessions")
            try:
                async with quota.hold(api_key.digest, api_key.max_sessions) as held:
                    if not held:
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this API key has its maximum of {api_key.max_sessions} sessions open; end one or "
                            "retry later",
                        )
                    yield
            except QuotaUnavailable:  # raised only while taking the slot, before the call's work
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the session quota cannot be checked right now; retry shortly"
                )

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request, context: grpc.aio.ServicerContext):
                async with admitted(context):
                    async for response in behaviour(request, context):
                        yield response

            return streaming

        async def unary(request, context: grpc.aio.ServicerContext):
            async with admitted(context):
                return await behaviour(request, context)

        return unary
