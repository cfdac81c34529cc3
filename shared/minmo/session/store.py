"""Session records and conversation history in Redis, with fenced ownership.

Any duplex replica may serve a session, but only one may write to it: the one that claimed it last.
`claim` checks the client's resume token and bumps the session's epoch atomically; every write carries
the epoch its writer got from `claim` and a Lua script rejects it when the stored epoch has moved on.
A replica that was partitioned away and replaced can therefore never overwrite what the new owner
wrote (fencing, rather than a lock with a timeout that a paused process can outlive).

Keys, with the session id as a Redis Cluster hash tag so a script touching both stays on one slot:
- `{prefix}:session:{<id>}` — hash: config (JSON), state, owner, epoch, timestamps, resume-token hash;
- `{prefix}:session:{<id>}:history` — list of turns (JSON), oldest first.
Every write refreshes the TTL of both, so an abandoned session disappears on its own.

A new session has epoch 0 and no owner and accepts no writes until a replica claims it.
The resume token is a random secret the client keeps; Redis stores only its SHA-256 (the token has 256
bits of entropy, so no slow KDF is needed) and `claim` compares digests in constant time.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

import redis.asyncio as redis
from redis.commands.core import AsyncScript

RESUME_TOKEN_BYTES = 32
NO_OWNER = ""


class SessionError(Exception):
    """Base of the store's errors."""


class SessionNotFound(SessionError):
    """No such session: never created, or expired."""


class PermissionDenied(SessionError):
    """The resume token does not match the session's."""


class StaleOwner(SessionError):
    """The writer's epoch is not the session's current one: another replica has claimed it since."""


class SessionEnded(SessionError):
    """The session was ended; it can be read until it expires but not claimed or written."""


