"""Tool functions the tests register; module-level so worker processes import them by path."""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def pid() -> int:
    """Return the process id of whoever runs this."""
    return os.getpid()


def sleep_ms(ms: int) -> int:
    """Block for `ms` milliseconds."""
    time.sleep(ms / 1000)
    return ms


async def async_sleep_ms(ms: int) -> int:
    """Wait `ms` milliseconds without blocking."""
    await asyncio.sleep(ms / 1000)
    return ms


def exit_now(code: int = 3) -> None:
    """End the process at once, with no clean-up."""
    os._exit(code)


def segfault() -> None:
    """Crash the process with SIGSEGV."""
    ctypes.string_at(0)


def kill_self() -> None:
    """Kill the process with SIGKILL."""
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable() -> object:
    """Return a value that cannot be pickled."""
    return lambda: None


def chatty(n: int) -> int:
    """Print to stdout, which must not corrupt the worker protocol."""
    for i in range(n):
        print(f"noise {i}", flush=True)
    return n


def append_line(path: Path, text: str, delay_ms: int = 0) -> int:
    """Read the file, wait, and write it back with one more line: a read-modify-write."""
    before = path.read_text() if path.exists() else ""
    time.sleep(delay_ms / 1000)
    path.write_text(before + text + "\n")
    return len(before)


# -- executors: gates, evidence and awkward values for worker processes --------------------------


def wait_for_file(path: str, timeout_s: float = 30.0) -> int:
    """Block until `path` exists (a gate the test opens by creating it); return the process id."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.005)
    return os.getpid()


def announce_and_wait(started: str, release: str) -> int:
    """Write this process id to `started`, then block until `release` exists; return the pid."""
    partial = f"{started}.partial"
    Path(partial).write_text(str(os.getpid()))
    os.replace(partial, started)  # atomic: a reader never sees an empty file
    return wait_for_file(release)


def sleep_then_write(path: str, ms: int) -> int:
    """Sleep `ms` milliseconds, then write this process id to `path`: evidence the work finished."""
    time.sleep(ms / 1000)
    Path(path).write_text(str(os.getpid()))
    return os.getpid()


def is_imported(module: str) -> bool:
    """Whether `module` has been imported in this process."""
    return module in sys.modules


def payload(size: int) -> bytes:
    """Return `size` reproducible pseudo-random bytes."""
    return random.Random(size).randbytes(size)


def echo(value: object) -> object:
    """Return the argument unchanged."""
    return value


def raise_unpicklable() -> None:
    """Raise an exception whose argument (a lock) cannot be pickled."""
    raise ValueError(threading.Lock())


def raise_stop_iteration() -> None:
    """Raise StopIteration, which asyncio refuses to put into a Future."""
    raise StopIteration("done early")


def refuse_to_load() -> None:
    """Fail on purpose: the reconstructor of `RefusesToLoad`."""
    raise RuntimeError("RefusesToLoad cannot be unpickled")


class RefusesToLoad:
    """Pickles fine, but unpickling it raises (as a class missing on the other side would)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return refuse_to_load, ()


def make_refuses_to_load() -> RefusesToLoad:
    """Return a value that the worker can pickle and the parent cannot unpickle."""
    return RefusesToLoad()


# -- helpers for tests of concurrent code (not tools) ------------------------------------------


async def eventually(
    predicate: Callable[[], bool], *, timeout_s: float = 5.0, what: str = "the condition"
) -> None:
    """Wait, at most `timeout_s`, until `predicate()` holds: for state other threads change.

    Polls; it never forces an order, it only waits for one that must come.
    """
    try:
        async with asyncio.timeout(timeout_s):
            # Polling, not an Event: the state belongs to threads that cannot signal the loop.
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"{what} did not hold within {timeout_s} s") from None


@contextmanager
def unclosed_async_generators(under: Path | None = None) -> Iterator[list[str]]:
    """Collect the qualified names of async generators left for the garbage collector.

    An async generator dropped while suspended is closed by the loop's finalizer hook in a task
    of its own, later: its cleanup runs out of order and costs a task and a loop wake-up.
    `under`: only those whose code is in that directory (corral's, not a test client's).
    """
    found: list[str] = []
    firstiter, finalizer = sys.get_asyncgen_hooks()

    def record(agen: Any) -> None:
        if under is None or Path(agen.ag_code.co_filename).is_relative_to(under):
            found.append(agen.__qualname__)
        if finalizer is not None:
            finalizer(agen)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=record)
    try:
        yield found
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)


class Timeline:
    """Start and end events in the order they happened, from any thread; no clocks involved.

    Tools call `start(key)` / `end(key)` (or use `span(key)`); tests then ask whether one call
    ended before another started, or whether two were running at the same time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.active: set[str] = set()
        self.max_active = 0

    def start(self, key: str) -> None:
        """Record that `key` started."""
        with self._lock:
            self.events.append(("start", key))
            self.active.add(key)
            self.max_active = max(self.max_active, len(self.active))

    def end(self, key: str) -> None:
        """Record that `key` ended."""
        with self._lock:
            self.events.append(("end", key))
            self.active.discard(key)

    @contextmanager
    def span(self, key: str) -> Iterator[None]:
        """Record the start and end of the block under `key`, even if it raises."""
        self.start(key)
        try:
            yield
        finally:
            self.end(key)

    def position(self, kind: str, key: str) -> int:
        """Return where the `kind` ("start" or "end") event of `key` is in the log."""
        with self._lock:
            return self.events.index((kind, key))

    def started(self) -> list[str]:
        """Return the keys in the order they started."""
        with self._lock:
            return [key for kind, key in self.events if kind == "start"]

    def has_started(self, key: str) -> bool:
        """Whether `key` started at all."""
        with self._lock:
            return ("start", key) in self.events

    def before(self, first: str, second: str) -> bool:
        """Whether `first` ended before `second` started."""
        return self.position("end", first) < self.position("start", second)

    def overlapped(self, a: str, b: str) -> bool:
        """Whether `a` and `b` were running at the same time at some point."""
        return not (self.before(a, b) or self.before(b, a))


def announce_then_write(started: str, release: str, evidence: str) -> int:
    """Announce this process id, wait for `release`, then write `evidence`: proof the work ran."""
    announce_and_wait(started, release)
    Path(evidence).write_text(str(os.getpid()))
    return os.getpid()


def sys_exit(code: int) -> None:
    """Call sys.exit: it must fail the call, not stop whoever awaits it."""
    import sys

    sys.exit(code)
