"""Run calls in a warm pool of crash-isolated worker processes.

Written by hand: `concurrent.futures.ProcessPoolExecutor` marks the whole pool broken when one
worker dies and cannot stop one running call, and corral needs both per call: a crash turns only
its own call into an error, and a timeout or cancellation kills the worker running it so the work
really stops. Each worker is an asyncio subprocess; frames travel on its pipes and results arrive
through the protocol's callback, with no thread per worker and no polling.

A worker runs one call at a time. It imports a tool by its module path the first time it needs it
(closures and `__main__` functions are sent once by value and cached), so a call's frame carries
only its arguments.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from corral.errors import UsageError, WorkerDied
from corral.executors import _worker
from corral.executors._worker import (
    BAD_ARGUMENTS,
    CURRENT,
    HEADER,
    OK,
    RAISED,
    READY,
    UNPICKLABLE,
)
from corral.executors.base import (
    ExecutorStatistics,
    FunctionRef,
    Job,
    State,
    ensure_open,
    future_safe,
)

__all__ = ["ProcessExecutor", "RemoteError", "UnpicklableResult"]

logger = logging.getLogger(__name__)

_WORKER_PATH = _worker.__file__


class UnpicklableResult(Exception):
    """The value a process call returned cannot be pickled back to the parent."""


class RemoteError(Exception):
    """A tool in a worker raised an exception that cannot be rebuilt in the parent.

    `remote_type` is the original exception's type name.
    """

    def __init__(self, remote_type: str, message: str) -> None:
        super().__init__(message)
        self.remote_type = remote_type


class _Call:
    """One call: queued in the pool, then running on a worker until it answers or dies."""

    __slots__ = ("future", "job", "ref", "worker")

    def __init__(self, job: Job, ref: FunctionRef, future: _CallFuture) -> None:
        self.job = job
        self.ref = ref
        self.future = future
        self.worker: _Worker | None = None


class _CallFuture(asyncio.Future[Any]):
    """The future of one process call: cancelling it stops the call.

    A queued call is dropped; a running one has its worker killed (SIGKILL, at once) so the work
    really stops, and the pool replaces the worker. `ProcessExecutor.settle()` waits until killed
    workers have exited.
    """

    call: _Call
    pool: ProcessExecutor

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self.pool._cancelled(self.call)
        return cancelled


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self._buffer = bytearray()
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            end = HEADER.size + size
            if len(buffer) < end:
                return
            try:
                message = pickle.loads(memoryview(buffer)[HEADER.size : end])
            except Exception as exc:  # a result the worker could pickle and we cannot load
                message = (CURRENT, UNPICKLABLE, "", f"the result cannot be unpickled: {exc!r}")
            del buffer[:end]
            if self.worker is not None:
                self.worker.on_message(message)

    def process_exited(self) -> None:
        if self.worker is not None:
            self.worker.on_exit()


class _Worker:
    __slots__ = (
        "call",
        "loaded",
        "on_exited",
        "on_free",
        "pid",
        "protocol",
        "ready",
        "seq",
        "served",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
        on_exited: Callable[[_Worker, _Call | None], None],
        on_free: Callable[[_Worker], None],
    ) -> None:
        self.on_exited = on_exited
        self.on_free = on_free
        self.transport = transport
        self.protocol = protocol
        self.pid: int = transport.get_pid()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.served = False
        """Whether it became ready: only such a worker is replaced when it exits."""
        self.call: _Call | None = None
        """The call it is running; cleared when it answers or exits (not when it is killed)."""
        self.loaded: set[str] = set()
        self.seq = 0
        protocol.worker = self

    @property
    def alive(self) -> bool:
        return not self.protocol.exited.done()

    def send(self, call: _Call) -> None:
        """Write `call`'s frame; raise what pickling its arguments raised."""
        ref, job = call.ref, call.job
        fresh = ref.key not in self.loaded
        frame = pickle.dumps(
            (
                self.seq + 1,
                ref.key,
                ref.module,
                ref.qualname,
                ref.pickled if fresh else None,
                dict(job.kwargs),
                job.is_async,
            ),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self.seq += 1
        stdin = self.transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(HEADER.pack(len(frame)) + frame)
        self.loaded.add(ref.key)
        self.call = call
        call.worker = self

    def on_message(self, message: tuple[Any, ...]) -> None:
        seq, kind = message[0], message[1]
        if kind == READY:
            self.served = True
            if not self.ready.done():
                self.ready.set_result(None)
            return
        call = self.call
        if call is None:
            return
        if seq != self.seq and seq != CURRENT:  # an answer to an earlier call: never expected
            return
        self.call = None
        future = call.future
        if not future.done():
            if kind == OK:
                future.set_result(message[2])
            elif kind == RAISED:
                future.set_exception(_rebuild(message[2], message[3], message[4]))
            elif kind == UNPICKLABLE:
                future.set_exception(UnpicklableResult(message[3]))
            elif kind == BAD_ARGUMENTS:
                # The frame never loaded, so neither did a function sent by value in it.
                self.loaded.discard(call.ref.key)
                future.set_exception(
                    UsageError(
                        f"the arguments cannot be loaded in the worker process: {message[3]}"
                    )
                )
        self.on_free(self)

    def on_exit(self) -> None:
        code = self.transport.get_returncode()
        if not self.protocol.exited.done():
            self.protocol.exited.set_result(code)
        if not self.ready.done():
            self.ready.set_exception(
                WorkerDied(f"worker process {self.pid} exited at start-up ({_describe_exit(code)})")
            )
        call, self.call = self.call, None
        if call is not None and not call.future.done():
            tool = call.ref.key.partition("@")[0]
            call.future.set_exception(
                WorkerDied(
                    f"worker process died ({_describe_exit(code)}) while running tool {tool!r}"
                )
            )
        self.transport.close()
        self.on_exited(self, call)

    def close_stdin(self) -> None:
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()

    def kill(self) -> None:
        if self.alive:
            try:
                self.transport.kill()
            except ProcessLookupError:
                pass


def _rebuild(pickled: bytes | None, type_name: str, message: str) -> BaseException:
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
            if isinstance(exc, BaseException):
                return future_safe(exc)
        except Exception:
            pass
    return RemoteError(type_name, message)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessExecutor:
    """A warm pool of `size` worker processes, each running one call at a time.

    Calls queue in the pool, first come first served; a worker that answers takes the next queued
    call at once, from the protocol callback, with no task switch in between. A worker that exits
    after it became ready (a crash, a kill from outside, a kill for a timeout or cancellation) is
    replaced at once; `statistics().replaced_workers` counts them.

    Args:
        size: Number of worker processes. Defaults to the number of CPUs.
        start_timeout_s: How long a worker may take to start before it counts as failed.
        preload: Modules every worker imports before it counts as ready (the tools' modules),
            so the first call does not pay for the import.
    """

    name = "process"

    def __init__(
        self,
        *,
        size: int | None = None,
        start_timeout_s: float = 30.0,
        preload: Sequence[str] = (),
    ) -> None:
        size = size if size is not None else (os.cpu_count() or 2)
        if size < 1:
            raise UsageError(f"process pool size must be at least 1, got {size!r}")
        self._size = size
        self.preload = list(preload)
        self._start_timeout_s = start_timeout_s
        self._state = State.NEW
        self._workers: set[_Worker] = set()
        """Every worker process that has not exited yet, busy, idle or being killed."""
        self._idle: collections.deque[_Worker] = collections.deque()
        self._queue: collections.deque[_Call] = collections.deque()
        self._killed: set[_Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._starter: asyncio.Task[None] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._in_flight = 0
        self._replaced = 0

    async def start(self) -> None:
        """Start the workers and wait until each is ready. Idempotent.

        Raises:
            WorkerDied: A worker exited or did not answer within `start_timeout_s`; the workers
                that did start stay, and the next `start()` (or call) starts the rest.
            ClosedError: The pool was closed, before or while it started.
        """
        if self._state is State.RUNNING:
            return
        ensure_open(self._state, "the process pool")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started():  # another caller started it while we waited for the lock
                return
            ensure_open(self._state, "the process pool")
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(self._size - self.statistics().workers):
                        self._track(tg.create_task(self._spawn()))
            except ExceptionGroup as group:
                # Every worker fails for the same reason, as a rule: report the first one.
                raise group.exceptions[0] from None
            # aclose() cancels the spawning workers rather than wait: then this start failed.
            ensure_open(self._state, "the process pool")
            self._state = State.RUNNING

    def _started(self) -> bool:
        # A method, not an inline test: mypy would keep the narrowing from before the `await`.
        return self._state is State.RUNNING

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue `job` for a worker and return the future of its value.

        Cancelling the future drops a queued call, or kills the worker running it (the pool
        replaces it); `settle()` waits for such workers to exit. The pool starts on first use.
        """
        ensure_open(self._state, "the process pool")
        if job.ref is None:
            raise UsageError("a job for the process pool needs a FunctionRef")
        future = _CallFuture(loop=asyncio.get_running_loop())
        call = future.call = _Call(job, job.ref(), future)
        future.pool = self
        self._queue.append(call)
        if self._state is State.NEW and self._starter is None:
            self._starter = asyncio.get_running_loop().create_task(self._start_for_queue())
        self._dispatch()
        return future

    async def run(self, job: Job) -> Any:
        """Run `job` in a worker; a timeout or cancellation kills that worker and replaces it.

        Returns only when the call has ended: after a cancellation, once its worker has exited.
        """
        if self._state is not State.RUNNING:
            await self.start()
        future = self.submit(job)
        try:
            return await future
        except asyncio.CancelledError:
            await self.settle()
            raise

    async def settle(self) -> None:
        """Wait until every worker killed to stop a call has exited (at most 5 s each)."""
        for worker in list(self._killed):
            await self._wait_for_exit(worker)

    def statistics(self) -> ExecutorStatistics:
        """Return calls in workers, calls waiting for one, live workers and replacements."""
        return ExecutorStatistics(
            self.name,
            in_flight=self._in_flight,
            queued=sum(1 for c in self._queue if not c.future.done()),
            workers=sum(1 for w in self._workers if w.alive),
            replaced_workers=self._replaced,
        )

    def worker_pids(self) -> list[int]:
        """Return the process ids of the live workers."""
        return [w.pid for w in self._workers if w.alive]

    async def aclose(self) -> None:
        """Stop every worker: idle ones by closing their pipe, busy ones by killing. Idempotent.

        Calls still waiting for a worker, and calls running, fail with `WorkerDied`.
        """
        if self._state in (State.CLOSING, State.CLOSED):
            return
        self._state = State.CLOSING
        for task in list(self._spawning):
            task.cancel()  # each kills the worker it was starting
        while self._queue:
            call = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(WorkerDied("the process pool closed"))
        for worker in list(self._workers):
            if worker.call is None:
                worker.close_stdin()  # it exits when it reads the end of its input
            else:
                worker.kill()
        try:
            pending = [*self._spawning, *([self._starter] if self._starter else [])]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for worker in list(self._workers):
                await self._wait_for_exit(worker)
        except BaseException:
            # Cancelled while waiting: leave no process behind (SIGKILL needs no await).
            for worker in list(self._workers):
                worker.kill()
            raise
        self._workers.clear()
        self._idle.clear()
        self._state = State.CLOSED

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued calls to idle workers."""
        queue, idle = self._queue, self._idle
        while queue and idle:
            call = queue.popleft()
            if call.future.done():  # cancelled while queued
                continue
            worker = idle.popleft()
            if not worker.alive:
                queue.appendleft(call)
                continue
            try:
                worker.send(call)
            except Exception as exc:  # pickling runs arbitrary `__reduce__` code: any error
                idle.appendleft(worker)
                call.future.set_exception(
                    UsageError(f"the arguments cannot be sent to a worker process: {exc}")
                )
                continue
            self._in_flight += 1

    def _on_free(self, worker: _Worker) -> None:
        self._in_flight -= 1
        self._release(worker)

    def _cancelled(self, call: _Call) -> None:
        worker = call.worker
        if worker is not None and worker.call is call:
            # Still running in the worker: kill it so the work really stops. Its exit starts a
            # replacement; until then the call counts as in flight.
            self._killed.add(worker)
            worker.kill()

    async def _start_for_queue(self) -> None:
        # Calls submitted before the pool was started: start it, or fail them with the reason.
        try:
            await self.start()
        except Exception as exc:
            while self._queue:
                call = self._queue.popleft()
                if not call.future.done():
                    call.future.set_exception(exc)
        finally:
            self._starter = None

    # -- workers -------------------------------------------------------------------------------

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        transport, protocol = await loop.subprocess_exec(
            _Protocol,
            sys.executable,
            "-c",
            "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')",
            _WORKER_PATH,
            *self.preload,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=env,
        )
        worker = _Worker(transport, protocol, self._on_exited, self._on_free)
        self._workers.add(worker)
        try:
            async with asyncio.timeout(self._start_timeout_s):
                await worker.ready
        except TimeoutError:
            await self._kill(worker)
            raise WorkerDied(
                f"worker process {worker.pid} did not start within {self._start_timeout_s:g} s"
            ) from None
        except BaseException:
            # Cancelled (the pool is closing, or a sibling failed to start) or dead: make sure
            # the process is gone before we report, so no caller can leave it behind.
            if worker.ready.done() and not worker.ready.cancelled():
                worker.ready.exception()  # a start-up death met by a cancellation: seen, not lost
            await self._kill(worker)
            raise
        self._release(worker)

    def _track(self, task: asyncio.Task[None]) -> None:
        # aclose() cancels and awaits these, so no worker is half-started when it returns.
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    def _on_exited(self, worker: _Worker, call: _Call | None) -> None:
        self._workers.discard(worker)
        self._killed.discard(worker)
        if call is not None:
            self._in_flight -= 1
        if worker in self._idle:
            self._idle.remove(worker)
        # Replace a worker that served (crashed, killed from outside or for a timeout), not one
        # that failed to start: that would retry a broken start-up forever.
        if worker.served:
            self._replace()

    def _release(self, worker: _Worker) -> None:
        if worker.call is not None:
            worker.kill()  # never hand on a worker that may still be running a call
            return
        if not worker.alive or (self._state is not State.RUNNING and self._state is not State.NEW):
            return
        self._idle.append(worker)
        self._dispatch()

    def _replace(self) -> None:
        if self._state in (State.CLOSING, State.CLOSED):
            return
        self._replaced += 1
        self._track(asyncio.get_running_loop().create_task(self._spawn_logged()))

    async def _spawn_logged(self) -> None:
        try:
            await self._spawn()
        except Exception:
            logger.exception("could not start a replacement worker process")

    async def _wait_for_exit(self, worker: _Worker) -> None:
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(worker.protocol.exited)
        except TimeoutError:
            await self._kill(worker)

    async def _kill(self, worker: _Worker) -> None:
        worker.kill()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(worker.protocol.exited)
        except TimeoutError:
            logger.warning("worker process %d did not exit 5 s after SIGKILL", worker.pid)
