"""`Runtime`: what the HTTP routes drive: the store, the agents, the sessions, the requests.

Lifecycle (an `AsyncExitStack` closes, in reverse, whatever `start` opened, also when start-up
fails half-way, so the server never runs half-configured)::

    start: data dir -> migrate -> store -> providers -> request manager -> registries -> agents
           -> Sessions (with the persistence hook) -> development key
    drain: stop admitting (new requests: 503) -> running requests finish within the grace period
           -> the rest are cancelled (their streams end with a `cancelled` event)
    aclose: drain, then close in reverse: sessions, registries, manager, providers, store

Requests are tracked by id (`LiveRequest`) while they run and for `request_retention_s` after, so
a reader can resume a stream by `Last-Event-ID`. Sessions are loaded from the store on first use
(their history with them), so they survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import shutil
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from corral._types import JSONValue
from corral.agent import Agent, ToolCallFinished, Turn
from corral.errors import ClosedError, NotFound, QueueFull, UsageError
from corral.messages import Message
from corral.providers import LimiterRegistry, LimiterStatistics, Provider, RedisFleet
from corral.requests import ManagerStatistics, RequestManager
from corral.server._agents import (
    AgentEntry,
    agent_configs,
    build_providers,
    build_registry,
    describe_provider,
)
from corral.server._fleet import CancelOrder, FleetCancel
from corral.server._router import ProviderRouter
from corral.server.config import ServerConfig
from corral.server.settings import ServerSettings
from corral.sessions import RequestHandle, Session, SessionPolicy, Sessions, SessionsStatistics
from corral.state import (
    RequestRecord,
    RequestStatus,
    SessionRecord,
    SqlStore,
    Store,
    StoreStatistics,
    upgrade,
)

__all__ = ["Attached", "LiveRequest", "Runtime", "RuntimeStatistics"]

logger = logging.getLogger(__name__)

DEV_TENANT = "dev"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class Draining(ClosedError):
    """The server is shutting down and admits no new request (the API answers 503)."""


@dataclass(slots=True, eq=False)
class LiveRequest:
    """A request this server runs or ran recently: its tenant, session and handle."""

    tenant_id: str
    session_id: str
    handle: RequestHandle
    recorded: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the route has tried to record the request in the store."""
    stored: bool = False
    """Whether the store holds the request (then its end is written there too)."""
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class Attached:
    """What a POST of a message got: a live request, or (idempotent retry) a finished one."""

    live: LiveRequest | None
    record: RequestRecord | None
    created: bool


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """Everything /metrics reports, and what tests check returns to idle."""

    sessions: SessionsStatistics
    manager: ManagerStatistics
    store: StoreStatistics
    providers: tuple[LimiterStatistics, ...]
    requests_in_flight: int
    """Agent requests admitted and not yet ended (what `max_requests` bounds)."""
    requests_refused: Mapping[str, int]
    """Requests refused at admission, by the limit that refused them ("server", "tenant")."""
    sse_streams: int
    tool_calls: Mapping[str, int]
    requests: Mapping[str, int]
    persist_failures: int

    @property
    def idle(self) -> bool:
        """Whether no request runs or waits, no stream is open and nothing is lent out."""
        return (
            self.sessions.idle
            and self.manager.idle
            and self.store.idle
            and self.sse_streams == 0
            and self.requests_in_flight == 0
            and all(p.idle for p in self.providers)
        )


