"""Cancelling a request that runs on another server of the fleet, through Redis pub/sub.

A request runs on the server that admitted it; behind a load balancer, its `DELETE` may reach
another. Without coordination that server can only say "0 cancelled" of a request it sees running
in the shared database. With `CORRAL_REDIS_URL`, it broadcasts the order on one channel; every
server (itself included) cancels what it runs of it and answers on the order's own reply channel
with how many it cancelled; the asker sums the answers, waiting for as many as Redis delivered the
order to, at most `reply_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from corral.executors.base import State

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["CancelOrder", "FleetCancel"]

logger = logging.getLogger(__name__)

_CHANNEL = "corral:cancel"
_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Cancel a tenant's request, or every request of one of its sessions."""

    tenant_id: str
    kind: Literal["request", "session"]
    target: str
    reason: str


class FleetCancel:
    """Carry cancel orders between the servers of a fleet.

    Args:
        redis: The Redis client (its pool is shared; each subscription takes a connection).
        cancel_here: Cancel what this server runs of an order; return how many it cancelled.
        reply_timeout_s: How long `cancel_elsewhere` waits for the servers' answers.
    """

    def __init__(
        self,
        redis: Redis,
        cancel_here: Callable[[CancelOrder], int],
        *,
        reply_timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._cancel_here = cancel_here
        self._reply_timeout_s = reply_timeout_s
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._state = State.NEW

    async def start(self) -> None:
        """Subscribe to the orders (before returning: no order sent after this is missed)."""
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(_CHANNEL)
        self._listener = asyncio.create_task(self._listen(), name="corral-fleet-cancel")
        self._state = State.RUNNING

    async def cancel_elsewhere(self, order: CancelOrder) -> int:
        """Send `order` to every server; return how many requests they cancelled in all."""
        reply = f"{_CHANNEL}:reply:{uuid.uuid4().hex}"
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(reply)
            message = {"reply": reply, **asdict(order)}
            servers = int(await self._redis.publish(_CHANNEL, json.dumps(message)))
            cancelled = answers = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reply_timeout_s):
                    while answers < servers:
                        got = await pubsub.get_message(timeout=self._reply_timeout_s)
                        if got is not None and got.get("type") == "message":
                            answers += 1
                            cancelled += int(got["data"])
            if answers < servers:
                logger.warning(
                    "cancel %s %s: %d of %d servers answered within %g s",
                    order.kind,
                    order.target,
                    answers,
                    servers,
                    self._reply_timeout_s,
                )
            return cancelled
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _listen(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        await self._handle(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # redis-py reconnects (and subscribes again) on the next read: wait, then read.
                logger.warning("fleet cancel orders: Redis failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_S)

    async def _handle(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            order = CancelOrder(
                str(message["tenant_id"]),
                "session" if message["kind"] == "session" else "request",
                str(message["target"]),
                str(message["reason"]),
            )
            reply = str(message["reply"])
        except (ValueError, KeyError, TypeError):
            logger.warning("fleet cancel orders: ignored a malformed order %r", data)
            return
        cancelled = self._cancel_here(order)
        await self._redis.publish(reply, str(cancelled))

    async def aclose(self) -> None:
        """Stop listening and unsubscribe. Idempotent."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