class SessionState(enum.StrEnum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    RESPONDING = "responding"
    INTERRUPTED = "interrupted"
    ENDED = "ended"


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclasses.dataclass(frozen=True)
class SessionRecord:
    """A session as stored; `epoch` fences writes, timestamps are Unix seconds."""

    session_id: str
    config: dict[str, Any]
    state: SessionState
    owner: str
    epoch: int
    created_at: float
    updated_at: float


@dataclasses.dataclass(frozen=True)
class Turn:
    """One turn of the conversation. For an interrupted assistant turn `text` is what the user heard
    and `heard_ms` how much of its `audio_ms` was played; `heard_ms` is None when it played in full. A reply
    that failed midway is stored interrupted with outcome "failed", so every user turn has an answer."""

    turn_id: str
    role: Role
    text: str
    audio_ms: int
    interrupted: bool = False
    heard_ms: int | None = None
    outcome: str = "completed"  # "failed": the reply broke off (text: what was heard); older records lack it
    voice_instruction: str = ""  # user turns: the voice instruction the reply was asked to follow

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> Turn:
        fields = json.loads(data)
        return cls(**{**fields, "role": Role(fields["role"])})


# Fenced scripts: KEYS = (session hash, history list); ARGV = (epoch, ttl_s, now, ...).
# They return a status string; anything other than "OK" names the reason for refusing.
_FENCE = """
local stored = redis.call('HMGET', KEYS[1], 'epoch', 'state')
if not stored[1] then return {'NOTFOUND'} end
if stored[1] == '0' or stored[1] ~= ARGV[1] then return {'STALE'} end
if stored[2] == 'ended' then return {'ENDED'} end
local function refresh()
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
"""

_SET_STATE = _FENCE + """
redis.call('HSET', KEYS[1], 'state', ARGV[4])
refresh()
return {'OK'}
"""

_APPEND_TURN = _FENCE + """
redis.call('RPUSH', KEYS[2], ARGV[4])
refresh()
return {'OK'}
"""

# Rewrites the newest assistant turn in place; returns it, or nothing when there is no assistant turn.
_TRUNCATE = _FENCE + """
local turns = redis.call('LRANGE', KEYS[2], 0, -1)
for index = #turns, 1, -1 do
  local turn = cjson.decode(turns[index])
  if turn['role'] == 'assistant' then
    turn['text'] = ARGV[4]
    turn['heard_ms'] = tonumber(ARGV[5])
    turn['interrupted'] = true
    local encoded = cjson.encode(turn)
    redis.call('LSET', KEYS[2], index - 1, encoded)
    refresh()
    return {'OK', encoded}
  end
end
refresh()
return {'OK'}
"""

# Sets the text of the turn with id ARGV[4] (the newest one with that id); returns it, or nothing when absent.
_SET_TURN_TEXT = _FENCE + """
local turns = redis.call('LRANGE', KEYS[2], 0, -1)
for index = #turns, 1, -1 do
  local turn = cjson.decode(turns[index])
  if turn['turn_id'] == ARGV[4] then
    turn['text'] = ARGV[5]
    local encoded = cjson.encode(turn)
    redis.call('LSET', KEYS[2], index - 1, encoded)
    refresh()
    return {'OK', encoded}
  end
end
refresh()
return {'OK'}
"""

_END = _FENCE + """
redis.call('HSET', KEYS[1], 'state', 'ended', 'owner', '')
refresh()
return {'OK'}
"""

# KEYS = (session hash, history list); ARGV = (replica id, ttl_s, now). Returns the claimed record's fields,
# read in the same script so that a claim racing with this one cannot show through.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'NOTFOUND'} end
if state == 'ended' then return {'ENDED'} end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'updated_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

_REFUSALS: dict[str, type[SessionError]] = {"NOTFOUND": SessionNotFound, "STALE": StaleOwner, "ENDED": SessionEnded}


def _text(value: str | bytes) -> str:
    """Works whether the client was made with `decode_responses` or not."""
    return value.decode() if isinstance(value, bytes) else value


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Async access to session records and history; safe to share across tasks and sessions."""

    def __init__(self, redis_client: redis.Redis, ttl_s: int, key_prefix: str = "minmo") -> None:
        if ttl_s <= 0:
            raise ValueError(f"session TTL must be positive seconds, got {ttl_s}")
        self._redis = redis_client
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        self._claim = redis_client.register_script(_CLAIM)
        self._set_state = redis_client.register_script(_SET_STATE)
        self._append_turn = redis_client.register_script(_APPEND_TURN)
        self._truncate = redis_client.register_script(_TRUNCATE)
        self._set_turn_text = redis_client.register_script(_SET_TURN_TEXT)
        self._end = redis_client.register_script(_END)

    def session_key(self, session_id: str) -> str:
        return f"{self.key_prefix}:session:{{{session_id}}}"

    def history_key(self, session_id: str) -> str:
        return f"{self.session_key(session_id)}:history"

    async def create(self, config: dict[str, Any]) -> tuple[SessionRecord, str]:
        """A new, unowned session and its resume token (returned once; only its digest is stored)."""
        token = secrets.token_urlsafe(RESUME_TOKEN_BYTES)
        now = time.time()
        record = SessionRecord(uuid.uuid4().hex, config, SessionState.LISTENING, NO_OWNER, 0, now, now)
        key = self.session_key(record.session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=self._encode(record) | {"token_digest": _token_digest(token)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()
        return record, token

    async def load(self, session_id: str) -> SessionRecord | None:
        fields = await self._redis.hgetall(self.session_key(session_id))
        return self._decode(session_id, fields) if fields else None

    async def claim(self, session_id: str, resume_token: str, replica_id: str) -> SessionRecord:
        """Take ownership for `replica_id`; the returned record's epoch is the one its writes must carry."""
        stored = await self._redis.hget(self.session_key(session_id), "token_digest")
        if stored is None:
            raise SessionNotFound(session_id)
        if not hmac.compare_digest(_text(stored), _token_digest(resume_token)):
            raise PermissionDenied(f"resume token does not match session {session_id}")
        reply = await self._run(self._claim, session_id, replica_id)
        flat = reply[1]
        return self._decode(session_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    async def set_state(self, session_id: str, epoch: int, state: SessionState) -> None:
        await self._run(self._set_state, session_id, epoch, SessionState(state).value)

    async def append_turn(self, session_id: str, epoch: int, turn: Turn) -> None:
        await self._run(self._append_turn, session_id, epoch, turn.to_json())

    async def truncate_last_assistant_turn(
        self, session_id: str, epoch: int, heard_text: str, heard_ms: int
    ) -> Turn | None:
        """After a barge-in, keep only what the user heard of the newest assistant turn; None if there is none."""
        reply = await self._run(self._truncate, session_id, epoch, heard_text, int(heard_ms))
        return Turn.from_json(reply[1]) if len(reply) > 1 else None

    async def set_turn_text(self, session_id: str, epoch: int, turn_id: str, text: str) -> Turn | None:
        """Fill in a turn's text once it is known (a spoken user turn's transcript); None if no such turn."""
        reply = await self._run(self._set_turn_text, session_id, epoch, turn_id, text)
        return Turn.from_json(reply[1]) if len(reply) > 1 else None

    async def end(self, session_id: str, epoch: int) -> None:
        """Mark the session ended and release ownership; the data stays readable until the TTL runs out."""
        await self._run(self._end, session_id, epoch)

    async def history(self, session_id: str) -> list[Turn]:
        return [Turn.from_json(item) for item in await self._redis.lrange(self.history_key(session_id), 0, -1)]

    async def touch(self, session_id: str) -> bool:
        """Keep an idle session alive for another TTL; False when it no longer exists."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.expire(self.session_key(session_id), self.ttl_s)
            pipe.expire(self.history_key(session_id), self.ttl_s)
            exists, _ = await pipe.execute()
        return bool(exists)

    async def _run(self, script: AsyncScript, session_id: str, fence: str | int, *extra: str | int) -> list:
        """Run a session script with ARGV = (epoch or replica id, TTL, now, *extra); raise on its refusal."""
        keys = [self.session_key(session_id), self.history_key(session_id)]
        reply = await script(keys=keys, args=[fence, self.ttl_s, repr(time.time()), *extra])
        status = _text(reply[0])
        if status != "OK":
            raise _REFUSALS[status](f"session {session_id}: {status.lower()}")
        return reply

    @staticmethod
    def _encode(record: SessionRecord) -> dict[str, str | int]:
        return {
            "config": json.dumps(record.config),
            "state": record.state.value,
            "owner": record.owner,
            "epoch": record.epoch,
            "created_at": repr(record.created_at),
            "updated_at": repr(record.updated_at),
        }

    @staticmethod
    def _decode(session_id: str, fields: dict) -> SessionRecord:
        text = {_text(key): _text(value) for key, value in fields.items()}
        return SessionRecord(
            session_id=session_id,
            config=json.loads(text["config"]),
            state=SessionState(text["state"]),
            owner=text["owner"],
            epoch=int(text["epoch"]),
            created_at=float(text["created_at"]),
            updated_at=float(text["updated_at"]),
        )
