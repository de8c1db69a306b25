"""Run calls in a pool of threads sized for blocking I/O.

Written by hand rather than on `concurrent.futures.ThreadPoolExecutor` + `run_in_executor`, for
two reasons measured on the tool benchmark:

- The stdlib path wakes the event loop once per finished call (one `call_soon_threadsafe`, one
  self-pipe write, one loop iteration each). Here workers append to a shared list and wake the
  loop only if no wake-up is pending, so a burst of 100 fast calls costs a handful of wake-ups:
  about 3x less overhead per call.
- Idle threads exit after `idle_timeout_s`, so a burst of 100 blocking calls does not pin 100
  threads for the life of the process.

A thread cannot be killed. A call that times out or is cancelled after its thread started comes
back at once, while the thread runs on to the end of the function; it stays counted in
`statistics().in_flight` until it does.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from corral.errors import UsageError
from corral.executors.base import ExecutorStatistics, Job, State, ensure_open, future_safe

__all__ = ["ThreadExecutor"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    job: Job
    future: asyncio.Future[Any]
    started: bool = False
    cancelled: bool = False


_STOP = None


class _CallFuture(asyncio.Future[Any]):
    """The future of one thread call: cancelling it takes a call no thread has picked up yet.

    Done in `cancel` rather than in a done-callback: a callback costs a scheduled handle for
    every call, cancelled or not.
    """

    item: _Item
    executor: ThreadExecutor

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self.executor._forget(self.item)
        return cancelled


class ThreadExecutor:
    """A pool of up to `max_threads` threads; threads start on demand and exit when idle.

    The pool serves one event loop at a time: a call from another loop (the registry's next one,
    after the first closed) takes it over.

    Args:
        max_threads: The most threads at once. Calls beyond it wait in FIFO order.
        idle_timeout_s: An idle thread exits after this many seconds.
        close_timeout_s: How long `aclose()` waits for running threads before it leaves them.
    """

    name = "thread"

    def __init__(
        self, *, max_threads: int = 128, idle_timeout_s: float = 30.0, close_timeout_s: float = 5.0
    ) -> None:
        if max_threads < 1:
            raise UsageError(f"max_threads must be at least 1, got {max_threads!r}")
        if idle_timeout_s <= 0:
            raise UsageError(f"idle_timeout_s must be positive, got {idle_timeout_s!r}")
        self._max_threads = max_threads
        self._idle_timeout_s = idle_timeout_s
        self._close_timeout_s = close_timeout_s
        self._state = State.RUNNING
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        # Threads not running a call minus calls in the queue (cancelled ones included): above
        # zero, that many threads wait with nothing to do; below, that many calls wait for a
        # busy thread. Spawning and retiring read it under `_lock`.
        self._idle = 0
        self._queued = 0
        self._in_flight = 0
        self._done: list[tuple[_Item, bool, Any]] = []
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all_exited: asyncio.Event | None = None

    async def run(self, job: Job) -> Any:
        """Run `job` in a thread. Cancellation before the thread starts removes the call."""
        return await self.submit(job)

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue `job` for a thread and return the future of its value, on the running loop.

        Cancelling the future before a thread picks the job up removes it (it never runs); after
        that, the thread runs on and the job stays counted in flight until it ends. The scheduler
        uses this rather than `run` to spare a task per call.
        """
        ensure_open(self._state, "the thread executor")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        future = _CallFuture(loop=loop)
        item = future.item = _Item(job, future)
        future.executor = self
        with self._lock:
            self._queued += 1
            spawn = self._idle <= 0 and self._threads < self._max_threads
            if spawn:
                self._threads += 1
            else:
                # An idle thread will take it or, when `_idle` goes negative, the next thread to
                # finish a call. Counting it either way keeps retirement from stranding it.
                self._idle -= 1
        self._queue.put(item)
        if spawn:
            threading.Thread(target=self._work, name="corral-tool", daemon=True).start()
        return future

    def _forget(self, item: _Item) -> None:
        with self._lock:
            if not item.started:
                item.cancelled = True
                self._queued -= 1

    def statistics(self) -> ExecutorStatistics:
        """Return running calls (abandoned threads included), queued calls and live threads."""
        with self._lock:
            return ExecutorStatistics(
                self.name, in_flight=self._in_flight, queued=self._queued, workers=self._threads
            )

    async def aclose(self) -> None:
        """Stop all threads; wait up to `close_timeout_s` for running ones. Idempotent."""
        if self._state in (State.CLOSING, State.CLOSED):
            return
        self._state = State.CLOSING
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        with self._lock:
            threads = self._threads
            if threads:
                self._all_exited = asyncio.Event()
        for _ in range(threads):
            self._queue.put(_STOP)
        if threads and self._all_exited is not None:
            try:
                async with asyncio.timeout(self._close_timeout_s):
                    await self._all_exited.wait()
            except TimeoutError:
                logger.warning(
                    "%d tool thread(s) still running after %.1f s; leaving them",
                    self.statistics().workers,
                    self._close_timeout_s,
                )
        self._state = State.CLOSED

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # The pool serves one loop at a time (the registry's). A new one arrives when the old one
        # has closed, perhaps with a wake-up scheduled that will never run: wake the new loop
        # once, so `_wake_pending` cannot stay set and finished calls are delivered.
        with self._lock:
            self._loop = loop
            self._wake_pending = True
        loop.call_soon(self._deliver, loop)

    def _work(self) -> None:
        counted = True
        try:
            while (item := self._next_item()) is not None:
                ok, value = self._call(item.job)
                self._finish(item, ok, value)
            counted = False  # `_next_item` uncounted this thread when it chose to exit
        finally:
            _close_thread_loop()
            self._exit_thread(counted)

    def _next_item(self) -> _Item | None:
        """Return the next live call, or None once this thread has been uncounted to exit."""
        while True:
            try:
                item = self._queue.get(timeout=self._idle_timeout_s)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # more idle threads than queued calls: retire this one
                        # Uncount it in the same critical section: a call arriving in between
                        # would otherwise count on a thread that is leaving and wait forever.
                        self._idle -= 1
                        self._threads -= 1
                        return None
                continue
            if item is _STOP:
                with self._lock:
                    self._threads -= 1
                return None
            with self._lock:
                if item.cancelled:
                    self._idle += 1
                    continue
                item.started = True
                self._queued -= 1
                self._in_flight += 1
            return item

    @staticmethod
    def _call(job: Job) -> tuple[bool, Any]:
        try:
            if job.is_async:
                loop = _thread_loop()
                return True, loop.run_until_complete(job.fn(**job.kwargs))
            return True, job.fn(**job.kwargs)
        except BaseException as exc:
            return False, future_safe(exc)

    def _finish(self, item: _Item, ok: bool, value: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            self._idle += 1
            self._done.append((item, ok, value))
            loop = self._loop
            if self._wake_pending or loop is None:  # (None: no call has bound a loop yet)
                return
            self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._deliver, loop)
        except RuntimeError:  # the loop has closed; a call from the next loop re-binds
            with self._lock:
                if self._loop is loop:
                    self._wake_pending = False

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for item, ok, value in done:
            future = item.future
            if future.done():  # cancelled: nobody is waiting any more
                continue
            if future.get_loop() is not loop:  # a call from another loop than the pool's now
                _settle_threadsafe(future, ok, value)
            elif ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _exit_thread(self, counted: bool) -> None:
        with self._lock:
            if counted:  # left by an unexpected error, not through `_next_item`
                self._threads -= 1
            last = self._threads == 0
            event, loop = self._all_exited, self._loop
        if last and event is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass


def _settle_threadsafe(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    def settle() -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    try:
        future.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:  # that loop has closed: nobody is waiting any more
        pass


_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """Return this worker thread's own event loop, for `async def` tools run in thread mode."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None:
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _close_thread_loop() -> None:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is not None:
        loop.close()
        _local.loop = None