class Runtime:
    """The server's state and services; made by `create_app`'s lifespan or `corral serve`.

    Args:
        settings: Where data lives and the limits.
        config: The agents to serve (an empty config: the built-in demo agent).
        provider: Use this provider for every agent instead of the configured ones.
    """

    def __init__(
        self,
        settings: ServerSettings,
        config: ServerConfig | None = None,
        *,
        provider: Provider | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or ServerConfig.empty()
        # Resolved once: `resolve()` walks the path with a system call per component.
        self._data_dir = settings.data_dir.resolve()
        self._given_provider = provider
        self._state = _State.NEW
        self._stack = AsyncExitStack()
        self._drained = asyncio.Event()
        self.limiters = LimiterRegistry()
        self.agents: dict[str, AgentEntry] = {}
        self.dev_key: str | None = None
        """A key made at this start-up for the tenant "dev": shown once, then cleared."""
        self._loaded: OrderedDict[tuple[str, str], Session] = OrderedDict()
        self._load_lock = asyncio.Lock()
        self._live: dict[str, LiveRequest] = {}
        self._pruned_at = 0.0
        self._idem_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._tool_calls: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._persist_failures = 0
        self.sse_streams = 0
        # Admission: agent requests in flight, in all and per tenant (see `_admit`).
        self._in_flight = 0
        self._in_flight_by_tenant: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._mean_request_s = 1.0
        self.fleet_cancel: FleetCancel | None = None
        """Cancel orders for requests running on other servers (with `redis_url`)."""

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The data directory, absolute."""
        return self._data_dir

    @property
    def work_root(self) -> Path:
        """Where the sessions' working directories are."""
        return self.data_dir / "work"

    @property
    def admitting(self) -> bool:
        """Whether new requests are accepted (not draining or closed)."""
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Open the store and build the agents; on failure, close what was opened and raise.

        Raises:
            ConfigError: a tool or remote source of the config cannot be set up.
            UsageError, StateError: the database URL or the database itself.
        """
        if self._state is not _State.NEW:
            raise UsageError(f"the runtime is {self._state.value}; it starts once")
        try:
            await self._start()
        except BaseException:
            self._state = _State.CLOSED
            await self._stack.aclose()
            raise
        self._state = _State.RUNNING

    async def _start(self) -> None:
        settings = self.settings
        self._make_data_dir()
        await upgrade(settings.database)
        self.store: Store = await SqlStore.connect(
            settings.database,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            api_key_cache_s=settings.api_key_cache_s,
        )
        self._stack.push_async_callback(self.store.aclose)
        if settings.redis_url:
            # Before any provider: each limiter takes the fleet when it is made.
            fleet = await RedisFleet.connect(settings.redis_url)
            self._stack.push_async_callback(fleet.aclose)
            self.limiters.fleet = fleet
            fleet_cancel = FleetCancel(fleet.redis, self._cancel_here)
            await fleet_cancel.start()
            self._stack.push_async_callback(fleet_cancel.aclose)
            self.fleet_cancel = fleet_cancel
        routes = build_providers(
            self.config, self.limiters, self._stack, given=self._given_provider
        )
        self.router = ProviderRouter({route: p for route, p, _ in routes.values()})
        self.manager = RequestManager(
            self.router,
            max_queue=settings.max_queue,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_concurrent_llm_streams=settings.max_concurrent_llm_streams,
            queue_timeout_s=settings.queue_timeout_s,
            processing_timeout_s=settings.processing_timeout_s,
            dedup=settings.dedup,
            cache_ttl_s=settings.cache_ttl_s,
        )
        await self._stack.enter_async_context(self.manager)
        for name, agent_config in agent_configs(self.config).items():
            route, provider, provider_settings = routes[name]
            registry = await build_registry(
                name,
                agent_config,
                self.config.tool_refs.get(name, ()),
                self.config,
                cwd=self.work_root,
                stack=self._stack,
            )
            model = provider_settings.model
            agent = Agent(
                provider=self.manager,
                tools=registry,
                system=agent_config.system,
                model=ProviderRouter.model(route, model or "default"),
                max_steps=agent_config.max_steps,
                temperature=agent_config.temperature,
                tool_timeout_s=agent_config.tool_timeout_s,
            )
            shown = (
                describe_provider(provider_settings)
                if self._given_provider is None
                else f"{provider.name} (given in code)"
            )
            self.agents[name] = AgentEntry(
                name,
                agent_config.description,
                agent,
                registry,
                agent_config.policy,
                shown,
                model,
            )
        first = next(iter(self.agents.values()))
        self.sessions = Sessions(first.agent, on_request_end=self._on_request_end)
        self._stack.push_async_callback(self.sessions.aclose)
        if settings.create_dev_key:
            self.dev_key = await self._make_dev_key()

    def _make_data_dir(self) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True)
        ignore = self.data_dir / ".gitignore"
        if not ignore.exists():
            # As pytest does for its cache: the data directory keeps itself out of git.
            ignore.write_text("# Made by corral serve: its data stays out of git.\n*\n")

    async def _make_dev_key(self) -> str | None:
        try:
            await self.store.get_tenant(DEV_TENANT)
            return None
        except NotFound:
            pass
        try:
            await self.store.create_tenant("development", tenant_id=DEV_TENANT)
        except UsageError:  # another server, starting at the same moment, made it
            return None
        key, _ = await self.store.create_api_key(DEV_TENANT, name="development key")
        return key

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop admitting; let running requests finish within the grace period; cancel the rest.

        Idempotent: a second call waits for the first. Readers of the cancelled requests get
        their final `cancelled` event before this returns.
        """
        if self._state is not _State.RUNNING:
            if self._state is _State.DRAINING:
                await self._drained.wait()
            return
        self._state = _State.DRAINING
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        running = self.sessions.statistics()
        if not running.idle:
            logger.info(
                "shutting down: %d requests running, %d queued; waiting up to %.1f s",
                running.running,
                running.queued,
                grace,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._wait_for_requests()
        cancelled = sum(
            s.cancel_all("the server shut down before the request finished") for s in self.sessions
        )
        if cancelled:
            logger.warning("shutting down: cancelled %d requests after the grace period", cancelled)
        await self._wait_for_requests()
        self._drained.set()

    async def _wait_for_requests(self) -> None:
        while handles := [h for s in self.sessions for h in s.requests]:
            for handle in handles:
                with contextlib.suppress(Exception):  # how it ended is the request's own news
                    await handle.result()

    async def aclose(self) -> None:
        """Drain, then close everything `start` opened, in reverse. Idempotent."""
        if self._state is _State.CLOSED:
            return
        if self._state is not _State.NEW:
            await self.drain()
        self._state = _State.CLOSED
        await self._stack.aclose()

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _ensure_admitting(self) -> None:
        if self._state is not _State.RUNNING:
            raise Draining(f"the server is {self._state.value}: it admits no new requests")

    # -- agents and sessions ----------------------------------------------------------------------

    def agent(self, name: str | None) -> AgentEntry:
        """Return the agent called `name` (None: the first one).

        Raises:
            UsageError: there is no such agent; the message lists them.
        """
        if name is None:
            return next(iter(self.agents.values()))
        entry = self.agents.get(name)
        if entry is None:
            raise UsageError(f"no agent {name!r} (agents: {', '.join(sorted(self.agents))})")
        return entry

    async def create_session(
        self,
        tenant_id: str,
        *,
        agent: str | None,
        policy: SessionPolicy | None,
        metadata: Mapping[str, JSONValue],
    ) -> SessionRecord:
        """Create a session of an agent, in the store and in memory."""
        self._ensure_admitting()
        entry = self.agent(agent)
        record = await self.store.create_session(
            tenant_id,
            session_id=f"ses_{uuid.uuid4().hex}",
            metadata={
                "agent": entry.name,
                "policy": policy or entry.policy,
                "user": dict(metadata),
            },
        )
        await self._open(record, ())
        return record

    async def session(self, tenant_id: str, session_id: str) -> Session:
        """Return the tenant's session, loading it (and its history) from the store if needed.

        Raises:
            NotFound: the tenant has no such session.
        """
        key = (tenant_id, session_id)
        session = self._loaded.get(key)
        if session is None:
            async with self._load_lock:  # two first uses of one session load it once
                session = self._loaded.get(key)
                if session is None:
                    record = await self.store.get_session(tenant_id, session_id)
                    stored = await self.store.list_messages(tenant_id, session_id)
                    session = await self._open(record, [m.message for m in stored])
        self._loaded.move_to_end(key)
        return session

    async def _open(self, record: SessionRecord, history: list[Message] | tuple[()]) -> Session:
        meta = record.metadata
        entry = self.agent(str(meta.get("agent")) if meta.get("agent") else None)
        cwd = self.work_root / record.tenant_id / record.id
        if entry.needs_workdir:
            cwd.mkdir(parents=True, exist_ok=True)
        session = self.sessions.create(
            session_id=record.id,
            history=history,
            cwd=cwd,
            context={"tenant_id": record.tenant_id},
            policy=meta.get("policy", entry.policy),  # type: ignore[arg-type]
            agent=entry.agent,
        )
        self._loaded[record.tenant_id, record.id] = session
        await self._evict()
        return session

    async def _evict(self) -> None:
        # Idle sessions beyond the bound leave memory (their history is in the store).
        excess = len(self._loaded) - self.settings.max_loaded_sessions
        if excess <= 0:
            return
        for key in list(itertools.islice(self._loaded, excess)):
            session = self._loaded.get(key)  # another eviction may have taken it meanwhile
            if session is not None and not session.requests:
                del self._loaded[key]
                await self.sessions.delete(session.id)

    def loaded(self, tenant_id: str, session_id: str) -> Session | None:
        """Return the session if it is in memory (its requests run only there)."""
        return self._loaded.get((tenant_id, session_id))

    async def delete_session(self, tenant_id: str, session_id: str) -> None:
        """Cancel the session's requests, then delete it with its history and directory."""
        await self.store.get_session(tenant_id, session_id)
        session = self._loaded.pop((tenant_id, session_id), None)
        if session is not None:
            await self.sessions.delete(session_id)  # cancels and waits, hooks included
        await self.store.delete_session(tenant_id, session_id)
        cwd = self.work_root / tenant_id / session_id
        await asyncio.to_thread(shutil.rmtree, cwd, ignore_errors=True)

    # -- requests ---------------------------------------------------------------------------------

    async def submit(
        self,
        tenant_id: str,
        session_id: str,
        message: str,
        *,
        policy: SessionPolicy | None,
        idempotency_key: str | None,
    ) -> Attached:
        """Start a request in a session; with an idempotency key the tenant used, attach to it.

        Raises:
            NotFound: no such session.
            SessionBusy: the policy is "reject" and a request is running.
            Draining: the server is shutting down.
            UsageError: the idempotency key was used for another session.
        """
        self._ensure_admitting()
        if idempotency_key is None:
            return await self._start_request(tenant_id, session_id, message, policy, None)
        async with self._keyed((tenant_id, idempotency_key)):
            existing = await self.store.find_request(tenant_id, idempotency_key)
            if existing is None:
                return await self._start_request(
                    tenant_id, session_id, message, policy, idempotency_key
                )
        if existing.session_id != session_id:
            raise UsageError(
                f"idempotency key {idempotency_key!r} was used for a request of session "
                f"{existing.session_id!r}, not {session_id!r}"
            )
        return Attached(self.live(tenant_id, existing.id), existing, created=False)

    @contextlib.asynccontextmanager
    async def _keyed(self, slot: tuple[str, str]) -> AsyncIterator[None]:
        # In this process, one request per key at a time: the store's unique key stops a second
        # server, but a second request here would already have started its model call.
        lock, users = self._idem_locks.get(slot, (asyncio.Lock(), 0))
        self._idem_locks[slot] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._idem_locks[slot]
            if users == 1:
                del self._idem_locks[slot]
            else:
                self._idem_locks[slot] = (lock, users - 1)

    async def _start_request(
        self,
        tenant_id: str,
        session_id: str,
        message: str,
        policy: SessionPolicy | None,
        idempotency_key: str | None,
    ) -> Attached:
        session = await self.session(tenant_id, session_id)
        self._ensure_admitting()  # again: loading the session awaited
        self._admit(tenant_id)  # no await from here to the count: two cannot both pass
        handle = session.send(message, policy=policy)
        self._count_in_flight(tenant_id, handle)
        live = LiveRequest(tenant_id, session_id, handle)
        self._live[handle.id] = live
        self._prune()
        try:
            record, created = await self.store.record_request(
                tenant_id, session_id, request_id=handle.id, idempotency_key=idempotency_key
            )
            live.stored = created
        except BaseException:
            handle.cancel("the request could not be recorded")
            raise
        finally:
            live.recorded.set()  # the hook waits for this before it writes the request's end
        if not created:  # another server took the key between our look-up and our record
            handle.cancel(f"request {record.id} has this idempotency key")
            return Attached(self.live(tenant_id, record.id), record, created=False)
        return Attached(live, None, created=True)

    def _admit(self, tenant_id: str) -> None:
        """Refuse a new request beyond the server's or the tenant's limit, before it starts.

        Raises:
            QueueFull: (429 with Retry-After) too many requests in flight, naming the limit.
        """
        limit = self.settings.request_limit
        if self._in_flight >= limit:
            self._refused["server"] += 1
            raise QueueFull(
                f"the server has {self._in_flight} requests in flight, its limit "
                f"(max_requests = {limit}); try again later",
                retry_after_s=self._mean_request_s,
            )
        cap = self.settings.max_requests_per_tenant
        if cap is not None and self._in_flight_by_tenant[tenant_id] >= cap:
            self._refused["tenant"] += 1
            raise QueueFull(
                f"this API key's tenant has {self._in_flight_by_tenant[tenant_id]} requests in "
                f"flight, its limit (max_requests_per_tenant = {cap}); try again later",
                retry_after_s=self._mean_request_s,
            )

    def _count_in_flight(self, tenant_id: str, handle: RequestHandle) -> None:
        self._in_flight += 1
        self._in_flight_by_tenant[tenant_id] += 1
        started = time.monotonic()

        def ended(_: RequestHandle) -> None:
            self._in_flight -= 1
            self._in_flight_by_tenant[tenant_id] -= 1
            if not self._in_flight_by_tenant[tenant_id]:
                del self._in_flight_by_tenant[tenant_id]
            # What a refused client is told to wait: about one request's length.
            self._mean_request_s = 0.9 * self._mean_request_s + 0.1 * (time.monotonic() - started)

        handle.add_done_callback(ended)

    def _cancel_here(self, order: CancelOrder) -> int:
        """Cancel what this server runs of a fleet's cancel order; return how many."""
        if order.kind == "request":
            live = self.live(order.tenant_id, order.target)
            return int(live is not None and live.handle.cancel(order.reason))
        session = self.loaded(order.tenant_id, order.target)
        return session.cancel_all(order.reason) if session is not None else 0

    async def cancel(self, order: CancelOrder) -> int:
        """Cancel a request or a session's requests, here and on the fleet's other servers.

        The caller has checked the tenant owns the target. Returns how many were cancelled.
        """
        cancelled = self._cancel_here(order)
        if self.fleet_cancel is None:
            return cancelled
        if order.kind == "request" and self.live(order.tenant_id, order.target) is not None:
            return cancelled  # it runs (or ran) here: no other server has it
        return cancelled + await self.fleet_cancel.cancel_elsewhere(order)

    def live(self, tenant_id: str, request_id: str) -> LiveRequest | None:
        """Return the tenant's request if it runs here or ended within the retention period."""
        live = self._live.get(request_id)
        return live if live is not None and live.tenant_id == tenant_id else None

    async def request_record(self, tenant_id: str, request_id: str) -> RequestRecord:
        """Return the tenant's stored request. Raises `NotFound`."""
        return await self.store.get_request(tenant_id, request_id)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        horizon = now - self.settings.request_retention_s
        for request_id, live in list(self._live.items()):
            if live.ended_at is not None and live.ended_at < horizon:
                del self._live[request_id]

    async def _on_request_end(self, session: Session, turn: Turn) -> None:
        """Persist the turn and the request's end, before readers see its terminal event."""
        self._requests[turn.status] += 1
        for event in turn.log.snapshot():
            if isinstance(event, ToolCallFinished):
                self._tool_calls[event.status] += 1
        live = self._live.get(turn.id)
        if live is None:
            return
        try:
            await live.recorded.wait()
            if not live.stored:
                return
            status: RequestStatus = "done"
            error = None
            if turn.status == "failed":
                status, error = "failed", f"{type(turn.error).__name__}: {turn.error}"
            elif turn.status == "cancelled":
                status, error = "cancelled", turn.cancel_reason
            # One transaction: the turn's messages (if it started, its whole turn joins the
            # stored history at once) and the request's final status.
            await self.store.finish_request(
                live.tenant_id, turn.id, status=status, error=error, messages=turn.messages
            )
        except NotFound:
            logger.debug("request %s ended after its session was deleted", turn.id)
        except Exception:
            self._persist_failures += 1
            raise
        finally:
            live.ended_at = time.monotonic()

    # -- statistics ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Count an open SSE stream for the length of the block."""
        self.sse_streams += 1
        try:
            yield
        finally:
            self.sse_streams -= 1

    def statistics(self) -> RuntimeStatistics:
        """Return the sessions', manager's, store's and providers' figures, and the counters."""
        return RuntimeStatistics(
            sessions=self.sessions.statistics(),
            manager=self.manager.statistics(),
            store=self.store.statistics(),
            providers=self.limiters.statistics(),
            requests_in_flight=self._in_flight,
            requests_refused=dict(self._refused),
            sse_streams=self.sse_streams,
            tool_calls=dict(self._tool_calls),
            requests=dict(self._requests),
            persist_failures=self._persist_failures,
        )
