"""Retry timing shared by remote tools and providers.

Exponential backoff with full jitter, `Retry-After` honoured, bounded by attempts and by the
caller's deadline.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

from corral.errors import UsageError

__all__ = ["Backoff", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before attempt n (1-based) is retried.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a uniform draw in
    `[0, min(max_s, base_s * 2**(n-1))]`, so a fleet that failed together does not retry together.
    A server's `Retry-After` replaces the draw when it asks for longer.
    """

    attempts: int = 4
    """Tries in all, the first included."""
    base_s: float = 0.1
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise UsageError(f"attempts must be at least 1, got {self.attempts!r}")
        if self.base_s < 0 or self.max_s < 0:
            raise UsageError(
                f"backoff times must not be negative: base_s={self.base_s!r}, max_s={self.max_s!r}"
            )

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Return the wait before retrying after failed attempt number `attempt`."""
        cap = min(self.max_s, self.base_s * (2 ** (attempt - 1)))
        drawn = self.rng.uniform(0.0, cap)
        if retry_after_s is not None:
            return max(drawn, retry_after_s)
        return drawn

    def next_delay_s(
        self, attempt: int, *, retry_after_s: float | None = None, remaining_s: float | None = None
    ) -> float | None:
        """Return the wait before the next attempt, or None if no attempt is left in time."""
        if attempt >= self.attempts:
            return None
        delay = self.delay_s(attempt, retry_after_s)
        if remaining_s is not None and delay >= remaining_s:
            return None
        return delay
