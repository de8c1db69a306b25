"""Helpers for the executor tests: jobs built as the registry builds them, bounded polling."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from corral.executors.base import ExecutorStatistics, FunctionRef, Job
from tests import support
from tests.support import eventually

_refs: dict[Callable[..., Any], FunctionRef] = {}


def ref_for(fn: Callable[..., Any]) -> FunctionRef:
    """Return one `FunctionRef` per function, cached as a `Tool` caches it."""
    ref = _refs.get(fn)
    if ref is None:
        ref = _refs[fn] = FunctionRef.for_function(fn, f"{fn.__qualname__}@{id(fn):x}")
    return ref


def job(fn: Callable[..., Any], /, **kwargs: Any) -> Job:
    """Build a job for `fn(**kwargs)` that can also cross a process boundary."""
    return Job(
        fn=fn,
        kwargs=kwargs,
        is_async=inspect.iscoroutinefunction(fn),
        ref=lambda: ref_for(fn),
    )


def is_idle(stats: ExecutorStatistics) -> bool:
    """Whether nothing runs and nothing waits."""
    return stats.in_flight == 0 and stats.queued == 0


class FileGate:
    """A gate for tools in worker processes, which cannot wait on an asyncio.Event.

    Each `job()` announces its process id in a file of its own, then blocks until `open()`
    creates the shared release file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.release = directory / "release"
        self._count = 0

    def job(self) -> tuple[Job, Path]:
        """Return a blocking job and the file it writes its process id to when it starts."""
        self._count += 1
        started = self.directory / f"started-{self._count}"
        return job(support.announce_and_wait, started=str(started), release=str(self.release)), (
            started
        )

    async def started(self, announcement: Path) -> int:
        """Wait until the job announcing itself in `announcement` runs; return its process id."""
        await eventually(announcement.exists, timeout_s=10.0, what=f"{announcement.name} started")
        return read_pid(announcement)

    def open(self) -> None:
        """Release every job of this gate, present and future."""
        self.release.write_text("")


def read_pid(path: Path) -> int:
    """Return the process id a tool wrote to `path`."""
    return int(path.read_text())


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie counts: it runs no code)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
