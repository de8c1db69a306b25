"""Rate limits shared by every caller of one (provider, model) key in the process.

A provider's limits are per organisation and model, not per agent: thirty agents that each keep
"their" 60 requests a minute send 1800, get 429s together, and retry together. So the limiter of
a key is one object that every caller goes through (a `LimiterRegistry`, process-wide by default):

- token buckets for requests and tokens per minute; the tokens a call will use are estimated
  before it (`ModelRequest.estimated_tokens()`) and corrected from its reported usage after;
- FIFO admission: callers are served in arrival order (retries first), one at a time, at the
  buckets' rate, so a burst of callers leaves spaced out instead of all at once;
- a pause: a 429 stops admission for every caller until its Retry-After has passed;
- a concurrency cap held for a call's whole stream.

Time is injected (a `Clock` for the buckets, a `sleep` for the waits), so tests advance time.
Everything runs on one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from corral._retry import Backoff
from corral._types import Clock, MonotonicClock
from corral.errors import RateLimited, UsageError
from corral.scheduler._budget import Budget

__all__ = [
    "Fleet",
    "LimiterRegistry",
    "LimiterStatistics",
    "RateLimiter",
    "RateLimits",
    "Sleep",
    "TokenBucket",
    "bucket_shape",
    "default_registry",
]

Sleep = Callable[[float], Awaitable[None]]


class Fleet(Protocol):
    """Where the limits of a fleet of servers are kept (`corral.providers._fleet.RedisFleet`).

    Each method answers None, or does nothing, when the store cannot be reached: a limiter
    then goes by its own buckets.
    """

    async def reserve(
        self, key: str, tokens: int, limits: RateLimits
    ) -> tuple[float, float] | None: ...

    async def pause(self, key: str, seconds: float, limits: RateLimits) -> None: ...

    async def refund(self, key: str, tokens: float, limits: RateLimits) -> None: ...


# Float error in refill arithmetic must not turn "exactly enough" into another tiny wait.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The limits of one (provider, model) key; None disables a limit.

    Args:
        rpm: Requests per minute.
        tpm: Tokens per minute (prompt and answer).
        max_concurrency: Calls streaming at once.
        backoff: Retries: attempts, exponential base and cap, with full jitter.
        rpm_burst: Requests that may leave at once; default 1, so a fleet that starts
            together leaves one by one at the rate. Providers enforce per-minute limits over
            shorter windows: a minute's worth at once would be refused.
        tpm_burst: Tokens that may leave at once; default one second's worth. A call larger
            than the burst leaves when the bucket is full and pays for the rest after.
    """

    rpm: float | None = None
    tpm: float | None = None
    max_concurrency: int | None = None
    backoff: Backoff = field(default_factory=Backoff)
    rpm_burst: float | None = None
    tpm_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpm_burst", "tpm_burst"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"rate limit {name} must be positive or None, got {value!r}")
        cap = self.max_concurrency
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise UsageError(f"max_concurrency must be a positive integer or None, got {cap!r}")


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """What a limiter (or a `LimitedProvider`, summed over its keys) is doing now.

    `retries` and `rate_limited` (429s seen) count since creation; the rest is the present.
    `paused_until` is on the limiter's clock, None when admission is not paused.
    """

    key: str
    in_flight: int
    waiting: int
    backing_off: int
    retries: int
    rate_limited: int
    paused_until: float | None

    @property
    def idle(self) -> bool:
        """Whether no call holds a slot, waits for admission, or waits to retry."""
        return self.in_flight == 0 and self.waiting == 0 and self.backing_off == 0


