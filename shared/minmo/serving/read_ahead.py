"""A request stream read on its own task, so a handler can take every message that has already arrived at once.

A servicer that handles one message at a time pays a model call per message; when messages arrive while it computes
(the voice LM gets text positions from the LLM during a block), `take_ready` hands it all those waiting, to run as
one call. At most `limit` messages wait: past that the reader stops reading and HTTP/2 flow control holds the sender.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """Iterate it as the source; `take_ready` pops the waiting messages at the front that `wanted` accepts."""

    def __init__(self, source: AsyncIterator[T], limit: int = 64) -> None:
        self._source = source
        self._limit = limit
        self._items: collections.deque[T] = collections.deque()
        self._end: BaseException | None = None  # StopAsyncIteration, or the error the source raised
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="read-ahead")

    def __aiter__(self) -> ReadAhead[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._end is not None:
                raise self._end
            self._arrived.clear()
            await self._arrived.wait()
        item = self._items.popleft()
        self._taken.set()
        return item

    def take_ready(self, wanted: Callable[[T], bool]) -> list[T]:
        """The messages already received, from the front, while `wanted(message)` is true (never waits)."""
        taken = []
        while self._items and wanted(self._items[0]):
            taken.append(self._items.popleft())
        self._taken.set()
        return taken

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        try:
            async for item in self._source:
                while len(self._items) >= self._limit:
                    self._taken.clear()
                    await self._taken.wait()
                self._items.append(item)
                self._arrived.set()
            self._end = StopAsyncIteration()
        except asyncio.CancelledError:  # closed, or the call was cancelled: no more requests either way
            self._end = StopAsyncIteration()
            raise
        except Exception as error:  # the caller's stream broke: the handler sees it where it reads
            self._end = error
        finally:
            self._arrived.set()
