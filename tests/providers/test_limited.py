"""LimitedProvider over real HTTP: retries against the fake servers, and the 429 storm."""

from __future__ import annotations

import asyncio
import bisect
import gc
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from corral._retry import Backoff
from corral.errors import ProviderUnavailable, StreamBroken
from corral.providers import LimitedProvider, LimiterRegistry, ProviderEvent, RateLimits, complete
from corral.providers.anthropic import AnthropicProvider
from corral.providers.openai import OpenAIProvider
from tests.fake_llm import Arrival, FakeAnthropic, FakeOpenAI, Reply, ServerRateLimit
from tests.providers.helpers import drain, drain_into, request, text_of
from tests.servers import free_port

FAST = Backoff(attempts=4, base_s=0.02, max_s=1.0)


@pytest.fixture
def limiters() -> LimiterRegistry:
    return LimiterRegistry()


@pytest.fixture
async def openai_fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    async with fake.serve() as url:
        yield fake, url


def openai_limited(url: str, limiters: LimiterRegistry, **limits: object) -> LimitedProvider:
    inner = OpenAIProvider(base_url=url, api_key="test", timeout_s=5)
    limits.setdefault("backoff", FAST)
    return LimitedProvider(inner, limits=RateLimits(**limits), registry=limiters)  # type: ignore[arg-type]


async def test_a_429_with_retry_after_is_retried_after_it(
    openai_fake: tuple[FakeOpenAI, str], limiters: LimiterRegistry
) -> None:
    fake, url = openai_fake
    fake.add(Reply(status=429, retry_after="0.2"), Reply(text="after the wait"))
    async with openai_limited(url, limiters) as provider:
        done = await complete(provider, request())
        stats = provider.statistics()
    assert done.text == "after the wait"
    first, second = fake.arrivals
    assert second.at - first.at >= 0.2
    assert (stats.retries, stats.rate_limited) == (1, 1)
    assert stats.idle


@pytest.mark.parametrize(
    "fault",
    [
        Reply(status=500),
        Reply(status=503),
        Reply(text="never seen", cut_after=1),  # cut before the first token
        Reply(text="late", first_token_delay_s=2),  # read timeout before the first token
    ],
    ids=["500", "503", "cut-before-output", "slow-first-token"],
)
async def test_failures_before_output_are_retried(
    openai_fake: tuple[FakeOpenAI, str], limiters: LimiterRegistry, fault: Reply
) -> None:
    fake, url = openai_fake
    fake.add(fault, Reply(text="second try"))
    inner = OpenAIProvider(base_url=url, api_key="test", timeout_s=0.5)
    async with LimitedProvider(
        inner, limits=RateLimits(backoff=FAST), registry=limiters
    ) as provider:
        done = await complete(provider, request())
        assert provider.statistics().idle
    assert done.text == "second try"
    assert len(fake.arrivals) == 2


async def test_a_cut_after_output_is_stream_broken_and_not_retried(
    openai_fake: tuple[FakeOpenAI, str], limiters: LimiterRegistry
) -> None:
    fake, url = openai_fake
    fake.add(Reply(text="abcdefghi", cut_after=3), Reply(text="never asked for"))
    async with openai_limited(url, limiters) as provider:
        seen: list[ProviderEvent] = []
        with pytest.raises(StreamBroken):
            await drain_into(provider.stream(request()), seen)
        assert provider.statistics().idle
    assert text_of(seen) == "abcdef"
    assert len(fake.arrivals) == 1


async def test_connection_refused_is_retried_then_reported(limiters: LimiterRegistry) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    backoff = Backoff(attempts=3, base_s=0.01, max_s=0.05)
    async with openai_limited(url, limiters, backoff=backoff) as provider:
        with pytest.raises(ProviderUnavailable, match="connection failed"):
            await drain(provider.stream(request()))
        assert provider.statistics().retries == 2


