"""The executor interface, and the contract every executor keeps (one suite, run on each)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from corral.errors import ClosedError, UsageError
from corral.executors.base import (
    Executor,
    FunctionRef,
    State,
    ensure_open,
    future_safe,
)
from corral.executors.inline import InlineExecutor
from corral.executors.process import ProcessExecutor
from corral.executors.thread import ThreadExecutor
from tests import support
from tests.executors.helpers import is_idle, job


def _decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


@_decorate
def decorated(x: int) -> int:
    return x


@pytest.mark.parametrize("state", [State.NEW, State.RUNNING])
def test_ensure_open_lets_new_work_in(state: State) -> None:
    ensure_open(state, "the pool")


@pytest.mark.parametrize("state", [State.CLOSING, State.CLOSED])
def test_ensure_open_names_what_and_its_state(state: State) -> None:
    with pytest.raises(ClosedError, match=f"the pool is {state.value}; it cannot take new work"):
        ensure_open(state, "the pool")


def test_function_ref_of_a_module_function_is_its_import_path() -> None:
    ref = FunctionRef.for_function(support.add, "add")
    assert ref == FunctionRef(key="add", module="tests.support", qualname="add")
    # The decorated function, which is what the module's attribute holds, also goes by path.
    assert FunctionRef.for_function(decorated, "d").qualname == "decorated"


def test_function_ref_goes_by_value_when_the_path_finds_another_object(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = decorated.__wrapped__  # type: ignore[attr-defined]
    with caplog.at_level(logging.DEBUG, logger="corral.executors.base"):
        ref = FunctionRef.for_function(inner, "inner")
    assert ref.module is None
    assert ref.pickled is not None
    assert "tool inner is not importable by path" in caplog.text


def test_function_ref_of_a_lambda_goes_by_value() -> None:
    ref = FunctionRef.for_function(lambda: 1, "anonymous")
    assert (ref.module, ref.pickled is not None) == (None, True)


def test_function_ref_of_a_closure_that_cannot_be_pickled_is_a_usage_error() -> None:
    lock = threading.Lock()

    def locked() -> None:
        with lock:
            pass

    with pytest.raises(UsageError, match="tool locked cannot run in a worker process"):
        FunctionRef.for_function(locked, "locked")


@pytest.mark.parametrize(
    "exc", [StopIteration("early"), SystemExit(3), KeyboardInterrupt()], ids=type
)
def test_future_safe_turns_harmful_exceptions_into_runtime_errors(exc: BaseException) -> None:
    safe = future_safe(exc)
    assert isinstance(safe, RuntimeError)
    assert type(exc).__name__ in str(safe)
    assert safe.__cause__ is exc
    other = ValueError("x")
    assert future_safe(other) is other


# -- the contract every executor keeps -------------------------------------------------------


@pytest.fixture(params=["async", "thread", "process"])
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[Executor]:
    made: Executor
    if request.param == "async":
        made = InlineExecutor()
    elif request.param == "thread":
        made = ThreadExecutor()
    else:
        made = ProcessExecutor(size=1)
    try:
        yield made
    finally:
        await made.aclose()


async def test_contract_returns_values_of_plain_and_async_functions(executor: Executor) -> None:
    assert await executor.run(job(support.add, a=2, b=3)) == 5
    assert await executor.run(job(support.async_sleep_ms, ms=1)) == 1
    assert is_idle(executor.statistics())


async def test_contract_raises_what_the_function_raised(executor: Executor) -> None:
    with pytest.raises(ZeroDivisionError):
        await executor.run(job(support.divide, a=1, b=0))
    assert is_idle(executor.statistics())


async def test_contract_stop_iteration_is_a_runtime_error(executor: Executor) -> None:
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match="StopIteration"):
            await executor.run(job(support.raise_stop_iteration))


@pytest.mark.parametrize("executor", ["thread", "process"], indirect=True)
async def test_contract_sys_exit_in_a_tool_fails_only_its_call(executor: Executor) -> None:
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError, match="the tool raised SystemExit: 4"):
            await executor.run(job(support.sys_exit, code=4))
        assert await executor.run(job(support.add, a=1, b=1)) == 2


async def test_contract_aclose_is_idempotent_and_refuses_new_work(executor: Executor) -> None:
    assert await executor.run(job(support.add, a=1, b=1)) == 2
    await executor.aclose()
    await executor.aclose()
    with pytest.raises(ClosedError, match="closed"):
        await executor.run(job(support.add, a=1, b=1))
    assert is_idle(executor.statistics())
