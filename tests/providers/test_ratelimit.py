"""The shared limiter and LimitedProvider on a manual clock: buckets, pauses, caps, cancellation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import pytest

from corral._deadline import current_deadline
from corral._retry import Backoff
from corral.errors import (
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
    UsageError,
)
from corral.providers import (
    Finish,
    LimitedProvider,
    LimiterRegistry,
    ProviderEvent,
    RateLimits,
    TextDelta,
    Usage,
    complete,
)
from corral.testing import ManualClock
from tests.providers.helpers import OK, StubProvider, drain, drain_into, request, settle

NO_JITTER = Backoff(attempts=4, base_s=0.0, max_s=10.0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def limiters(clock: ManualClock) -> Iterator[LimiterRegistry]:
    """A registry on the manual clock; every limiter in it must be idle after the test."""
    registry = LimiterRegistry(clock=clock, sleep=clock.sleep)
    yield registry
    busy = [s for s in registry.statistics() if not s.idle]
    assert not busy, f"limiters not idle after the test: {busy}"


def limited(registry: LimiterRegistry, stub: StubProvider, **limits: object) -> LimitedProvider:
    return LimitedProvider(stub, limits=RateLimits(**limits), registry=registry)  # type: ignore[arg-type]


@pytest.fixture
async def group() -> AsyncIterator[asyncio.TaskGroup]:
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        yield tg


# -- buckets ------------------------------------------------------------------------------------


async def test_requests_per_minute_leave_in_arrival_order_at_the_bucket_rate(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider()
    provider = limited(limiters, stub, rpm=60, rpm_burst=2)  # 1 a second, 2 at once
    async with asyncio.TaskGroup() as tg:
        for i in range(5):
            tg.create_task(complete(provider, request(f"agent {i}")))
        await settle()
        assert stub.seen == ["agent 0", "agent 1"]  # the burst
        assert provider.statistics().waiting == 3
        clock.advance(0.999)
        await settle()
        assert stub.calls == 2
        clock.advance(0.001)
        await settle()
        assert stub.seen[-1] == "agent 2"
        clock.advance(1)
        await settle()
        clock.advance(1)
    assert stub.seen == [f"agent {i}" for i in range(5)]
    assert provider.statistics().idle


async def test_tokens_per_minute_are_estimated_then_corrected_from_usage(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    req = request(max_tokens=57)
    estimate = req.estimated_tokens()
    assert estimate == 60
    # 10 tokens a second, 100 at once: one call of 60 fits, a second must wait 2 s...
    gate = asyncio.Event()
    stub = StubProvider(
        (TextDelta("a"), gate.wait, Usage(10, 5), Finish("stop")),
        OK,
    )
    provider = limited(limiters, stub, tpm=600, tpm_burst=100)
    limiter = provider.limiter(req.model)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(complete(provider, req))
        await settle()
        second = tg.create_task(complete(provider, req))
        await settle()
        assert stub.calls == 1
        # ...unless the first reports using 15 tokens: 45 come back, and 85 are enough.
        gate.set()
        await settle()
        assert stub.calls == 2
        await second
    assert limiter._tpm is not None
    assert limiter._tpm.level == pytest.approx(100 - 15 - 15)  # both corrected to 15


async def test_a_call_larger_than_the_burst_goes_when_full_and_pays_after(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    limiter = limiters.limiter("big", RateLimits(tpm=60, tpm_burst=10))  # 1 token a second
    await limiter.admit(50)  # the bucket was full: it goes, 40 in debt
    waiter = asyncio.ensure_future(limiter.admit(5))
    await settle()
    assert not waiter.done()
    clock.advance(44.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)  # 45 s: the debt of 40 is paid, and 5 more earned
    await waiter


async def test_a_retry_goes_ahead_of_first_time_callers(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    limiter = limiters.limiter("k", RateLimits(rpm=60))  # one a second
    order: list[str] = []

    async def caller(name: str, *, retry: bool = False) -> None:
        await limiter.admit(1, retry=retry)
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        for name, retry in (("a", False), ("b", False), ("c", False), ("r1", True), ("r2", True)):
            tg.create_task(caller(name, retry=retry))
            await settle()
        for _ in range(4):
            clock.advance(1)
            await settle()
    # "b" was already at the head, waiting for the bucket; the retries come next, in order.
    assert order == ["a", "b", "r1", "r2", "c"]


# -- 429: one pause for every caller --------------------------------------------------------------


async def test_a_429_pauses_every_caller_until_retry_after(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((RateLimited("slow down", retry_after_s=2.0),), OK, OK)
    provider = limited(limiters, stub, backoff=Backoff(base_s=0.1, rng=random.Random(1)))
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(complete(provider, request("first")))
        await settle()
        tg.create_task(complete(provider, request("later")))
        await settle()
        stats = provider.statistics()
        assert (stats.rate_limited, stats.paused_until, stats.backing_off, stats.waiting) == (
            1,
            2.0,
            1,
            1,
        )
        assert stub.calls == 1  # "later" waits for the pause though it never saw a 429
        clock.advance(2.0)
        await settle()
        assert stub.seen == ["first", "later"]
        assert not first.done()  # Retry-After plus a jitter draw: it comes back after the pause
        clock.advance(0.1)
        await first
    assert stub.seen == ["first", "later", "first"]
    stats = provider.statistics()
    assert (stats.retries, stats.paused_until) == (1, None)


async def test_a_429_without_retry_after_pauses_by_the_backoff_doubling(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    backoff = Backoff(attempts=5, base_s=1.0, max_s=10.0)
    limiter = limiters.limiter("k", RateLimits(backoff=backoff))
    assert limiter.record_rate_limited(None) == 1.0
    assert limiter.record_rate_limited(None) == 2.0
    assert limiter.record_rate_limited(None) == 4.0
    assert limiter.statistics().paused_until == 4.0
    limiter.record_success()
    assert limiter.record_rate_limited(None) == 1.0
    clock.advance(4.0)
    assert limiter.statistics().paused_until is None


async def test_a_pause_longer_than_the_backoff_cap_fails_fast(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((RateLimited("daily quota", retry_after_s=3600),))
    provider = limited(limiters, stub, backoff=NO_JITTER)
    with pytest.raises(RateLimited, match="daily quota"):
        await complete(provider, request())
    with pytest.raises(RateLimited, match="paused for another") as caught:
        await complete(provider, request())
    assert caught.value.retry_after_s == pytest.approx(3600)
    assert stub.calls == 1


async def test_a_request_bucket_resumes_slowly_after_a_pause(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    limiter = limiters.limiter("k", RateLimits(rpm=60, rpm_burst=3))
    limiter.record_rate_limited(1.0)
    clock.advance(1.0)
    waiter = asyncio.ensure_future(limiter.admit(1))
    await settle()
    assert not waiter.done()  # emptied by the 429, nothing earned during the pause
    clock.advance(1.0)
    await waiter


# -- retries and the stream rule ----------------------------------------------------------------


async def test_unavailable_is_retried_and_rejected_is_not(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider(
        (ProviderUnavailable("502"),),
        (ProviderUnavailable("503"),),
        OK,
        (ProviderRejected("400: bad request"),),
    )
    provider = limited(limiters, stub, backoff=NO_JITTER)
    done = await complete(provider, request())
    assert done.text == "ok"
    with pytest.raises(ProviderRejected):
        await complete(provider, request())
    assert stub.calls == 4
    assert provider.statistics().retries == 2


async def test_retries_stop_after_the_last_attempt(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider(*[(ProviderUnavailable(f"down {i}"),) for i in range(5)])
    provider = limited(limiters, stub, backoff=Backoff(attempts=3, base_s=0.0))
    with pytest.raises(ProviderUnavailable, match="down 2"):
        await complete(provider, request())
    assert stub.calls == 3


async def test_output_then_failure_is_stream_broken_and_not_retried(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((TextDelta("half an ans"), ProviderUnavailable("reset")), OK)
    provider = limited(limiters, stub, backoff=NO_JITTER)
    seen: list[ProviderEvent] = []
    with pytest.raises(StreamBroken) as caught:
        await drain_into(provider.stream(request()), seen)
    assert seen == [TextDelta("half an ans")]
    assert isinstance(caught.value.__cause__, ProviderUnavailable)
    assert stub.calls == 1


async def test_usage_alone_is_not_output_so_the_call_is_retried(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((Usage(5, 0), ProviderUnavailable("reset")), OK)
    provider = limited(limiters, stub, backoff=NO_JITTER)
    events = await drain(provider.stream(request()))
    assert events == [Usage(5, 0), TextDelta("ok"), Usage(10, 5), Finish("stop")]
    assert stub.calls == 2


async def test_no_retry_would_end_past_the_deadline(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((RateLimited("429", retry_after_s=5),), OK)
    provider = limited(limiters, stub, backoff=NO_JITTER)
    deadline = asyncio.get_running_loop().time() + 3
    with pytest.raises(RateLimited, match="429"):
        await drain(provider.stream(request(), deadline=deadline))
    assert stub.calls == 1
    # The pause still holds the key: a caller with a short deadline fails without a call.
    with pytest.raises(RateLimited, match="would pass the deadline"):
        await drain(provider.stream(request(), deadline=deadline))
    assert stub.calls == 1


async def test_the_deadline_of_the_running_tool_call_bounds_retries(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((ProviderUnavailable("503", retry_after_s=5),), OK)
    provider = limited(limiters, stub, backoff=NO_JITTER)
    token = current_deadline.set(asyncio.get_running_loop().time() + 3)
    try:
        with pytest.raises(ProviderUnavailable, match="503"):
            await complete(provider, request())
    finally:
        current_deadline.reset(token)
    assert stub.calls == 1


# -- concurrency cap ----------------------------------------------------------------------------


async def test_the_concurrency_cap_holds_for_the_whole_stream(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    gate = asyncio.Event()
    stub = StubProvider(*[(TextDelta("x"), gate.wait, Finish("stop"))] * 5)
    provider = limited(limiters, stub, max_concurrency=2)
    async with asyncio.TaskGroup() as tg:
        for i in range(5):
            tg.create_task(complete(provider, request(f"{i}")))
        await settle()
        stats = provider.statistics()
        assert (stub.open, stats.in_flight, stats.waiting) == (2, 2, 3)
        gate.set()
    assert stub.calls == 5
    assert stub.max_open == 2


async def test_two_wrappers_of_one_key_share_one_limiter(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    gate = asyncio.Event()
    stub = StubProvider(*[(gate.wait, Finish("stop"))] * 4)
    a = limited(limiters, stub, max_concurrency=1)
    b = limited(limiters, stub, max_concurrency=1)
    async with asyncio.TaskGroup() as tg:
        for provider in (a, b, a, b):
            tg.create_task(complete(provider, request()))
        await settle()
        assert stub.open == 1
        gate.set()
    assert stub.max_open == 1
    with pytest.raises(UsageError, match="already exists"):
        limited(limiters, stub, max_concurrency=3).limiter("gpt-4o")


# -- cancellation ---------------------------------------------------------------------------------


async def test_cancelled_while_waiting_for_a_slot_or_admission_takes_nothing(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    gate = asyncio.Event()
    stub = StubProvider((gate.wait, Finish("stop")))
    # tpm too: the head then sleeps in a task raced against token refunds.
    provider = limited(limiters, stub, rpm=60, tpm=60_000, max_concurrency=2)
    async with asyncio.TaskGroup() as tg:
        holder = tg.create_task(complete(provider, request("holder")))  # slot 1, the token
        await settle()
        head = tg.create_task(complete(provider, request("head")))  # slot 2, sleeps 1 s
        await settle()
        behind = tg.create_task(complete(provider, request("behind")))  # waits for a slot
        await settle()
        assert provider.statistics().waiting == 2  # one in admission, one for a slot
        head.cancel()
        behind.cancel()
        await settle()
        stats = provider.statistics()
        assert (stats.in_flight, stats.waiting) == (1, 0)
        last = tg.create_task(complete(provider, request("last")))
        await settle()
        # "head" never took its token: "last" gets it at t=1, not t=2.
        clock.advance(1)
        await settle()
        assert stub.seen == ["holder", "last"]
        gate.set()
        await holder
        await last
    assert head.cancelled()
    assert behind.cancelled()


async def test_cancelled_while_backing_off_or_streaming_frees_everything(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    gate = asyncio.Event()
    stub = StubProvider((ProviderUnavailable("down"),), (TextDelta("x"), gate.wait))
    provider = limited(limiters, stub, max_concurrency=1, backoff=Backoff(base_s=5.0))
    backing = asyncio.ensure_future(complete(provider, request()))
    await settle()
    assert provider.statistics().backing_off == 1
    backing.cancel()
    await settle()
    assert provider.statistics().idle
    streaming = asyncio.ensure_future(complete(provider, request()))
    await settle()
    assert stub.open == 1
    streaming.cancel()
    await settle()
    assert stub.open == 0
    assert provider.statistics().idle


async def test_a_consumer_that_stops_early_releases_the_slot(
    clock: ManualClock, limiters: LimiterRegistry
) -> None:
    stub = StubProvider((TextDelta("a"), TextDelta("b"), Finish("stop")))
    provider = limited(limiters, stub, max_concurrency=1)
    stream = provider.stream(request())
    async for _ in stream:
        break
    assert provider.statistics().in_flight == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert stub.open == 0
    assert provider.statistics().idle


def test_limits_are_validated() -> None:
    with pytest.raises(UsageError, match="rpm"):
        RateLimits(rpm=0)
    with pytest.raises(UsageError, match="max_concurrency"):
        RateLimits(max_concurrency=0)
