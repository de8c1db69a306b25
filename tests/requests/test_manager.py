from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.errors import ProviderUnavailable, QueueFull, RequestCancelled, RequestExpired
from corral.messages import Message
from corral.providers import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    Usage,
)
from corral.requests import (
    RequestManager,
    StreamCancelled,
    StreamDone,
    StreamFailed,
)
from corral.testing import ManualClock
from tests.support import unclosed_async_generators


class FakeProvider:
    """Streams `chunks` text deltas per call; each waits for `step` (an Event) if given."""

    name = "fake"

    def __init__(self, chunks: int = 5, *, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.calls = 0
        self.open = 0
        self.max_open = 0
        self.cancelled = 0
        self.step: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def _stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        self.calls += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self.started.set()
        try:
            for i in range(self.chunks):
                if self.step is not None:
                    await self.step.wait()
                    self.step.clear()
                if self.fail_after is not None and i == self.fail_after:
                    raise ProviderUnavailable("the fake provider fell over")
                await asyncio.sleep(0)
                yield TextDelta(f"{request.messages[-1].content}-{i} ")
            yield Usage(3, self.chunks)
            yield Finish("stop")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.open -= 1

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        return self._stream(request)

    def capabilities(self, model: str) -> ModelCapabilities:
        return ModelCapabilities()

    async def aclose(self) -> None:
        pass


def on_clock(clock: ManualClock, provider: FakeProvider, **options: Any) -> RequestManager:
    """A manager whose timeouts and janitor run on the test's manual clock."""
    return RequestManager(provider, clock=clock, sleep=clock.sleep, **options)


def req(text: str = "hi", *, temperature: float | None = 0.0) -> ModelRequest:
    return ModelRequest("m", (Message.user(text),), temperature=temperature)


async def drain(handle) -> list[object]:
    return [event async for _, event in handle.events()]


async def assert_idle(manager: RequestManager) -> None:
    stats = manager.statistics()
    assert stats.idle, stats


async def test_a_hundred_identical_requests_make_one_provider_call() -> None:
    provider = FakeProvider(chunks=20)
    async with RequestManager(provider) as manager:
        handles = [manager.submit(req()) for _ in range(100)]
        sequences = await asyncio.gather(*(drain(h) for h in handles))
        assert provider.calls == 1
        assert all(seq == sequences[0] for seq in sequences)
        assert isinstance(sequences[0][-1], StreamDone)
        assert len(sequences[0]) == 20 + 3  # deltas, usage, finish, done
        stats = manager.statistics()
        assert stats.dedup_hits == 99
        await assert_idle(manager)


async def test_non_deterministic_requests_are_not_shared_unless_asked() -> None:
    provider = FakeProvider(chunks=2)
    async with RequestManager(provider) as manager:
        a = manager.submit(req(temperature=0.7))
        b = manager.submit(req(temperature=0.7))
        c = manager.submit(req(temperature=0.7), dedup=True)
        d = manager.submit(req(temperature=0.7), dedup=True)
        await asyncio.gather(*(h.result() for h in (a, b, c, d)))
        assert provider.calls == 3
    provider = FakeProvider(chunks=2)
    async with RequestManager(provider, dedup="off") as manager:
        await asyncio.gather(*(manager.submit(req()).result() for _ in range(3)))
        assert provider.calls == 3


async def test_a_late_joiner_gets_the_whole_sequence() -> None:
    provider = FakeProvider(chunks=10)
    provider.step = asyncio.Event()
    async with RequestManager(provider) as manager:
        first = manager.submit(req())
        seen: list[object] = []
        eighty_percent = asyncio.Event()

        async def read_first() -> None:
            async for _, event in first.events():
                seen.append(event)
                if len(seen) == 8:
                    eighty_percent.set()  # 80% of the stream has gone by; hold the rest
                    await late_joined.wait()
                if len(seen) < 10:
                    assert provider.step is not None
                    provider.step.set()

        late_joined = asyncio.Event()
        assert provider.step is not None
        provider.step.set()
        reader = asyncio.create_task(read_first())
        await eighty_percent.wait()
        late = manager.submit(req())
        late_joined.set()
        late_events = await drain(late)
        await reader
        assert late_events == seen
        assert provider.calls == 1


async def test_the_first_caller_cancels_and_the_others_still_finish() -> None:
    provider = FakeProvider(chunks=5)
    provider.step = asyncio.Event()
    async with RequestManager(provider) as manager:
        first, second, third = (manager.submit(req()) for _ in range(3))
        await provider.started.wait()
        first.cancel()
        events = await drain(first)
        assert isinstance(events[-1], StreamCancelled)
        with pytest.raises(RequestCancelled):
            await first.result()

        async def pump() -> None:
            while provider.open:
                assert provider.step is not None
                provider.step.set()
                await asyncio.sleep(0)

        pumping = asyncio.create_task(pump())
        second_result, third_result = await asyncio.gather(second.result(), third.result())
        await pumping
        assert second_result.text == third_result.text == "hi-0 hi-1 hi-2 hi-3 hi-4 "
        assert provider.cancelled == 0
        await assert_idle(manager)


async def test_when_every_subscriber_cancels_the_provider_call_is_cancelled() -> None:
    provider = FakeProvider(chunks=5)
    provider.step = asyncio.Event()
    async with RequestManager(provider) as manager:
        handles = [manager.submit(req()) for _ in range(3)]
        await provider.started.wait()
        for h in handles:
            h.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert provider.cancelled == 1
        assert provider.open == 0
        # A new identical request starts fresh rather than joining the cancelled call.
        provider.step = None
        result = await manager.submit(req()).result()
        assert result.text.startswith("hi-0")
        assert provider.calls == 2
        await assert_idle(manager)


async def test_a_provider_error_reaches_every_subscriber_and_releases_the_key() -> None:
    provider = FakeProvider(chunks=5, fail_after=2)
    async with RequestManager(provider) as manager:
        handles = [manager.submit(req()) for _ in range(5)]
        sequences = await asyncio.gather(*(drain(h) for h in handles))
        for events in sequences:
            assert isinstance(events[-1], StreamFailed)
            assert events[-1].error.type == "ProviderUnavailable"
        assert all(s == sequences[0] for s in sequences)
        provider.fail_after = None
        result = await manager.submit(req()).result()
        assert result.finish_reason == "stop"
        assert provider.calls == 2


async def test_llm_streams_are_capped() -> None:
    provider = FakeProvider(chunks=3)
    async with RequestManager(
        provider, max_concurrent_requests=50, max_concurrent_llm_streams=4
    ) as manager:
        handles = [manager.submit(req(f"q{i}")) for i in range(40)]
        await asyncio.gather(*(h.result() for h in handles))
        assert provider.calls == 40
        assert provider.max_open == 4
        await assert_idle(manager)


async def test_a_full_queue_refuses_at_once_with_a_retry_after() -> None:
    provider = FakeProvider(chunks=1)
    provider.step = asyncio.Event()
    async with RequestManager(provider, max_queue=3, max_concurrent_requests=1) as manager:
        running = manager.submit(req("a"))
        await provider.started.wait()
        queued = [manager.submit(req(f"q{i}")) for i in range(3)]
        with pytest.raises(QueueFull) as refused:
            manager.submit(req("one too many"))
        assert refused.value.retry_after_s > 0
        assert manager.statistics().queued == 3
        # An identical request joins the running call instead of queueing.
        follower = manager.submit(req("a"))
        for h in (running, follower, *queued):
            h.cancel()
        await asyncio.sleep(0)
    assert manager.statistics().running == 0


async def test_the_janitor_reaps_requests_that_waited_or_ran_too_long() -> None:
    clock = ManualClock()
    provider = FakeProvider(chunks=3)
    provider.step = asyncio.Event()
    manager = on_clock(
        clock,
        provider,
        max_concurrent_requests=1,
        queue_timeout_s=5,
        processing_timeout_s=10,
    )
    async with manager:
        running = manager.submit(req("long"))
        await provider.started.wait()
        waiting = manager.submit(req("waits"))
        clock.advance(6)
        assert manager.reap() == 1  # the queued one: 6 s > 5 s in queue
        events = await drain(waiting)
        assert isinstance(events[-1], StreamFailed)
        assert "timed out in queue" in events[-1].error.message
        with pytest.raises(RequestExpired):
            await manager.attach(waiting.id).result()
        clock.advance(5)  # the running one has run 11 s > 10 s
        assert manager.reap() == 1
        events = await drain(running)
        assert isinstance(events[-1], StreamFailed)
        assert "timed out during processing" in events[-1].error.message
        assert provider.cancelled == 1
        stats = manager.statistics()
        assert stats.reaped == 2
        assert stats.idle
        # Retention: once expired and unread, the logs are dropped.
        clock.advance(manager._retention_s + 1)
        manager.reap()
        assert manager.statistics().retained == 0


async def test_a_subscriber_resumes_after_the_last_event_it_saw() -> None:
    provider = FakeProvider(chunks=6)
    async with RequestManager(provider) as manager:
        handle = manager.submit(req())
        seen = []
        async for seq, event in handle.events():
            seen.append((seq, event))
            if seq == 3:
                break  # the client disconnected
        resumed = manager.attach(handle.id)
        rest = [pair async for pair in resumed.events(after=3)]
        assert [s for s, _ in seen] == [1, 2, 3]
        assert [s for s, _ in rest][0] == 4
        whole = [pair async for pair in manager.attach(handle.id).events()]
        assert whole == seen + rest


async def test_a_cached_answer_is_replayed_without_a_provider_call() -> None:
    clock = ManualClock()
    provider = FakeProvider(chunks=3)
    async with on_clock(clock, provider, cache_ttl_s=30) as manager:
        first = await drain(manager.submit(req()))
        second = await drain(manager.submit(req()))
        assert provider.calls == 1
        assert second == first
        assert manager.statistics().cache_hits == 1
        clock.advance(31)
        await drain(manager.submit(req()))
        assert provider.calls == 2


async def test_closing_cancels_queued_and_running_requests_with_a_final_event() -> None:
    provider = FakeProvider(chunks=3)
    provider.step = asyncio.Event()
    manager = RequestManager(provider, max_concurrent_requests=1)
    async with manager:
        running = manager.submit(req("a"))
        await provider.started.wait()
        queued = manager.submit(req("b"))
    for handle in (running, queued):
        events = await drain(handle)
        assert isinstance(events[-1], StreamCancelled)
        assert "closed" in events[-1].reason
    assert provider.open == 0


async def test_the_manager_is_itself_a_provider() -> None:
    from corral.providers import complete

    provider = FakeProvider(chunks=4)
    async with RequestManager(provider) as manager:
        answers = await asyncio.gather(*(complete(manager, req()) for _ in range(3)))
        assert provider.calls == 1
        assert {a.text for a in answers} == {"hi-0 hi-1 hi-2 hi-3 "}
        assert manager.capabilities("m").parallel_tool_calls
        provider.fail_after = 1
        with pytest.raises(ProviderUnavailable.__mro__[1]):  # ProviderError
            await complete(manager, req("fails"))
        await assert_idle(manager)


async def test_the_manager_as_a_provider_closes_its_subscription() -> None:
    from corral.providers import complete

    async with RequestManager(FakeProvider(chunks=3)) as manager:
        with unclosed_async_generators() as unclosed:
            await complete(manager, req())
            gc.collect()
        assert unclosed == []


async def test_the_janitor_wakes_when_something_can_expire_and_not_before() -> None:
    clock = ManualClock()
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        await clock.sleep(seconds)

    manager = RequestManager(
        FakeProvider(chunks=2),
        janitor_interval_s=1,
        retention_s=30,
        queue_timeout_s=60,
        processing_timeout_s=600,
        clock=clock,
        sleep=sleep,
    )

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async with manager:
        await settle()
        assert naps == []  # nothing submitted: no round is timed
        await drain(manager.submit(req()))
        await settle()
        # It finished at 0: the janitor's round is timed for its log's retention (30 s), not
        # for the next second.
        assert naps == [30]
        clock.advance(29)
        await settle()
        assert manager.statistics().retained == 1
        assert naps == [30]
        clock.advance(2)
        await settle()
        assert manager.statistics().retained == 0  # dropped by the janitor's own round
        assert naps == [30]
        assert clock.sleepers == 0  # and it waits for the next request
        rounds = len(naps)
        await drain(manager.submit(req("again")))
        await settle()
        assert len(naps) == rounds + 1


async def test_a_request_submitted_while_the_janitor_sleeps_long_is_reaped_in_time() -> None:
    clock = ManualClock()
    provider = FakeProvider(chunks=3)
    manager = on_clock(
        clock,
        provider,
        max_concurrent_requests=1,
        queue_timeout_s=5,
        retention_s=300,
        janitor_interval_s=1,
    )
    async with manager:
        await drain(manager.submit(req("first")))  # its log is kept 300 s
        provider.step = asyncio.Event()
        manager.submit(req("long"))
        await provider.started.wait()
        waiting = manager.submit(req("waits"))  # at most 5 s in the queue
        for _ in range(7):
            clock.advance(1)
            for _ in range(3):
                await asyncio.sleep(0)
        events = await drain(waiting)
        assert isinstance(events[-1], StreamFailed)
        assert "timed out in queue" in events[-1].error.message
        assert manager.statistics().reaped == 1


# -- a call nobody can share runs in its caller's task --------------------------------------------


def unshared(text: str = "hi") -> ModelRequest:
    return req(text, temperature=0.7)  # not deterministic: never shared


async def test_an_unshareable_call_runs_in_its_callers_task() -> None:
    provider = FakeProvider(chunks=3)
    tasks: set[asyncio.Task[object] | None] = set()
    inner = provider._stream

    async def watched(request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        tasks.add(asyncio.current_task())
        async for event in inner(request):
            yield event

    provider._stream = watched  # type: ignore[method-assign]
    async with RequestManager(provider) as manager:
        seen = []
        async for event in manager.stream(unshared()):
            seen.append(event)
            assert manager._tasks == set()  # no task of the manager's runs it
            assert manager.statistics().running == 1
        assert tasks == {asyncio.current_task()}
        assert [type(e).__name__ for e in seen] == ["TextDelta"] * 3 + ["Usage", "Finish"]
        # Its log is retained as any other's: a late `attach` replays it.
        (request_id,) = manager._by_id
        replay = await drain(manager.attach(request_id))
        assert isinstance(replay[-1], StreamDone)
        await assert_idle(manager)


async def test_a_stop_never_cuts_the_callers_own_code_between_events() -> None:
    clock = ManualClock()
    manager = on_clock(clock, FakeProvider(chunks=5), processing_timeout_s=10)
    outside = asyncio.Event()
    async with manager:
        events = manager.stream(unshared())
        first = await anext(events)
        assert isinstance(first, TextDelta)
        # The caller is out in its own code (waiting on its own event) when the call expires:
        # that wait is not cancelled; the call ends when the caller comes back for more.
        waiting = asyncio.ensure_future(outside.wait())
        clock.advance(11)
        assert manager.reap() == 1
        await asyncio.sleep(0)
        assert not waiting.done()
        outside.set()
        await waiting
        with pytest.raises(RequestExpired, match="timed out during processing"):
            await anext(events)
        assert manager._provider.open == 0  # type: ignore[attr-defined]  # its stream closed
        await assert_idle(manager)


async def test_a_driven_call_is_stopped_where_it_waits_on_the_provider() -> None:
    clock = ManualClock()
    provider = FakeProvider(chunks=3)
    provider.step = asyncio.Event()
    manager = on_clock(clock, provider, processing_timeout_s=10)
    async with manager:

        async def consume() -> list[ProviderEvent]:
            return [event async for event in manager.stream(unshared())]

        consuming = asyncio.ensure_future(consume())
        await provider.started.wait()
        clock.advance(11)
        assert manager.reap() == 1
        with pytest.raises(RequestExpired, match="timed out during processing"):
            await consuming
        assert provider.cancelled == 1
        assert provider.open == 0
        await assert_idle(manager)


async def test_driven_calls_wait_their_turn_and_expire_in_the_queue() -> None:
    clock = ManualClock()
    provider = FakeProvider(chunks=2)
    provider.step = asyncio.Event()
    manager = on_clock(clock, provider, max_concurrent_requests=1, queue_timeout_s=5)
    async with manager:

        async def consume(text: str) -> list[ProviderEvent]:
            return [event async for event in manager.stream(unshared(text))]

        first = asyncio.ensure_future(consume("first"))
        await provider.started.wait()
        second = asyncio.ensure_future(consume("second"))
        await asyncio.sleep(0)
        assert manager.statistics().queued == 1
        clock.advance(6)
        assert manager.reap() == 1
        with pytest.raises(RequestExpired, match="timed out in queue"):
            await second
        for _ in range(2):
            provider.step.set()
            await asyncio.sleep(0.01)
        texts = [e.text for e in await first if isinstance(e, TextDelta)]
        assert texts == ["first-0 ", "first-1 "]
        assert provider.calls == 1  # the expired one never reached the provider
        await assert_idle(manager)


async def test_a_driven_call_ends_with_its_caller() -> None:
    provider = FakeProvider(chunks=5)
    provider.step = asyncio.Event()
    async with RequestManager(provider) as manager:
        # The caller cancelled while the call waits on the provider: the cancel is the caller's.
        consuming = asyncio.ensure_future(anext(manager.stream(unshared("a"))))
        await provider.started.wait()
        consuming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consuming
        assert provider.cancelled == 1
        # The caller stopped reading after one event: the provider's stream is closed at once.
        provider.step = None
        events = manager.stream(unshared("b"))
        await anext(events)
        await events.aclose()
        assert provider.open == 0
        await assert_idle(manager)


async def test_closing_the_manager_ends_a_driven_call_with_a_final_error() -> None:
    provider = FakeProvider(chunks=3)
    provider.step = asyncio.Event()
    manager = RequestManager(provider)
    async with manager:
        consuming = asyncio.ensure_future(anext(manager.stream(unshared())))
        await provider.started.wait()
    with pytest.raises(RequestCancelled, match="the request manager closed"):
        await consuming
    assert provider.open == 0
