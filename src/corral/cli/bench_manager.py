"""`corral bench manager`: the request manager under 1,000 concurrent requests.

Four measurements against an in-process fake provider with a fixed latency, so the figures are
the manager's own: (1) 1,000 identical requests (one provider call; wall time next to one
stream's); (2) 1,000 distinct requests through 50 stream slots at 50 ms each (never more than 50
open; wall time next to the ideal 1,000 / 50 x 50 ms); (3) the latency the manager adds to a
request while it carries 1,000 others (median and p99); (4) peak memory of 1,000 subscribers
reading one stream of 2,000 events.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from corral.messages import Message
from corral.providers import Finish, ModelCapabilities, ModelRequest, ProviderEvent, TextDelta
from corral.requests import RequestManager

__all__ = ["ManagerFigures", "run_manager_bench"]


class LatencyProvider:
    """Waits `latency_s`, then streams `chunks` deltas; counts calls and open streams."""

    name = "latency"

    def __init__(self, *, latency_s: float, chunks: int) -> None:
        self.latency_s = latency_s
        self.chunks = chunks
        self.calls = 0
        self.open = 0
        self.max_open = 0
        self.started_at: dict[str, float] = {}
        self.first_at: dict[str, float] = {}

    async def _stream(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        tag = request.messages[-1].content
        self.started_at[tag] = time.perf_counter()
        self.calls += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            for i in range(self.chunks):
                if i == 0:
                    self.first_at[tag] = time.perf_counter()
                yield TextDelta("x")
            yield Finish("stop")
        finally:
            self.open -= 1

    def stream(self, request: ModelRequest) -> AsyncIterator[ProviderEvent]:
        return self._stream(request)

    def capabilities(self, model: str) -> ModelCapabilities:
        return ModelCapabilities()

    async def aclose(self) -> None:
        pass


def _request(tag: str) -> ModelRequest:
    return ModelRequest("fake", (Message.user(tag),), temperature=0)


@dataclass(frozen=True, slots=True)
class ManagerFigures:
    """What `corral bench manager` measured."""

    identical_wall_ms: float
    identical_one_stream_ms: float
    identical_provider_calls: int
    distinct_wall_ms: float
    distinct_ideal_ms: float
    distinct_max_open: int
    added_median_ms: float
    added_p99_ms: float
    fanout_peak_mb: float


async def _identical(n: int, latency_s: float) -> tuple[float, float, int]:
    alone = LatencyProvider(latency_s=latency_s, chunks=20)
    async with RequestManager(alone) as manager:
        t0 = time.perf_counter()
        await manager.submit(_request("one")).result()
        one = time.perf_counter() - t0
    provider = LatencyProvider(latency_s=latency_s, chunks=20)
    async with RequestManager(provider, max_queue=n) as manager:
        t0 = time.perf_counter()
        handles = [manager.submit(_request("same")) for _ in range(n)]
        await asyncio.gather(*(h.result() for h in handles))
        wall = time.perf_counter() - t0
    return wall * 1e3, one * 1e3, provider.calls


async def _distinct(n: int, streams: int, latency_s: float) -> tuple[float, float, int]:
    provider = LatencyProvider(latency_s=latency_s, chunks=5)
    async with RequestManager(
        provider, max_queue=n, max_concurrent_requests=n, max_concurrent_llm_streams=streams
    ) as manager:
        t0 = time.perf_counter()
        handles = [manager.submit(_request(f"q{i}")) for i in range(n)]
        await asyncio.gather(*(h.result() for h in handles))
        wall = time.perf_counter() - t0
    return wall * 1e3, n / streams * latency_s * 1e3, provider.max_open


class _HeldProvider(LatencyProvider):
    """Streams whose first event waits for `release`: they hold the manager's slots open."""

    def __init__(self) -> None:
        super().__init__(latency_s=0.0, chunks=3)
        self.release = asyncio.Event()

    async def _stream(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        if request.messages[-1].content.startswith("held"):
            await self.release.wait()
        async for event in super()._stream(request):
            yield event


async def _added_latency(n: int, probes: int = 300) -> tuple[float, float]:
    # With n requests in flight (their streams held open), issue probes one after another and
    # time each from submit() to its first event, against the same probe sent straight to the
    # provider: the difference is what the manager adds (admission, key, dispatch, one task hop,
    # delivery through the log) while it carries n requests.
    provider = _HeldProvider()
    direct: list[float] = []
    managed: list[float] = []
    async with RequestManager(
        provider, max_queue=n, max_concurrent_requests=n + 1, max_concurrent_llm_streams=n + 1
    ) as manager:
        held = [manager.submit(_request(f"held{i}")) for i in range(n)]
        await asyncio.sleep(0)  # let the held streams start
        for i in range(probes):
            issued = time.perf_counter()
            stream = provider._stream(_request(f"d{i}"))  # an async generator: closed below
            async for _ in stream:
                direct.append(time.perf_counter() - issued)
                break
            await stream.aclose()
            issued = time.perf_counter()
            handle = manager.submit(_request(f"m{i}"))
            async for _ in handle.events():
                managed.append(time.perf_counter() - issued)
                break
            handle.cancel()
        assert manager.statistics().running >= n
        provider.release.set()
        await asyncio.gather(*(h.result() for h in held))
    added = sorted(m - d for m, d in zip(sorted(managed), sorted(direct), strict=True))
    return statistics.median(added) * 1e3, added[int(0.99 * len(added)) - 1] * 1e3


async def _fanout_memory(subscribers: int, events: int) -> float:
    provider = LatencyProvider(latency_s=0.0, chunks=events)
    tracemalloc.start()
    try:
        async with RequestManager(provider, max_queue=subscribers) as manager:
            handles = [manager.submit(_request("fan")) for _ in range(subscribers)]

            async def read(h: object) -> None:
                async for _ in h.events():  # type: ignore[attr-defined]
                    pass

            await asyncio.gather(*(read(h) for h in handles))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


async def measure(n: int = 1000) -> ManagerFigures:
    """Run the four measurements once."""
    identical_wall, one_stream, calls = await _identical(n, latency_s=0.05)
    distinct_wall, ideal, max_open = await _distinct(n, streams=50, latency_s=0.05)
    median, p99 = await _added_latency(n)
    peak = await _fanout_memory(subscribers=n, events=2000)
    return ManagerFigures(
        identical_wall, one_stream, calls, distinct_wall, ideal, max_open, median, p99, peak
    )


def run_manager_bench(console: Console | None = None, *, requests: int = 1000) -> ManagerFigures:
    """Measure and print the manager's figures against the issue's targets."""
    console = console or Console()
    figures = asyncio.run(measure(requests))
    table = Table(title=f"corral bench manager ({requests} concurrent requests)")
    for column in ("measure", "figure", "target", "result"):
        table.add_column(column)
    rows = [
        (
            "identical requests: provider calls",
            str(figures.identical_provider_calls),
            "1",
            figures.identical_provider_calls == 1,
        ),
        (
            "identical requests: wall ms (one stream alone)",
            f"{figures.identical_wall_ms:.1f} ({figures.identical_one_stream_ms:.1f})",
            "close to one stream",
            figures.identical_wall_ms <= 2 * figures.identical_one_stream_ms,
        ),
        (
            "distinct requests, 50 streams of 50 ms: max open",
            str(figures.distinct_max_open),
            "<= 50",
            figures.distinct_max_open <= 50,
        ),
        (
            "distinct requests: wall ms (ideal)",
            f"{figures.distinct_wall_ms:.0f} ({figures.distinct_ideal_ms:.0f})",
            "within 20% of ideal",
            figures.distinct_wall_ms <= 1.2 * figures.distinct_ideal_ms,
        ),
        (
            "added latency, 1,000 in flight: median / p99 ms",
            f"{figures.added_median_ms:.3f} / {figures.added_p99_ms:.3f}",
            "p99 < 1 ms",
            figures.added_p99_ms < 1.0,
        ),
        (
            "peak memory, 1,000 subscribers x 2,000 events",
            f"{figures.fanout_peak_mb:.1f} MB",
            "(reported)",
            True,
        ),
    ]
    for name, figure, target, ok in rows:
        table.add_row(name, figure, target, "pass" if ok else "FAIL")
    console.print(table)
    return figures