class TokenBucket:
    """A token bucket: `capacity` tokens at most, refilled at `rate_per_s`.

    The level may go below zero: a call larger than the capacity is let through when the bucket
    is full and the debt is paid before the next one; a usage correction may add debt too.
    """

    __slots__ = ("capacity", "level", "rate_per_s", "updated")

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what the time since the last refill earned, up to the capacity."""
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, cost: float, now: float) -> float:
        """Return how long until `cost` (at most the capacity) is available; 0 if it is now."""
        self.refill(now)
        missing = min(cost, self.capacity) - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate_per_s

    def take(self, cost: float) -> None:
        """Spend `cost`, into debt if need be."""
        self.level -= cost

    def give(self, amount: float) -> None:
        """Return `amount` (a negative amount is spent), up to the capacity."""
        self.level = min(self.capacity, self.level + amount)

    def drain(self, until: float) -> None:
        """Empty the bucket and earn nothing before `until` (the end of a pause)."""
        self.level = min(self.level, 0.0)
        self.updated = max(self.updated, until)


class RateLimiter:
    """The shared limits of one key: admission, pause after a 429, concurrency cap.

    Cancellation-safe: a caller cancelled while it waits for a slot or for admission takes
    nothing with it, and the caller behind it moves up.
    """

    def __init__(
        self,
        key: str,
        limits: RateLimits,
        *,
        clock: Clock,
        sleep: Sleep,
        fleet: Fleet | None = None,
    ) -> None:
        self.key = key
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        self.fleet = fleet
        """Where the buckets and pause are shared with other servers; None: this one alone."""
        now = clock.monotonic()
        self._rpm = _request_bucket(limits.rpm, limits.rpm_burst, now)
        self._tpm = _bucket(limits.tpm, limits.tpm_burst, now)
        self._slots = (
            Budget(key, limits.max_concurrency) if limits.max_concurrency is not None else None
        )
        # The head of the queue holds a done future; the others wait for theirs.
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._retries_waiting: set[asyncio.Future[None]] = set()  # right behind the head
        self._paused_until = -math.inf
        self._nudge: asyncio.Future[None] | None = None  # wakes the head when tokens come back
        self._strikes = 0  # 429s since the last success, for pauses without a Retry-After
        self._in_flight = 0
        self._backing_off = 0
        self._retries = 0
        self._rate_limited = 0

    # -- a call's life: slot, admission, settlement --------------------------------------------

    async def acquire_slot(self) -> None:
        """Wait for a concurrency slot (FIFO); pair with `release_slot()`."""
        if self._slots is not None:
            await self._slots.acquire()
        self._in_flight += 1

    def release_slot(self) -> None:
        """Give the slot back."""
        self._in_flight -= 1
        if self._slots is not None:
            self._slots.release()

    async def admit(
        self, tokens: int, *, deadline: float | None = None, retry: bool = False
    ) -> None:
        """Wait, in arrival order, until a request of `tokens` may leave; spend its budget.

        Args:
            tokens: The call's estimated tokens, debited from the tokens-per-minute bucket.
            deadline: On this limiter's clock: give up rather than wait past it.
            retry: The caller already had its turn and failed: it goes ahead of first-time
                callers (behind earlier retries), so the unlucky do not also wait longest.

        Raises:
            RateLimited: the wait would pass the deadline, or a 429 paused the key for longer
                than the backoff's cap (the server's answer stands; waiting would not help).
        """
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._queue.append(turn)
            turn.set_result(None)
        elif retry:
            # Retries wait together right behind the head, in their own arrival order.
            self._queue.insert(1 + len(self._retries_waiting), turn)
            self._retries_waiting.add(turn)
        else:
            self._queue.append(turn)
        try:
            await turn
            # Only the head runs this loop, so the buckets are read and spent by one caller at a
            # time: nobody can spend the tokens the head has waited for.
            spent_shared = False
            while True:
                now = self.clock.monotonic()
                paused = self._paused_s(now)
                shared = None
                if paused <= 0 and self.fleet is not None:
                    shared = await self.fleet.reserve(self.key, tokens, self.limits)
                if shared is None:  # no fleet, paused here, or the fleet's store is down
                    wait = max(paused, self._buckets_wait_s(tokens, now))
                else:
                    wait, paused = shared
                    self._check_pause(paused)
                    spent_shared = wait <= 0
                self._check_deadline(wait, now, deadline)
                if wait <= 0:
                    break
                # A pause set by another caller's 429 during this sleep is seen on waking.
                await self._wait(wait)
            if not spent_shared:
                if self._rpm is not None:
                    self._rpm.take(1)
                if self._tpm is not None:
                    self._tpm.take(tokens)
        finally:
            self._leave(turn)

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the tokens a call was charged: `actual` as reported, None if unknown.

        Tokens given back wake the caller at the head of the queue, which may now go sooner.
        """
        if self._tpm is not None and actual is not None:
            self._tpm.give(estimated - actual)
            if actual < estimated and self._nudge is not None and not self._nudge.done():
                self._nudge.set_result(None)

    def record_success(self) -> None:
        """Note a call that went through: the next 429 without Retry-After pauses briefly again."""
        self._strikes = 0

    def record_rate_limited(self, retry_after_s: float | None) -> float:
        """Pause admission for every caller after a 429; return the pause in seconds.

        The pause lasts the server's Retry-After, or without one, the backoff's cap for the
        number of 429s in a row (base_s, 2*base_s, ... max_s). The request bucket is emptied
        too: it let this request through, so it over-estimates what the server has left, and
        callers resume at the bucket's rate after the pause rather than in a burst.
        """
        self._rate_limited += 1
        self._strikes += 1
        backoff = self.limits.backoff
        if retry_after_s is None:
            pause = min(backoff.max_s, backoff.base_s * 2.0 ** (self._strikes - 1))
        else:
            pause = retry_after_s
        until = self.clock.monotonic() + pause
        self._paused_until = max(self._paused_until, until)
        if self._rpm is not None:
            self._rpm.drain(self._paused_until)
        return pause

    async def rate_limited(self, retry_after_s: float | None) -> float:
        """`record_rate_limited`, and the pause set for the whole fleet too (if there is one)."""
        pause = self.record_rate_limited(retry_after_s)
        if self.fleet is not None:
            await self.fleet.pause(self.key, pause, self.limits)
        return pause

    async def settled(self, estimated: int, actual: int | None) -> None:
        """`settle`, and the fleet's shared tokens corrected too (if there is one)."""
        self.settle(estimated, actual)
        if self.fleet is not None and actual is not None and self.limits.tpm is not None:
            await self.fleet.refund(self.key, estimated - actual, self.limits)

    def record_retry(self) -> None:
        """Count a retry (for statistics)."""
        self._retries += 1

    async def back_off(self, delay_s: float) -> None:
        """Sleep before a retry, counted in the statistics as backing off."""
        self._backing_off += 1
        try:
            await self.sleep(delay_s)
        finally:
            self._backing_off -= 1

    def statistics(self) -> LimiterStatistics:
        """Return calls in flight, waiting and backing off, retries, 429s, and the pause."""
        waiting = len(self._queue)
        if self._slots is not None:
            waiting += self._slots.statistics().waiting
        paused = self._paused_until if self._paused_until > self.clock.monotonic() else None
        return LimiterStatistics(
            self.key,
            self._in_flight,
            waiting,
            self._backing_off,
            self._retries,
            self._rate_limited,
            paused,
        )

    # -- internals ----------------------------------------------------------------------------

    def _paused_s(self, now: float) -> float:
        """Return how long this server's pause still runs (0 if none)."""
        paused = max(0.0, self._paused_until - now)
        self._check_pause(paused)
        return paused

    def _check_pause(self, paused: float) -> None:
        max_pause = self.limits.backoff.max_s
        if paused > max_pause:
            raise RateLimited(
                f"{self.key} is paused for another {paused:.3g} s after a 429, longer than the "
                f"longest backoff ({max_pause:g} s)",
                retry_after_s=paused,
            )

    def _buckets_wait_s(self, tokens: int, now: float) -> float:
        wait = 0.0
        if self._rpm is not None:
            wait = max(wait, self._rpm.wait_s(1, now))
        if self._tpm is not None:
            wait = max(wait, self._tpm.wait_s(tokens, now))
        return wait

    def _check_deadline(self, wait: float, now: float, deadline: float | None) -> None:
        if wait > 0 and deadline is not None and now + wait > deadline:
            raise RateLimited(
                f"{self.key}: waiting {wait:.3g} s for the rate limit would pass the deadline",
                retry_after_s=wait,
            )

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if `settle()` gives tokens back meanwhile."""
        if self._tpm is None:
            await self.sleep(seconds)  # only token refunds shorten a wait
            return
        nudge: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._nudge = nudge
        # A task of this call, awaited before it returns: the injected sleep cannot be raced
        # against the nudge otherwise.
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((sleeper, nudge), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._nudge = None
            nudge.cancel()
            sleeper.cancel()
            await asyncio.wait((sleeper,))

    def _leave(self, turn: asyncio.Future[None]) -> None:
        self._retries_waiting.discard(turn)
        if self._queue and self._queue[0] is turn:
            self._queue.popleft()
            if self._queue:
                head = self._queue[0]
                self._retries_waiting.discard(head)
                # The next turn may be cancelled already (its task cancelled while waiting); its
                # own `_leave`, soon, finds it at the head and passes the turn on.
                if not head.done():
                    head.set_result(None)
        else:
            self._queue.remove(turn)
        if not turn.done():
            turn.cancel()


def bucket_shape(per_minute: float | None, burst: float | None) -> tuple[float, float] | None:
    """Return a bucket's refill rate per second and capacity (by default a second's worth)."""
    if per_minute is None:
        return None
    rate = per_minute / 60
    return rate, burst if burst is not None else max(1.0, rate)


def _bucket(per_minute: float | None, burst: float | None, now: float) -> TokenBucket | None:
    shape = bucket_shape(per_minute, burst)
    return None if shape is None else TokenBucket(*shape, now)


def _request_bucket(rpm: float | None, burst: float | None, now: float) -> TokenBucket | None:
    return _bucket(rpm, 1.0 if burst is None else burst, now)


class LimiterRegistry:
    """The limiters of a process, one per key, created on first use.

    Args:
        clock: The buckets' clock; `time.perf_counter` by default.
        sleep: How waits sleep; `asyncio.sleep` by default. Tests pass a manual clock's.
        fleet: Share the buckets and pauses with other servers (`RedisFleet`); None: the
            limits are this process's alone.
    """

    def __init__(
        self, *, clock: Clock | None = None, sleep: Sleep | None = None, fleet: Fleet | None = None
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.sleep: Sleep = sleep or asyncio.sleep
        self.fleet = fleet
        self._limiters: dict[str, RateLimiter] = {}

    def limiter(self, key: str, limits: RateLimits) -> RateLimiter:
        """Return the limiter of `key`, creating it with `limits` on first use.

        Raises:
            UsageError: the key already has a limiter with other limits; two callers that
                disagree about a shared limit would each believe theirs holds.
        """
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = RateLimiter(key, limits, clock=self.clock, sleep=self.sleep, fleet=self.fleet)
            self._limiters[key] = limiter
        elif limiter.limits != limits:
            raise UsageError(
                f"rate limiter {key!r} already exists with {limiter.limits}, not {limits}"
            )
        return limiter

    def get(self, key: str) -> RateLimiter | None:
        """Return the limiter of `key`, if there is one."""
        return self._limiters.get(key)

    def statistics(self) -> tuple[LimiterStatistics, ...]:
        """Return every limiter's statistics, by key."""
        return tuple(self._limiters[k].statistics() for k in sorted(self._limiters))


default_registry = LimiterRegistry()
"""The process-wide registry `LimitedProvider` uses unless given another."""
