"""`RequestManager`: every model request passes through it.

- Admission: a bounded queue in front of `max_concurrent_requests` running calls; a full queue
  refuses at once with `QueueFull(retry_after_s)`, never piles up waiting tasks.
- `max_concurrent_llm_streams` caps provider streams open at once, held for the whole stream.
- Singleflight: identical in-flight requests (same provider, model, messages, tools, sampling)
  share one provider call, when sharing is right: the request is deterministic (temperature 0 or
  a seed), or the caller opts in. The call's events go to an append-only log that every
  subscriber reads with its own cursor: late joiners get everything from the start, slow ones
  lose nothing and slow nobody, and a reconnecting one resumes after the last number it saw.
- Subscribers are counted: one that cancels stops alone (it gets a final `StreamCancelled`); the
  provider call stops only when the last one has left. A provider failure reaches every
  subscriber as the same `StreamFailed`, and the key is released so the next request starts fresh.
- A result cache (TTL, size bound) replays a completed answer's events.
- A janitor, owned by the manager and driven by an injectable clock, fails requests that waited in
  the queue longer than `queue_timeout_s` or ran longer than `processing_timeout_s`, and drops
  finished logs once their retention has passed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from corral._types import AsyncResource, Clock, MonotonicClock
from corral.errors import ProviderError, QueueFull, RequestCancelled, RequestExpired, UsageError
from corral.executors.base import State, ensure_open
from corral.providers.base import (
    Completion,
    Finish,
    ModelCapabilities,
    ModelRequest,
    Provider,
    ProviderEvent,
    TextDelta,
    ToolCallDone,
    Usage,
)
from corral.requests._flight import (
    TERMINAL,
    Flight,
    FlightState,
    StreamCancelled,
    StreamDone,
    StreamEvent,
    StreamFailed,
    deterministic,
    request_key,
)
from corral.scheduler import Budget, ErrorInfo

__all__ = ["ManagerStatistics", "RequestHandle", "RequestManager"]

Dedup = Literal["deterministic", "always", "off"]


@dataclass(frozen=True, slots=True)
class ManagerStatistics:
    """What the manager holds now, and what it has counted since it started."""

    queued: int
    running: int
    streams_in_use: int
    followers: int
    """Subscribers beyond the first on calls in flight."""
    retained: int
    """Request logs kept for late joiners and resumption."""
    dedup_hits: int
    cache_hits: int
    reaped: int

    @property
    def idle(self) -> bool:
        """Whether nothing is queued, running or streaming."""
        return not (self.queued or self.running or self.streams_in_use or self.followers)


class RequestHandle:
    """One subscriber's view of a request: its id, its events, its result, its cancel."""

    def __init__(self, manager: RequestManager, flight: Flight, request_id: str) -> None:
        self.id = request_id
        self._manager = manager
        self._flight = flight
        self._done = False
        self._cancelled = False
        flight.handles += 1

    @property
    def done(self) -> bool:
        """Whether this subscriber has finished or cancelled."""
        return self._done

    async def events(self, after: int = 0) -> AsyncGenerator[tuple[int, StreamEvent], None]:
        """Yield `(seq, event)` from event number `after + 1` to the terminal event.

        Late joiners get the whole stream; after `cancel()` the iteration ends with a
        `StreamCancelled` for this subscriber only. Breaking out of the loop does not leave the
        request (a disconnected client may resume with `events(after=seq)`); `cancel()` does.
        """
        log = self._flight.log
        seq = after
        async with contextlib.aclosing(log.subscribe(after, stop=lambda: self._cancelled)) as sub:
            async for seq, event in sub:
                if isinstance(event, TERMINAL):
                    self._finish()  # before the yield: the reader may stop right there
                    yield seq, event
                    return
                yield seq, event
        if self._cancelled:
            yield seq, StreamCancelled("this subscriber cancelled")

    def cancel(self) -> None:
        """Stop this subscriber; the provider call stops only if it was the last one."""
        if self._done:
            return
        self._cancelled = True
        self._finish()
        self._flight.log.poke()

    async def result(self) -> Completion:
        """Wait for the end and return the answer.

        Raises:
            RequestCancelled: this subscriber, or every subscriber, cancelled.
            RequestExpired: the janitor ended the request.
            ProviderError: the provider call failed.
        """
        # Waits for the log to close and reads it once, rather than event by event: a thousand
        # followers of one stream then cost a wake-up each, not one per event.
        log = self._flight.log
        while not log.closed and not self._cancelled:
            await log.changed()
        if self._cancelled:
            raise RequestCancelled(f"request {self.id!r} was cancelled by this subscriber")
        self._finish()
        completion: Completion | None = self._flight.completion
        if completion is None:
            completion = self._flight.completion = _assemble(self.id, log.events())
        return completion

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._manager._release_handle(self._flight)


