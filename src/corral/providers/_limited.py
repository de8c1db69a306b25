"""`LimitedProvider`: any provider behind the shared rate limits, with retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from corral import _deadline
from corral._types import AsyncResource
from corral.errors import ProviderError, RateLimited, StreamBroken
from corral.executors.base import State, ensure_open
from corral.providers._ratelimit import (
    LimiterRegistry,
    LimiterStatistics,
    RateLimiter,
    RateLimits,
    default_registry,
)
from corral.providers.base import ModelCapabilities, ModelRequest, Provider, ProviderEvent, Usage

__all__ = ["LimitedProvider"]

logger = logging.getLogger(__name__)


class LimitedProvider(AsyncResource):
    """Wrap a provider: shared rate limits per (provider, model), and retries.

    Each call takes a concurrency slot for its whole stream, waits its turn for the request and
    token buckets, and streams. `RateLimited` and `ProviderUnavailable` are retried with
    exponential backoff and full jitter, after the server's Retry-After, within the backoff's
    attempts and the call's deadline. A 429 pauses the key for every caller.

    The stream rule: once output other than `Usage` reached the caller, a failure is raised as
    `StreamBroken` and never retried (a restart would repeat what the caller has seen).

    Args:
        inner: The provider to call; `aclose()` closes it.
        limits: The limits of every model of `inner`.
        per_model: Limits of particular models (exact names), instead of `limits`.
        registry: Where the limiters live; the process-wide one by default, so that every
            `LimitedProvider` of the same key shares one budget. Its clock and sleep are used.
        scope: The first part of the keys (default `inner.name`): "<scope>:<model>".

    Cancellation-safe: a caller cancelled while waiting (slot, admission, backoff) or streaming
    leaves nothing held. Consumers that stop early should close the stream (`aclosing`).
    """

    def __init__(
        self,
        inner: Provider,
        *,
        limits: RateLimits | None = None,
        per_model: Mapping[str, RateLimits] | None = None,
        registry: LimiterRegistry | None = None,
        scope: str | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._limits = limits or RateLimits()
        self._per_model = dict(per_model or {})
        self._registry = registry or default_registry
        self._scope = scope or inner.name
        self._keys: set[str] = set()
        self._state = State.RUNNING

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what `model` accepts (the inner provider's answer)."""
        return self.inner.capabilities(model)

    def limiter(self, model: str) -> RateLimiter:
        """Return the shared limiter of `model`."""
        key = f"{self._scope}:{model}"
        limiter = self._registry.limiter(key, self._per_model.get(model, self._limits))
        self._keys.add(key)
        return limiter

    async def stream(
        self, request: ModelRequest, *, deadline: float | None = None
    ) -> AsyncIterator[ProviderEvent]:
        """Stream `request` through the limits, retrying failures before any output.

        Args:
            request: The call.
            deadline: `loop.time()` by which to give up; by default the deadline of the tool
                call running in this task (`corral._deadline`), if any.

        Raises:
            RateLimited, ProviderUnavailable: still failing after the last attempt, or the next
                wait would pass the deadline.
            ProviderRejected: the request itself is wrong (never retried).
            StreamBroken: the stream failed after output reached the caller.
        """
        ensure_open(self._state, f"provider {self.name!r}")
        limiter = self.limiter(request.model)
        if deadline is not None:
            remaining: float | None = deadline - asyncio.get_running_loop().time()
        else:
            remaining = _deadline.remaining_s()
        # From here on the deadline is on the limiter's clock, so manual clocks govern it too.
        until = None if remaining is None else limiter.clock.monotonic() + remaining
        estimate = request.estimated_tokens()
        attempt = 1
        while True:
            delivered = False
            failure: ProviderError
            await limiter.acquire_slot()
            try:
                await limiter.admit(estimate, deadline=until, retry=attempt > 1)
                reported: int | None = None
                try:
                    async with _closing(self.inner.stream(request)) as events:
                        async for event in events:
                            if isinstance(event, Usage):
                                reported = event.total_tokens
                            else:
                                delivered = True
                            yield event
                except ProviderError as exc:
                    if isinstance(exc, RateLimited):
                        await limiter.rate_limited(exc.retry_after_s)
                        reported = 0  # refused: the server spent no tokens on it
                    await limiter.settled(estimate, reported)
                    failure = exc
                else:
                    await limiter.settled(estimate, reported)
                    limiter.record_success()
                    return
            finally:
                limiter.release_slot()
            if delivered:
                if isinstance(failure, StreamBroken):
                    raise failure
                raise StreamBroken(
                    f"the stream broke after output reached the caller: {failure}"
                ) from failure
            delay = self._retry_delay(limiter, failure, attempt, until)
            if delay is None:
                raise failure
            logger.info(
                "%s: retrying in %.3f s (attempt %d of %d failed: %s)",
                limiter.key,
                delay,
                attempt,
                limiter.limits.backoff.attempts,
                failure,
            )
            limiter.record_retry()
            attempt += 1
            await limiter.back_off(delay)

    def _retry_delay(
        self, limiter: RateLimiter, failure: ProviderError, attempt: int, until: float | None
    ) -> float | None:
        """Return the wait before the next attempt, or None to give up with `failure`."""
        if not failure.retryable:
            return None
        backoff = limiter.limits.backoff
        retry_after = getattr(failure, "retry_after_s", None)
        if retry_after is not None and retry_after > backoff.max_s:
            return None  # the server asks for longer than we ever wait: its answer stands
        remaining = None if until is None else until - limiter.clock.monotonic()
        jitter = backoff.next_delay_s(attempt, remaining_s=remaining)
        if jitter is None:
            return None
        # Retry-After, then a full-jitter draw past it: callers refused together (and told the
        # same Retry-After) come back spread out, not together.
        delay = (retry_after or 0.0) + jitter
        if remaining is not None and delay >= remaining:
            return None  # past the deadline the wait would only end in a timeout
        return delay

    def statistics(self) -> LimiterStatistics:
        """Return the sums over the keys this provider used (the pause: the latest)."""
        stats = [
            limiter.statistics()
            for key in sorted(self._keys)
            if (limiter := self._registry.get(key)) is not None
        ]
        pauses = [s.paused_until for s in stats if s.paused_until is not None]
        return LimiterStatistics(
            f"{self._scope}:*",
            sum(s.in_flight for s in stats),
            sum(s.waiting for s in stats),
            sum(s.backing_off for s in stats),
            sum(s.retries for s in stats),
            sum(s.rate_limited for s in stats),
            max(pauses) if pauses else None,
        )

    async def aclose(self) -> None:
        """Close the inner provider. Idempotent."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"<LimitedProvider {self.inner!r} state={self._state.value}>"


@asynccontextmanager
async def _closing(
    events: AsyncIterator[ProviderEvent],
) -> AsyncIterator[AsyncIterator[ProviderEvent]]:
    """Close the inner stream when the block ends, early or not (async generators have aclose)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
