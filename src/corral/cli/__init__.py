"""The `corral` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    help="corral: an async-native concurrency runtime for LLM agents.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Run the demo batch when no command is given (`corral serve` runs the server)."""
    if ctx.invoked_subcommand is None:
        from corral.cli.demo import run_demo

        run_demo()


@app.command()
def demo() -> None:
    """Run one mixed batch of tool calls and print its timeline."""
    from corral.cli.demo import run_demo

    run_demo()


bench_app = typer.Typer(help="Benchmarks, side by side with peers.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("tools")
def bench_tools(
    rounds: Annotated[int, typer.Option(min=1, help="Measured rounds per workload.")] = 15,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured rounds first.")] = 3,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here.")
    ] = None,
    peer: Annotated[
        bool, typer.Option(help="Run ToolRegistry alongside (--no-peer: corral only).")
    ] = True,
    bench_dir: Annotated[
        Path | None,
        typer.Option(help="Where ToolRegistry's venv lives (default: .bench/ in the repository)."),
    ] = None,
    max_seconds: Annotated[float, typer.Option(min=1, help="Stop after this.")] = 600,
    workload: Annotated[
        str,
        typer.Option(
            help="Comma-separated workloads: arith-thread, arith-process, sleep-thread, "
            "sleep-async, openapi, mcp-sse, mcp-http, or the groups all, local, remote, mcp.",
        ),
    ] = "all",
) -> None:
    """Run 100-call batches on corral and ToolRegistry 0.19.0, alternating; print medians."""
    from corral.cli.bench import BenchError, BenchOptions, run_tools_bench, select_workloads
    from corral.errors import UsageError

    try:
        options = BenchOptions(
            rounds=rounds,
            warmup=warmup,
            peer=peer,
            json_path=json_path,
            bench_dir=bench_dir,
            max_seconds=max_seconds,
            workloads=select_workloads(workload),
        )
    except UsageError as exc:
        raise typer.BadParameter(str(exc), param_hint="--workload") from None
    try:
        run_tools_bench(options)
    except BenchError as exc:
        typer.secho(f"corral bench tools: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


mcp_app = typer.Typer(
    help="Model Context Protocol: corral's tools for MCP clients.", no_args_is_help=True
)
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("serve")
def mcp_serve(
    tools: Annotated[
        list[str],
        typer.Option(
            "--tools",
            help="module:attribute of a ToolRegistry, of a function returning one, or of a tool "
            "function; repeatable.",
        ),
    ],
    transport: Annotated[
        Literal["stdio", "http"], typer.Option(help="stdio, or streamable HTTP.")
    ] = "stdio",
    host: Annotated[str, typer.Option(help="HTTP: the address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP: the port.")] = 8765,
    path: Annotated[str, typer.Option(help="HTTP: the MCP endpoint's path.")] = "/mcp",
    app_dir: Annotated[
        str, typer.Option(help="Put this directory on sys.path first (default: the current one).")
    ] = ".",
) -> None:
    """Serve a registry's tools as an MCP server: each call runs through corral's scheduler."""
    from corral.cli.mcp import ServeError, ServeOptions, run_serve

    options = ServeOptions(
        tools=tuple(tools), transport=transport, host=host, port=port, path=path, app_dir=app_dir
    )
    try:
        run_serve(options)
    except ServeError as exc:
        typer.secho(f"corral mcp serve: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@bench_app.command("server")
def bench_server(
    clients: Annotated[
        str, typer.Option(help="Concurrent clients, comma-separated: one measured level each.")
    ] = "1,10,50,200",
    seconds: Annotated[float, typer.Option(min=0.5, help="Measured seconds per level.")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Unmeasured seconds first.")] = 2.0,
    streams: Annotated[
        int, typer.Option(min=0, help="SSE streams to hold open at once (0: skip).")
    ] = 1000,
    database_url: Annotated[
        str | None, typer.Option(help="The server's database (default: SQLite in a temp dir).")
    ] = None,
    instructions: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also count the server's instructions per run under valgrind's callgrind, "
            "over this many runs of one client (0: skip). A figure the machine's speed does "
            "not move; needs valgrind.",
        ),
    ] = 0,
    floor: Annotated[
        bool,
        typer.Option(
            "--floor",
            help="Measure the floor instead of corral: a bare relay on the same uvicorn, uvloop "
            "and model transport, doing a run's I/O with no framework, database or agent.",
        ),
    ] = False,
) -> None:
    """Load `corral serve` with C clients doing agent runs; report runs/s, latency, CPU."""
    from corral.cli.bench_server import ServerBenchOptions, run_server_bench
    from corral.errors import CorralError

    try:
        levels = tuple(int(c) for c in clients.split(",") if c.strip())
    except ValueError:
        typer.secho(f"--clients: not a list of integers: {clients!r}", fg="red", err=True)
        raise typer.Exit(2) from None
    if not levels or min(levels) < 1:
        typer.secho(f"--clients: each count must be 1 or more: {clients!r}", fg="red", err=True)
        raise typer.Exit(2)
    options = ServerBenchOptions(
        concurrency=levels,
        seconds=seconds,
        warmup_s=warmup,
        streams=streams,
        database_url=database_url,
        instruction_runs=instructions,
        floor=floor,
    )
    try:
        run_server_bench(options)
    except CorralError as exc:  # ServerBenchError, or the database the key goes into
        typer.secho(f"corral bench server: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@bench_app.command("manager")
def bench_manager(
    requests: Annotated[int, typer.Option(min=10, help="Concurrent requests.")] = 1000,
) -> None:
    """Measure the request manager: dedup, stream caps, added latency, fan-out memory."""
    from corral.cli.bench_manager import run_manager_bench

    run_manager_bench(requests=requests)


db_app = typer.Typer(help="The server's database: schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[
        str,
        typer.Option(
            envvar="CORRAL_DATABASE_URL",
            help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASS@HOST/DB.",
        ),
    ],
) -> None:
    """Migrate the database to the newest schema; safe to run again, or from several hosts."""
    import asyncio

    from corral.errors import CorralError
    from corral.state import upgrade
    from corral.state._engine import parse_url, redact
    from corral.state._migrate import head_revision

    try:
        where = redact(parse_url(url)[0])
        asyncio.run(upgrade(url))
    except CorralError as exc:
        typer.secho(f"corral db upgrade: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{where} is at revision {head_revision()}, the newest")


_CONFIG_OPTION = typer.Option(
    "--config",
    help="A corral.toml: \\[server] settings, \\[provider], \\[agents.NAME] agents "
    "(default: $CORRAL_CONFIG).",
)
_DATA_DIR_OPTION = typer.Option(help="Where data lives (default: $CORRAL_DATA_DIR or .corral).")
_DATABASE_OPTION = typer.Option(
    help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://... (default: DATA_DIR/corral.db)."
)


def _serve_command_class() -> type:
    from corral.cli.serve import ServeCommand

    return ServeCommand


@app.command(cls=_serve_command_class())
def serve(
    config: Annotated[Path | None, _CONFIG_OPTION] = None,
    host: Annotated[str | None, typer.Option(help="Address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: Annotated[Path | None, _DATA_DIR_OPTION] = None,
    database_url: Annotated[str | None, _DATABASE_OPTION] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Run the HTTP API: agents' sessions, streamed requests, persistence, memory, tenants."""
    from corral.cli.serve import run_serve

    run_serve(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        log_level=log_level,
    )


keys_app = typer.Typer(help="API keys of the server's tenants.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant (created if new).")] = "dev",
    name: Annotated[str, typer.Option(help="A name for the key, to recognise it.")] = "",
    config: Annotated[Path | None, _CONFIG_OPTION] = None,
    data_dir: Annotated[Path | None, _DATA_DIR_OPTION] = None,
    database_url: Annotated[str | None, _DATABASE_OPTION] = None,
) -> None:
    """Make an API key for a tenant and print it (only its hash is stored)."""
    from corral.cli.serve import create_key

    create_key(config, tenant, name, data_dir=data_dir, database_url=database_url)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id: the part after 'crl_'.")],
    tenant: Annotated[str, typer.Option(help="The key's tenant.")] = "dev",
    config: Annotated[Path | None, _CONFIG_OPTION] = None,
    data_dir: Annotated[Path | None, _DATA_DIR_OPTION] = None,
    database_url: Annotated[str | None, _DATABASE_OPTION] = None,
) -> None:
    """Revoke an API key: requests with it get 401 from then on."""
    from corral.cli.serve import revoke_key

    revoke_key(config, tenant, key_id, data_dir=data_dir, database_url=database_url)


def main() -> None:
    """Entry point of the `corral` script."""
    app()
