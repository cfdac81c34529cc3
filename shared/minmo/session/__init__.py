"""Session state in Redis: records with fenced ownership, conversation history, the embedded server."""

from minmo.session.embedded import EmbeddedRedis, connect
from minmo.session.store import (
    PermissionDenied,
    Role,
    SessionEnded,
    SessionError,
    SessionNotFound,
    SessionRecord,
    SessionState,
    SessionStore,
    StaleOwner,
    Turn,
)

__all__ = [
    "EmbeddedRedis",
    "PermissionDenied",
    "Role",
    "SessionEnded",
    "SessionError",
    "SessionNotFound",
    "SessionRecord",
    "SessionState",
    "SessionStore",
    "StaleOwner",
    "Turn",
    "connect",
]