async def test_anthropic_overload_is_retried(limiters: LimiterRegistry) -> None:
    fake = FakeAnthropic(Reply(status=529), Reply(text="x", error_event="overloaded_error"))
    fake.add(Reply(text="at last"))
    async with fake.serve() as url:
        inner = AnthropicProvider(base_url=url, api_key="test", timeout_s=5)
        async with LimitedProvider(
            inner, limits=RateLimits(backoff=FAST), registry=limiters
        ) as provider:
            done = await complete(provider, request(model="claude-fake-1"))
    assert done.text == "at last"
    assert len(fake.arrivals) == 3


# -- the 429 storm ------------------------------------------------------------------------------

AGENTS = 30
SERVER_RATE = ServerRateLimit(per_s=10, burst=2)
CLIENT_BURST = 5  # the client's idea of the burst is a little off: the first instant gets 429s


def max_in_window(times: list[float], window_s: float) -> int:
    """The most arrivals in any window of `window_s` (windows start at an arrival)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times))


async def test_a_storm_of_agents_shares_one_limit_and_spreads_its_retries(
    limiters: LimiterRegistry,
) -> None:
    fake = FakeOpenAI(default=Reply(text="done"))
    start = asyncio.Event()
    async with fake.serve() as url:
        # Warm up the SDK's lazy paths first: a cold first call can take longer than the client
        # bucket's refill, which would let more of the first burst out before the first 429.
        async with OpenAIProvider(base_url=url, api_key="test") as warm:
            await complete(warm, request("warm-up"))
        fake.arrivals.clear()
        fake.limit(SERVER_RATE)
        # A full collection of the heap the SDKs build (their pydantic models) stalls the loop
        # for ~0.3 s; one in the middle of the storm would let a burst out at once. Collect now.
        gc.collect()
        provider = openai_limited(
            url,
            limiters,
            rpm=SERVER_RATE.per_s * 60,
            rpm_burst=CLIENT_BURST,
            backoff=Backoff(attempts=6, base_s=0.1, max_s=2.0),
        )

        async def agent(i: int) -> str:
            await start.wait()
            done = await complete(provider, request(f"agent {i}"))
            return done.text

        async with provider, asyncio.timeout(20), asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(agent(i)) for i in range(AGENTS)]
            await asyncio.sleep(0)
            began = time.monotonic()
            start.set()  # thirty agents at the same instant
        elapsed = time.monotonic() - began
        stats = provider.statistics()

    # Every agent got its answer.
    assert [t.result() for t in tasks] == ["done"] * AGENTS
    assert stats.idle
    accepted = [a.at for a in fake.arrivals if not a.limited]
    refused = [a for a in fake.arrivals if a.limited]
    assert len(accepted) == AGENTS
    # The server never saw more than its rate plus burst, in any window; counting the requests
    # it refused too, never more than the client's own rate plus its burst.
    for window in (0.25, 0.5, 1.0):
        allowed = SERVER_RATE.per_s * window + SERVER_RATE.burst
        assert max_in_window(accepted, window) <= allowed
        every = [a.at for a in fake.arrivals]
        assert max_in_window(every, window) <= SERVER_RATE.per_s * window + CLIENT_BURST
    # Few 429s: the excess of the first instant (the client's burst beyond the server's: 3, and
    # what the client's bucket earned before the first 429 came back), then never a second wave.
    assert 1 <= len(refused) <= CLIENT_BURST
    assert stats.rate_limited == len(refused)
    retries = _retry_arrivals(fake.arrivals)
    assert len(retries) == len(refused)
    assert max(a.at for a in refused) < min(retries)
    # The retries are spread out, not synchronized.
    gaps = [b - a for a, b in zip(retries, retries[1:], strict=False)]
    assert min(gaps, default=1.0) > 0.02, f"retries arrived together: gaps {gaps}"
    if len(retries) > 2:
        assert statistics.stdev(retries) > 0.03
    assert elapsed < 10


def _retry_arrivals(arrivals: list[Arrival]) -> list[float]:
    """When the requests of agents that had been refused came back, sorted."""
    refused_tags = {a.tag for a in arrivals if a.limited}
    times: list[float] = []
    for tag in refused_tags:
        mine = [a for a in arrivals if a.tag == tag]
        times.extend(a.at for a in mine[1:])
    return sorted(times)
