"""Group commit: one store write carries the lines of many callers; each waits only for its own write.

Callers (an ingest batch, a node's or rack's window points, a revisit) :meth:`GroupCommit.submit`
their lines and await the outcome. Whatever is queued when a write can start goes out as one
group: whole callers, in the order they came, up to ``max_lines`` and ``max_bytes``. A caller of
half ``max_lines`` or more is written at once on its own, outside the slots (sharing would save
next to nothing; the store splits its requests as before). A group starts as soon as
fewer than ``max_in_flight`` groups are being written, so while one write is in flight the next
group gathers (no timer); ``linger_s`` > 0 holds an idle flusher that long before the first
group, to gather more.

The store's write of a group answers for all of its lines; ``share`` cuts that answer into one
per caller (their own line indexes), and an exception (StoreUnavailable, ...) reaches every
caller of the group as ``fail`` makes it for each. A caller cancelled while waiting is dropped
from its group if that has not started, else its group is written all the same and the others
get their answers. Nothing here knows InfluxDB: collector/store.py supplies the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")

#: The store's write of a group's lines.
WriteFn = Callable[[list[str]], Awaitable[R]]
#: Cuts the group's answer into one answer per caller: ``share(result, [(first_line, n_lines), ...])``.
ShareFn = Callable[[R, Sequence[tuple[int, int]]], list[R]]


@dataclass
class _Waiter(Generic[R]):
    lines: list[str]
    size_bytes: int
    future: asyncio.Future[R]


class GroupCommit(Generic[R]):
    """Coalesces concurrent writes into groups; see the module docstring.

    ``max_lines``: a callable, so the store's own request size (halved after an HTTP 413)
    bounds the groups too. ``fail(exc)``: the exception each caller of a failed group gets
    (a copy per caller, so no two tasks raise one object); ``closed()``: what a caller gets
    when the store closes under it.
    """

    def __init__(
        self,
        write: WriteFn[R],
        share: ShareFn[R],
        fail: Callable[[BaseException], BaseException],
        closed: Callable[[], BaseException],
        max_lines: Callable[[], int],
        max_bytes: int,
        max_in_flight: int,
        linger_s: float = 0.0,
        on_group: Callable[[int, int], None] | None = None,
    ) -> None:
        self._write = write
        self._share = share
        self._fail = fail
        self._closed = closed
        self._max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.linger_s = linger_s
        #: called with (callers, lines) of every group as it starts
        self._on_group = on_group
        self._queue: deque[_Waiter[R]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled: asyncio.Handle | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        """Callers waiting for a group to start."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Groups being written now."""
        return len(self._tasks)

    async def submit(self, lines: list[str]) -> R:
        """Write ``lines`` in the next group that has room; the answer for these lines alone."""
        if self._closing:
            raise self._closed()
        if 2 * len(lines) >= self._max_lines():
            # half a group or more: sharing a request saves next to nothing, and waiting for a slot
            # would only delay it (large batches are written at once, several at a time, as before)
            if self._on_group is not None:
                self._on_group(1, len(lines))
            return await self._write(lines)
        loop = asyncio.get_running_loop()
        waiter: _Waiter[R] = _Waiter(lines, sum(map(len, lines)) + len(lines), loop.create_future())
        self._queue.append(waiter)
        self._schedule(self.linger_s)
        return await waiter.future

    def _schedule(self, delay_s: float) -> None:
        """Start groups soon: at the end of this loop step (callers of the same step join), or after
        ``delay_s``. Nothing to do while the flusher is already due or every slot is busy."""
        if self._scheduled is not None or len(self._tasks) >= self.max_in_flight or not self._queue:
            return
        loop = asyncio.get_running_loop()
        if delay_s > 0:
            self._scheduled = loop.call_later(delay_s, self._start)
        else:
            self._scheduled = loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = None
        while len(self._tasks) < self.max_in_flight:
            group = self._take()
            if not group:
                return
            if self._on_group is not None:
                self._on_group(len(group), sum(len(w.lines) for w in group))
            task = asyncio.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _take(self) -> list[_Waiter[R]]:
        """Whole callers from the head of the queue, within max_lines and max_bytes (at least one)."""
        group: list[_Waiter[R]] = []
        max_lines = max(1, self._max_lines())
        n_lines = size = 0
        while self._queue:
            waiter = self._queue[0]
            if waiter.future.done():  # cancelled while queued: never written
                self._queue.popleft()
                continue
            too_big = n_lines + len(waiter.lines) > max_lines or size + waiter.size_bytes > self.max_bytes
            if group and too_big:
                break
            self._queue.popleft()
            group.append(waiter)
            n_lines += len(waiter.lines)
            size += waiter.size_bytes
        return group

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._closing:
            self._schedule(0.0)  # the next group starts as soon as a slot is free

    async def _run(self, group: list[_Waiter[R]]) -> None:
        lines = group[0].lines if len(group) == 1 else [line for w in group for line in w.lines]
        try:
            result = await self._write(lines)
        except asyncio.CancelledError:
            _fail_all(group, self._closed)
            raise
        except Exception as exc:  # every caller of the group gets the failure
            _fail_all(group, functools.partial(self._fail, exc))
            return
        if len(group) == 1:
            answers = [result]
        else:
            spans: list[tuple[int, int]] = []
            first = 0
            for waiter in group:
                spans.append((first, len(waiter.lines)))
                first += len(waiter.lines)
            answers = self._share(result, spans)
        for waiter, answer in zip(group, answers, strict=True):
            if not waiter.future.done():  # a caller cancelled meanwhile simply gets nothing
                waiter.future.set_result(answer)

    async def close(self) -> None:
        """Callers still queued, and those of groups being written, get ``closed()``."""
        self._closing = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        _fail_all(list(self._queue), self._closed)
        self._queue.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _fail_all(waiters: list[_Waiter[R]], error: Callable[[], BaseException]) -> None:
    """Each waiter still waiting gets its own ``error()``; marked retrieved, so a caller cancelled
    in the same loop step leaves no "exception was never retrieved" behind (a waiter re-raises it)."""
    for waiter in waiters:
        if not waiter.future.done():
            waiter.future.set_exception(error())
            waiter.future.exception()
