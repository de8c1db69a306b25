"""The `corral` command line."""

from __future__ import annotations

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
    """Run the demo batch when no command is given."""
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


def main() -> None:
    """Entry point of the `corral` script."""
    app()
