"""`corral serve` and `corral keys`: run the HTTP server; make and revoke API keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import typer
from rich.markup import escape
from typer.core import TyperCommand

from corral.errors import CorralError, UsageError

__all__ = ["ServeCommand", "create_key", "revoke_key", "run_serve"]


class ServeCommand(TyperCommand):
    """`corral serve`, whose --help ends with every CORRAL_* setting (read when asked)."""

    @property
    def epilog(self) -> str:
        """List the settings, from `ServerSettings` itself, so the help never drifts."""
        from corral.server.settings import settings_help

        server, provider = settings_help()
        return "\n\n".join(
            [
                "Settings: environment variables, or keys of the config file's \\[server] "
                "table (variables win; command-line options win over both):",
                *(escape(line) for line in server),
                "The default provider of every agent: environment variables, or keys of the "
                "config file's \\[provider] table (an agent's own keys win):",
                *(escape(line) for line in provider),
            ]
        )

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        del value  # click sets it at construction; it is computed instead


def _load(config: Path | None, **values: Any) -> tuple[Any, Any]:
    from corral.server.config import load_config
    from corral.server.settings import load_server_settings

    loaded = load_config(config)
    settings = load_server_settings(
        dict(loaded.server),
        locate=lambda key: loaded.where("server", key),
        config=loaded.path,
        **values,
    )
    return settings, loaded


def _fail(command: str, exc: BaseException) -> typer.Exit:
    typer.secho(f"corral {command}: {exc}", fg="red", err=True)
    return typer.Exit(1)


def _shown_database(url: str) -> str:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"{parsed.database} (SQLite, WAL)"
    return parsed.render_as_string(hide_password=True)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the event loop factory for `choice` (None: asyncio's default loop).

    uvloop (libuv) runs the server's loop at a fraction of the CPU per I/O event of asyncio's
    selector loop; `auto` takes it where it is installed (not on Windows).
    """
    if choice not in ("auto", "uvloop", "asyncio"):
        raise UsageError(f"loop {choice!r} is not a loop corral knows: auto, uvloop or asyncio")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("loop 'uvloop' was asked for, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run_serve(config: Path | None, **values: Any) -> None:
    """Load the settings and config, start the server, print where it is; serve until Ctrl-C."""
    from corral.server import CorralServer, serve

    try:
        settings, loaded = _load(config, **values)
    except CorralError as exc:
        raise _fail("serve", exc) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s"
    )
    if settings.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration step

    def banner(server: CorralServer) -> None:
        runtime = server.runtime
        url = server.url
        typer.secho(f"corral is serving on {url}  (API docs: {url}/docs)", fg="green", bold=True)
        typer.echo(f"  database:  {_shown_database(settings.database)}")
        typer.echo(f"  data dir:  {runtime.data_dir}")
        typer.echo(f"  loop:      {type(asyncio.get_running_loop()).__module__.split('.')[0]}")
        for entry in runtime.agents.values():
            tools = ", ".join(t.name for t in entry.registry) or "no tools"
            typer.echo(f"  agent {entry.name!r}: provider {entry.provider}; tools: {tools}")
        if runtime.dev_key is not None:
            typer.secho(
                f'  API key of the tenant "dev" (shown once, keep it): {runtime.dev_key}',
                fg="yellow",
            )
            typer.echo(f"  export CORRAL_API_KEY={runtime.dev_key}")
            runtime.dev_key = None
        else:
            typer.echo("  API keys: `corral keys create` makes one.")
        typer.echo(
            f'  try:  curl -s -X POST {url}/sessions -H "Authorization: Bearer $CORRAL_API_KEY" '
            "-H 'Content-Type: application/json' -d '{}'"
        )

    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.loop)) as runner:
            runner.run(serve(settings, loaded, on_started=banner))
    except CorralError as exc:
        raise _fail("serve", exc) from None
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        pass


async def _with_store(settings: Any, fn: Any) -> Any:
    from corral.state import SqlStore, upgrade

    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite file's directory
    await upgrade(settings.database)
    store = await SqlStore.connect(settings.database)
    try:
        return await fn(store)
    finally:
        await store.aclose()


def create_key(config: Path | None, tenant: str, name: str, **values: Any) -> None:
    """Make an API key for a tenant (created if new) and print it."""
    from corral.errors import NotFound

    async def make(store: Any) -> str:
        try:
            await store.get_tenant(tenant)
        except NotFound:
            await store.create_tenant(tenant, tenant_id=tenant)
        key, _ = await store.create_api_key(tenant, name=name)
        return str(key)

    try:
        settings, _ = _load(config, **values)
        key = asyncio.run(_with_store(settings, make))
    except CorralError as exc:
        raise _fail("keys create", exc) from None
    typer.echo(f"API key of tenant {tenant!r} (shown once, keep it):")
    typer.echo(key)


def revoke_key(config: Path | None, tenant: str, key_id: str, **values: Any) -> None:
    """Revoke an API key by its id (the part after ``crl_``)."""

    async def revoke(store: Any) -> None:
        await store.revoke_api_key(tenant, key_id)

    try:
        settings, _ = _load(config, **values)
        asyncio.run(_with_store(settings, revoke))
    except CorralError as exc:
        raise _fail("keys revoke", exc) from None
    typer.echo(f"revoked API key {key_id!r} of tenant {tenant!r}")