class RequestManager(AsyncResource):
    """Admit, cap, deduplicate, broadcast and reap model requests to one provider.

    Args:
        provider: Where the calls go (wrap it in a rate limiter first if it needs one).
        max_queue: Requests that may wait for a slot; one more is refused with `QueueFull`.
        max_concurrent_requests: Requests processed at once.
        max_concurrent_llm_streams: Provider streams open at once (held for the whole stream).
        queue_timeout_s: A request that waited longer fails with "timed out in queue".
        processing_timeout_s: A request that ran longer is cancelled ("timed out during
            processing").
        dedup: "deterministic" (share an in-flight call only for temperature 0 or a seed),
            "always", or "off". `submit(dedup=True)` opts one request in.
        cache_ttl_s: Keep completed answers this long for identical requests; None: no cache.
        cache_max_entries: Bound on cached answers (least recently used go first).
        retention_s: How long a finished request's log stays for late joiners and resumption.
        janitor_interval_s: The janitor's finest step: it looks when something can expire, at
            most this late, and never more often.
        clock: Time source of every timeout and retention (inject a manual one in tests).
        sleep: How the janitor waits between rounds (inject the manual clock's `sleep`).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        max_queue: int = 1000,
        max_concurrent_requests: int = 100,
        max_concurrent_llm_streams: int = 20,
        queue_timeout_s: float = 60.0,
        processing_timeout_s: float = 600.0,
        dedup: Dedup = "deterministic",
        cache_ttl_s: float | None = None,
        cache_max_entries: int = 1024,
        retention_s: float = 300.0,
        janitor_interval_s: float = 1.0,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        for name, value in (
            ("max_queue", max_queue),
            ("max_concurrent_requests", max_concurrent_requests),
            ("max_concurrent_llm_streams", max_concurrent_llm_streams),
            ("cache_max_entries", cache_max_entries),
        ):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if dedup not in ("deterministic", "always", "off"):
            raise UsageError(f"dedup must be 'deterministic', 'always' or 'off', got {dedup!r}")
        self._provider = provider
        self._max_queue = max_queue
        self._max_running = max_concurrent_requests
        self._streams = Budget("llm-streams", max_concurrent_llm_streams)
        self._queue_timeout_s = queue_timeout_s
        self._processing_timeout_s = processing_timeout_s
        self._dedup: Dedup = dedup
        self._cache_ttl_s = cache_ttl_s
        self._cache_max = cache_max_entries
        self._retention_s = retention_s
        self._janitor_interval_s = janitor_interval_s
        self._clock = clock or MonotonicClock()
        self._sleep = sleep or asyncio.sleep
        self._state = State.NEW
        self._queue: collections.deque[Flight] = collections.deque()
        self._running: set[Flight] = set()
        self._inflight: dict[str, Flight] = {}
        self._by_id: dict[str, Flight] = {}
        self._cache: collections.OrderedDict[str, tuple[float, list[StreamEvent]]] = (
            collections.OrderedDict()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._has_work = asyncio.Event()
        self._mean_run_s = 1.0
        self._dedup_hits = 0
        self._cache_hits = 0
        self._reaped = 0

    async def __aenter__(self) -> RequestManager:
        self.start()
        return self

    def start(self) -> None:
        """Start the janitor. Idempotent; `submit` starts the manager too."""
        ensure_open(self._state, "the request manager")
        if self._state is State.NEW:
            self._state = State.RUNNING
            self._janitor = asyncio.get_running_loop().create_task(self._janitor_loop())

    # -- submitting and subscribing ------------------------------------------------------------

    def submit(
        self, request: ModelRequest, *, dedup: bool | None = None, request_id: str | None = None
    ) -> RequestHandle:
        """Admit `request` and return its handle.

        The handle follows an identical call already in flight when sharing is right, or replays
        a cached answer.

        Raises:
            QueueFull: the queue is full; `retry_after_s` estimates when a slot frees.
            ClosedError: the manager is closing or closed.
        """
        request_id = request_id or uuid.uuid4().hex
        flight = self._admit(request, self._key(request, dedup), request_id)
        handle = RequestHandle(self, flight, request_id)
        self._dispatch()
        return handle

    def _admit(
        self, request: ModelRequest, key: str | None, request_id: str, *, driven: bool = False
    ) -> Flight:
        """Find the flight `request` joins, or queue a new one; register it under the id."""
        self.start()
        if request_id in self._by_id:
            raise UsageError(f"request id {request_id!r} is already in use")
        flight = self._join(key)
        if flight is None:
            if len(self._queue) >= self._max_queue:
                raise QueueFull(
                    f"the request queue is full ({self._max_queue} waiting)",
                    retry_after_s=self._retry_after_s(),
                )
            flight = Flight(request, key, self._clock.monotonic(), driven=driven)
            if key is not None:
                self._inflight[key] = flight
            self._queue.append(flight)
        self._by_id[request_id] = flight
        self._has_work.set()
        return flight

    def attach(self, request_id: str) -> RequestHandle:
        """Return a new handle on a request still retained (to resume: `events(after=seq)`).

        Raises:
            RequestExpired: the request is unknown, or its log is no longer retained.
        """
        flight = self._by_id.get(request_id)
        if flight is None:
            raise RequestExpired(f"request {request_id!r} is unknown or no longer retained")
        return RequestHandle(self, flight, request_id)

    # -- the manager as a provider -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The wrapped provider's name: the manager stands in for it."""
        return str(getattr(self._provider, "name", "provider"))

    def stream(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Submit `request` and yield its provider events: the manager used as a `Provider`.

        An agent given the manager as its provider sends every model call through admission,
        caps and singleflight. Cancelling the consumer leaves the request (the call stops if
        nobody else follows it).

        A call that cannot be shared (see `dedup`) has no one else to serve: its events go
        from the provider to the caller in the caller's own task, with no task of the manager's
        and no hop between tasks per event; admission, the caps, the janitor and the retained
        log (for `attach`) are as for any other.

        Raises:
            QueueFull, RequestCancelled, RequestExpired, ProviderError: as `RequestHandle.result`.
        """
        if self._key(request, None) is None:
            return self._drive(request)
        return self._follow(request)

    async def _follow(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        handle = self.submit(request)
        # Closed here, not left to the garbage collector: the terminal event ends the loop
        # with the generator still suspended, and a finalized one costs a task and a loop wake.
        try:
            async with contextlib.aclosing(handle.events()) as events:
                async for _, event in events:
                    if isinstance(event, StreamDone):
                        return
                    if isinstance(event, StreamCancelled | StreamFailed):
                        _assemble(handle.id, [event])  # raises the matching error
                    yield event  # type: ignore[misc]
        finally:
            handle.cancel()

    async def _drive(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        request_id = uuid.uuid4().hex
        flight = self._admit(request, None, request_id, driven=True)
        flight.task = asyncio.current_task()
        flight.handles += 1
        try:
            self._dispatch()
            while flight.state is FlightState.QUEUED:
                await flight.log.changed()  # dispatched (poked), or ended (its terminal event)
            if flight.state is not FlightState.DONE:
                async with contextlib.aclosing(self._pump(flight)) as events:
                    async for event in events:
                        yield event
        except asyncio.CancelledError:
            # Cancelled while it waited its turn (`_pump` ends the flight itself).
            self._end(flight, flight.terminal or StreamCancelled("the request was cancelled"))
            raise
        finally:
            flight.handles -= 1
            self._end(flight, StreamCancelled("the subscriber left"))  # unless ended already
        _assemble(request_id, flight.log.events()[-1:])  # raises, unless it ended normally

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return the wrapped provider's capabilities for `model`."""
        return self._provider.capabilities(model)

    def _key(self, request: ModelRequest, dedup: bool | None) -> str | None:
        # "off" wins over a caller's opt-in: it is the operator's switch.
        if self._dedup == "off" or dedup is False:
            return None
        if dedup or self._dedup == "always" or deterministic(request):
            return request_key(getattr(self._provider, "name", "provider"), request)
        return None

    def _join(self, key: str | None) -> Flight | None:
        if key is None:
            return None
        flight = self._inflight.get(key)
        if flight is not None:
            self._dedup_hits += 1
            return flight
        cached = self._cache.get(key)
        if cached is None:
            return None
        expires_at, events = cached
        if expires_at <= self._clock.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        self._cache_hits += 1
        replay = Flight(ModelRequest("", ()), key, self._clock.monotonic(), state=FlightState.DONE)
        for event in events:
            replay.log.append(event)
        replay.log.close()
        replay.finished_at = self._clock.monotonic()
        return replay

    # -- running -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while (
            self._queue and len(self._running) < self._max_running and self._state is State.RUNNING
        ):
            flight = self._queue.popleft()
            if flight.state is not FlightState.QUEUED:
                continue  # reaped while it waited
            if flight.handles == 0:
                self._end(flight, StreamCancelled("every subscriber left before it started"))
                continue
            flight.state = FlightState.RUNNING
            flight.started_at = self._clock.monotonic()
            self._running.add(flight)
            if flight.driven:
                flight.log.poke()  # its subscriber's own task runs it
                continue
            task = asyncio.get_running_loop().create_task(self._run(flight))
            flight.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, flight: Flight) -> None:
        async for _ in self._pump(flight):
            pass  # the events are in the log, for the subscribers

    async def _pump(self, flight: Flight) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the flight's call into its log, yield each event, and end the flight.

        A flight task runs it through; a driven call's own task passes each event on. A stop
        cancels the running task, and the task's cancellation ends the call only if it is the
        manager's own (it set a terminal event); a driven task is cancelled only while it waits
        here (`inside`), and a stop that came while it was out ends the call when it is back.
        """
        terminal: StreamEvent = StreamCancelled("the subscriber left")
        events: AsyncIterator[ProviderEvent] | None = None
        try:
            flight.inside = True
            async with self._streams:
                events = self._provider.stream(flight.request)
                while flight.terminal is None:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    if not isinstance(event, Usage):
                        flight.emitted = True
                    flight.log.append(event)
                    flight.inside = False
                    yield event
                    flight.inside = True
            terminal = flight.terminal or StreamDone()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Absorb only the cancellations the manager issued (they carry a terminal event).
            if flight.terminal is None or task is None or task.uncancel() > 0:
                flight.terminal = flight.terminal or StreamCancelled("the request was cancelled")
                terminal = flight.terminal
                raise
            terminal = flight.terminal
        except Exception as exc:
            terminal = StreamFailed(ErrorInfo.from_exception(exc))
        finally:
            flight.inside = False
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                # Closing a stream given up on: its own failure would only hide why.
                with contextlib.suppress(Exception):
                    await aclose()
            self._end(flight, terminal)

    def _end(self, flight: Flight, terminal: StreamEvent) -> None:
        if flight.state is FlightState.DONE:
            return
        now = self._clock.monotonic()
        if flight.started_at is not None:
            # A running average of processing time, for QueueFull's retry_after estimate.
            self._mean_run_s = 0.9 * self._mean_run_s + 0.1 * (now - flight.started_at)
        flight.state = FlightState.DONE
        flight.finished_at = now
        self._running.discard(flight)
        if not flight.log.closed:
            flight.log.append(terminal)
            flight.log.close()
        if flight.key is not None and self._inflight.get(flight.key) is flight:
            del self._inflight[flight.key]  # the next identical request starts fresh
            if isinstance(terminal, StreamDone) and self._cache_ttl_s is not None:
                self._remember(flight)
        self._dispatch()

    def _remember(self, flight: Flight) -> None:
        assert flight.key is not None
        assert self._cache_ttl_s is not None
        self._cache[flight.key] = (
            self._clock.monotonic() + self._cache_ttl_s,
            flight.log.events(),
        )
        self._cache.move_to_end(flight.key)
        while len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def _release_handle(self, flight: Flight) -> None:
        flight.handles -= 1
        if flight.handles > 0 or flight.state is FlightState.DONE:
            return
        # The last subscriber left: stop the work nobody will read.
        self._stop(flight, StreamCancelled("every subscriber left"))

    def _stop(self, flight: Flight, terminal: StreamEvent) -> None:
        if flight.state is FlightState.QUEUED:
            self._end(flight, terminal)
        elif flight.task is not None and flight.terminal is None:
            flight.terminal = terminal
            # A driven call is stopped where it waits on the provider; out in its caller's code
            # it is not cut, and it stops when it comes back (it looks at `terminal`).
            if not flight.driven or flight.inside:
                flight.task.cancel()

    # -- janitor -------------------------------------------------------------------------------

    def reap(self) -> int:
        """Fail requests past their queue or processing timeout; drop expired logs.

        Returns how many requests it ended. The janitor calls this every `janitor_interval_s`;
        tests with a manual clock call it directly.
        """
        now = self._clock.monotonic()
        ended = 0
        for flight in list(self._queue):
            if (
                flight.state is FlightState.QUEUED
                and now - flight.enqueued_at > self._queue_timeout_s
            ):
                waited = now - flight.enqueued_at
                self._end(flight, _expired(f"timed out in queue after {waited:.1f} s"))
                ended += 1
        for flight in list(self._running):
            assert flight.started_at is not None
            if now - flight.started_at > self._processing_timeout_s and flight.terminal is None:
                ran = now - flight.started_at
                self._stop(flight, _expired(f"timed out during processing after {ran:.1f} s"))
                ended += 1
        for request_id, flight in list(self._by_id.items()):
            done = flight.state is FlightState.DONE and flight.finished_at is not None
            if done and flight.handles == 0 and now - flight.finished_at > self._retention_s:  # type: ignore[operator]
                del self._by_id[request_id]
        for key, (expires_at, _) in list(self._cache.items()):
            if expires_at <= now:
                del self._cache[key]
        self._reaped += ended
        return ended

    def _next_round_in(self) -> float | None:
        """Seconds until something can next expire (at least the interval); None: nothing can.

        Bounded by the shortest timeout, so that what is submitted, started or finished while
        the janitor sleeps is looked at in time: its deadline is at least that far away.
        """
        now = self._clock.monotonic()
        dues = [f.enqueued_at + self._queue_timeout_s for f in self._queue]
        dues += [
            f.started_at + self._processing_timeout_s
            for f in self._running
            if f.started_at is not None and f.terminal is None
        ]
        for flight in self._by_id.values():
            if flight.state is FlightState.DONE and flight.finished_at is not None:
                # Held by a subscriber: looked at each interval until it is let go.
                held = flight.handles > 0
                dues.append(now if held else flight.finished_at + self._retention_s)
        dues += [expires_at for expires_at, _ in self._cache.values()]
        if not dues and not self._by_id:
            return None
        timeouts = [self._queue_timeout_s, self._processing_timeout_s, self._retention_s]
        if self._cache_ttl_s is not None:
            timeouts.append(self._cache_ttl_s)
        longest = max(min(timeouts), self._janitor_interval_s)
        if not dues:
            return longest
        return min(max(min(dues) - now, self._janitor_interval_s), longest)

    async def _janitor_loop(self) -> None:
        # Rounds come when something can expire, not on a fixed beat: an idle server, or one
        # whose requests are far from every deadline, is not woken for nothing.
        while True:
            wait = self._next_round_in()
            if wait is None:
                self._has_work.clear()
                await self._has_work.wait()  # set by the next submit
                continue
            await self._sleep(wait)
            self.reap()

    # -- statistics and closing ----------------------------------------------------------------

    def statistics(self) -> ManagerStatistics:
        """Return queued, running, streams in use, followers, and the counters."""
        live = [f for f in (*self._running, *self._queue) if f.state is not FlightState.DONE]
        return ManagerStatistics(
            queued=sum(1 for f in self._queue if f.state is FlightState.QUEUED),
            running=len(self._running),
            streams_in_use=self._streams.statistics().in_use,
            followers=sum(max(0, f.handles - 1) for f in live),
            retained=len(self._by_id),
            dedup_hits=self._dedup_hits,
            cache_hits=self._cache_hits,
            reaped=self._reaped,
        )

    def _retry_after_s(self) -> float:
        waiting = len(self._queue) + 1
        return max(0.1, waiting / self._max_running * self._mean_run_s)

    async def aclose(self) -> None:
        """Refuse new requests; end queued and running ones with a final `StreamCancelled`.

        Stops the janitor and awaits every task. Idempotent.
        """
        if self._state in (State.CLOSING, State.CLOSED):
            return
        self._state = State.CLOSING
        while self._queue:
            self._end(self._queue.popleft(), StreamCancelled("the request manager closed"))
        for flight in list(self._running):
            self._stop(flight, StreamCancelled("the request manager closed"))
        if self._janitor is not None:
            self._janitor.cancel()
        pending = [*self._tasks, *([self._janitor] if self._janitor else [])]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._state = State.CLOSED


def _assemble(request_id: str, events: list[StreamEvent]) -> Completion:
    text: list[str] = []
    calls = []
    usage = None
    reason = "stop"
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallDone):
            calls.append(event.call)
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Finish):
            reason = event.reason
        elif isinstance(event, StreamCancelled):
            raise RequestCancelled(f"request {request_id!r} was cancelled: {event.reason}")
        elif isinstance(event, StreamFailed):
            kind = RequestExpired if event.error.type == "RequestExpired" else ProviderError
            raise kind(f"request {request_id!r} failed: {event.error}")
    return Completion("".join(text), tuple(calls), usage, reason)


def _expired(message: str) -> StreamFailed:
    return StreamFailed(ErrorInfo("RequestExpired", message))
