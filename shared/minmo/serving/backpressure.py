"""Bounded queues between a session's producers and the one task that writes its gRPC stream.

A client that reads too slowly must cost only its own session. Its writer blocks on HTTP/2 flow control, so its
queue fills: the queue holds at most `capacity` messages, a producer waits at most `stall_s` for room
(backpressure on this session alone), and past that the session fails with the error `overflow` builds
(RESOURCE_EXHAUSTED "... reads too slowly ..."): its producers stop and its model streams close at once, and the
writer ends the stream with that status as soon as the client reads again (a status can only follow the messages
already in flight). Memory per session stays bounded by `capacity` messages plus the transport's window.

The writer's blocked write is never cancelled: gRPC cannot send a status after a cancelled write, and the client
would then never learn why its stream ended.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_CAPACITY = 256  # messages queued for one stream's writer
DEFAULT_STALL_S = 5.0  # how long a producer (or one write) may wait for a slow reader before the session fails


def slow_reader_message(what: str, waiting: str, stall_s: float) -> str:
    """What a slow reader is told; `waiting` says what was held up ("256 queued messages", "a message")."""
    return (
        f"{what} reads too slowly: {waiting} waited for more than {stall_s:g} s to be sent; "
        "read the stream as fast as it comes (this session was ended, others are not affected)"
    )


class Outbox(Generic[T]):
    """A bounded FIFO with an end (`close`) and a failure (`fail`): `get` returns items, then None after `close`,
    or raises the failure at once (items still queued are dropped: the stream is over)."""

    def __init__(self, capacity: int, stall_s: float, overflow: Callable[[], Exception]) -> None:
        assert capacity >= 1, f"capacity must be at least 1, got {capacity}"
        self.capacity = capacity
        self.stall_s = stall_s
        self._overflow = overflow  # the error of a full outbox that stayed full for stall_s
        self._items: collections.deque[T] = collections.deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self._error: Exception | None = None
        self._final_error: Exception | None = None  # raised by `get` after the queued items (close(error))
        self.high_water = 0  # most items ever queued at once

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Queue `item`, waiting at most `stall_s` for room; raises (and fails the outbox) when none comes."""
        try:
            async with asyncio.timeout(self.stall_s):
                while len(self._items) >= self.capacity and self._error is None:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            self.fail(self._overflow())
        self.put_nowait(item)

    def put_nowait(self, item: T) -> None:
        """Queue `item` now; a full outbox fails (for producers that must not wait, e.g. a stream reader). After
        `close` items are dropped: the stream has ended."""
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        if len(self._items) >= self.capacity:
            self.fail(self._overflow())
            raise self._error
        self._items.append(item)
        self.high_water = max(self.high_water, len(self._items))
        self._readable.set()

    async def get(self) -> T | None:
        while True:
            if self._error is not None:
                raise self._error
            if self._items:
                self._room.set()
                return self._items.popleft()
            if self._closed:
                if self._final_error is not None:
                    raise self._final_error
                return None
            self._readable.clear()
            await self._readable.wait()

    def close(self, error: Exception | None = None) -> None:
        """No more items: `get` returns None (or raises `error`) once the queued ones are taken."""
        self._closed = True
        self._final_error = self._final_error or error
        self._readable.set()

    def fail(self, error: Exception) -> None:
        """End the stream with `error`: waiting producers and the writer raise it; queued items are dropped."""
        if self._error is None:
            self._error = error
        self._items.clear()
        self._readable.set()
        self._room.set()
