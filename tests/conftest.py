"""Test-wide guards: no network beyond loopback, no stray tasks, no child processes left."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn

import psutil
import pytest

import corral

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {host!r}")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if asyncio.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.usefixtures("_no_stray_tasks"))


@pytest.fixture
async def _no_stray_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    stray = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not stray, f"tasks left running after the test: {stray}"


@pytest.fixture(autouse=True)
def _no_child_processes() -> Iterator[None]:
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.02)
        children = [
            c
            for c in me.children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
        ]
    assert not children, f"child processes left after the test: {children}"


@pytest.fixture
async def registry() -> AsyncIterator[corral.ToolRegistry]:
    """A registry that must be idle after the test; closed afterwards."""
    reg = corral.ToolRegistry()
    try:
        yield reg
        stats = reg.statistics()
        assert stats.idle, f"registry not idle after the test: {stats}"
    finally:
        await reg.aclose()


def _service_unavailable(what: str, reason: object) -> NoReturn:
    message = f"{what} is not reachable ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; with CI=true every service must be up", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def service_unavailable() -> Callable[[str, object], NoReturn]:
    """Report a service a test needs (PostgreSQL, Redis) as down: skip, or fail when CI=true.

    Call it as `service_unavailable("PostgreSQL at 127.0.0.1:5432", exc)`.
    """
    return _service_unavailable
