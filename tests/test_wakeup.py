"""`Wakeup`: one call wakes every waiter; a cancelled waiter leaves alone."""

from __future__ import annotations

import asyncio

import pytest

from corral import _wakeup
from corral._wakeup import Wakeup


async def test_one_wake_wakes_every_waiter_and_only_those_waiting() -> None:
    wakeup = Wakeup()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await wakeup.wait()
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(1000)]
    await asyncio.sleep(0)
    assert wakeup.waiting == 1000
    wakeup.wake()
    late = asyncio.create_task(waiter(-1))  # came after the wake: waits for the next one
    await asyncio.gather(*tasks)
    assert sorted(woken) == list(range(1000))
    await asyncio.sleep(0)
    assert not late.done()
    wakeup.wake()
    await late
    assert wakeup.waiting == 0


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    wakeup = Wakeup()
    first = asyncio.create_task(wakeup.wait())
    second = asyncio.create_task(wakeup.wait())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert first.cancelled()
    assert not second.done()
    wakeup.wake()  # skips the cancelled future
    await asyncio.wait_for(second, 1)
    assert wakeup.waiting == 0


async def test_a_wait_with_a_time_limit_says_whether_it_was_woken() -> None:
    wakeup = Wakeup()
    waiting = asyncio.create_task(wakeup.wait_for(30))
    await asyncio.sleep(0)
    wakeup.wake()
    assert await waiting is True
    assert await wakeup.wait_for(0.01) is False
    assert wakeup.waiting == 0  # a timed-out waiter does not stay registered
    cancelled = asyncio.create_task(wakeup.wait_for(30))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()


async def test_a_wake_between_a_time_out_and_its_waiter_resuming_is_harmless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wakeup = Wakeup()
    time_out = _wakeup._time_out

    def then_woken(future: asyncio.Future[bool]) -> None:
        time_out(future)
        wakeup.wake()  # comes before the waiter resumes: it drops the done future itself

    monkeypatch.setattr(_wakeup, "_time_out", then_woken)
    assert await wakeup.wait_for(0.01) is False
    assert wakeup.waiting == 0
