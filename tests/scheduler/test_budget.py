"""Budget: a FIFO counting limiter with an adjustable cap, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from corral.errors import UsageError
from corral.scheduler import Budget, BudgetStatistics


async def queue_acquirers(
    budget: Budget, names: list[str], order: list[str]
) -> list[asyncio.Task[None]]:
    """Start one task per name that acquires `budget` and records the name when granted."""

    async def one(name: str) -> None:
        await budget.acquire()
        order.append(name)

    tasks = [asyncio.create_task(one(n)) for n in names]
    for _ in names:
        await asyncio.sleep(0)  # let each reach its await, in creation order
    return tasks


def test_statistics_describe_the_budget() -> None:
    budget = Budget("api", 3)
    assert budget.statistics() == BudgetStatistics("api", limit=3, in_use=0, waiting=0)
    assert budget.limit == 3


@pytest.mark.parametrize("limit", [0, -1, 1.5, "2", True, None])
def test_the_limit_must_be_a_positive_integer(limit: object) -> None:
    with pytest.raises(UsageError, match=r"limit of budget 'api' must be a positive integer"):
        Budget("api", limit)  # type: ignore[arg-type]
    budget = Budget("api", 1)
    with pytest.raises(UsageError, match="positive integer"):
        budget.set_limit(limit)  # type: ignore[arg-type]
    assert budget.limit == 1


async def test_slots_under_the_cap_are_granted_at_once() -> None:
    budget = Budget("b", 2)
    await budget.acquire()
    await budget.acquire()
    assert budget.statistics().in_use == 2
    budget.release()
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 2, 0, 0)


async def test_waiters_are_served_first_come_first_served() -> None:
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["w1", "w2", "w3"], order)
    assert budget.statistics().waiting == 3
    for expected in (["w1"], ["w1", "w2"], ["w1", "w2", "w3"]):
        budget.release()
        await asyncio.sleep(0)
        assert order == expected
    await asyncio.gather(*tasks)
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 1, 0, 0)


async def test_a_newcomer_does_not_overtake_waiters() -> None:
    # A slot freed while someone waits goes to the waiter, not to whoever asks next.
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["waiter"], order)
    budget.release()  # granted to the waiter, who has not run yet
    late = await queue_acquirers(budget, ["newcomer"], order)
    await asyncio.gather(*tasks)
    assert order == ["waiter"]
    assert budget.statistics().waiting == 1
    budget.release()
    await asyncio.gather(*late)
    assert order == ["waiter", "newcomer"]
    budget.release()


async def test_raising_the_limit_admits_waiters_at_once() -> None:
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["w1", "w2", "w3"], order)
    budget.set_limit(3)
    await asyncio.gather(*tasks[:2])
    assert order == ["w1", "w2"]
    assert budget.statistics() == BudgetStatistics("b", 3, 3, 1)
    budget.release()
    await tasks[2]
    for _ in range(3):
        budget.release()
    assert budget.statistics() == BudgetStatistics("b", 3, 0, 0)


async def test_lowering_the_limit_lets_calls_drain_first() -> None:
    budget = Budget("b", 3)
    for _ in range(3):
        await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["w"], order)
    budget.set_limit(1)
    budget.release()
    budget.release()
    await asyncio.sleep(0)
    assert order == []  # still at the new cap of 1
    budget.release()
    await tasks[0]
    assert order == ["w"]
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 1, 0, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["gone", "stays"], order)
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert budget.statistics().waiting == 1
    budget.release()
    await tasks[1]
    assert order == ["stays"]
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 1, 0, 0)


async def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["granted-then-cancelled", "next"], order)
    budget.release()  # grants the first waiter's future ...
    tasks[0].cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    await tasks[1]
    assert order == ["next"]
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 1, 0, 0)


async def test_a_release_between_cancel_and_wakeup_does_not_break_cancellation() -> None:
    # Regression: `release()` popped the cancelled waiter's future, then the waiter's own
    # clean-up tried to remove it again and raised ValueError in place of CancelledError.
    budget = Budget("b", 1)
    await budget.acquire()
    order: list[str] = []
    tasks = await queue_acquirers(budget, ["cancelled", "next"], order)
    tasks[0].cancel()
    budget.release()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    await tasks[1]
    assert order == ["next"]
    budget.release()
    assert budget.statistics() == BudgetStatistics("b", 1, 0, 0)


async def test_the_budget_is_an_async_context_manager() -> None:
    budget = Budget("b", 1)
    async with budget:
        assert budget.statistics().in_use == 1
    assert budget.statistics().in_use == 0
    with pytest.raises(RuntimeError):
        async with budget:
            raise RuntimeError
    assert budget.statistics().in_use == 0
