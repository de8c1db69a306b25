"""Fixtures for the executor tests: real pools, closed after each test and checked idle."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.executors.process import ProcessExecutor
from corral.executors.thread import ThreadExecutor
from tests.executors.helpers import is_idle


@pytest.fixture
async def threads() -> AsyncIterator[ThreadExecutor]:
    """A thread pool that must be idle when the test ends."""
    executor = ThreadExecutor(max_threads=128)
    try:
        yield executor
        stats = executor.statistics()
        assert is_idle(stats), f"thread pool not idle: {stats}"
    finally:
        await executor.aclose()


async def _started_pool(size: int) -> AsyncIterator[ProcessExecutor]:
    executor = ProcessExecutor(size=size, start_timeout_s=20.0)
    try:
        await executor.start()
        yield executor
        stats = executor.statistics()
        assert is_idle(stats), f"process pool not idle: {stats}"
    finally:
        await executor.aclose()


@pytest.fixture
async def pool() -> AsyncIterator[ProcessExecutor]:
    """A started pool of two worker processes that must be idle when the test ends."""
    async for executor in _started_pool(2):
        yield executor


@pytest.fixture
async def one() -> AsyncIterator[ProcessExecutor]:
    """A started pool of one worker process that must be idle when the test ends."""
    async for executor in _started_pool(1):
        yield executor
