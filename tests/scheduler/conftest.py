"""Fixtures for the scheduler tests: registries with options, checked idle and closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import corral
from tests.scheduler.helpers import MakeRegistry
from tests.support import eventually


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Make registries with any options; each must return to idle after the test.

    Threads abandoned by a timeout or a cancellation run on to the end of their function (a
    thread cannot be killed), so the check first waits, bounded, for them to drain.
    """
    made: list[corral.ToolRegistry] = []

    def make(**options: Any) -> corral.ToolRegistry:
        reg = corral.ToolRegistry(**options)
        made.append(reg)
        return reg

    try:
        yield make
        for reg in made:
            try:
                await eventually(lambda: reg.statistics().idle)  # noqa: B023
            except AssertionError:
                stats = reg.statistics()
                raise AssertionError(f"registry not idle after the test: {stats}") from None
    finally:
        for reg in made:
            await reg.aclose()
