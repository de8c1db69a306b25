"""ToolRegistry's side of the bench: its own venv under `.bench/`, and the peer process in it.

The peer (`_peer_toolregistry.py`) is long-lived and driven with JSON lines, one command at a
time; it times its own execute call, so the pipe is never inside a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from corral.cli.bench._workloads import BenchError, Variant

__all__ = ["TOOLREGISTRY_VERSION", "Peer", "default_bench_dir", "ensure_peer_env", "open_peer"]

TOOLREGISTRY_VERSION = "0.19.0"
_REQUIREMENT = f"toolregistry[mcp,openapi]=={TOOLREGISTRY_VERSION}"
"""The extras bring the MCP SDK its MCP integration imports; OpenAPI needs nothing more."""
_PEER_SCRIPT = Path(__file__).with_name("_peer_toolregistry.py")
_PEER_REPLY_TIMEOUT_S = 120.0
_PEER_START_TIMEOUT_S = 60.0


def default_bench_dir() -> Path:
    """Return `.bench/` in the repository when run from a checkout, else in the current dir."""
    root = Path(__file__).resolve().parents[4]  # src/corral/cli/bench/_peer.py -> the repository
    if (root / "pyproject.toml").is_file() and (root / "src" / "corral").is_dir():
        return root / ".bench"
    return Path.cwd() / ".bench"


def _venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_toolregistry(python: Path) -> bool:
    if not python.exists():
        return False
    check = (
        "import sys, toolregistry, toolregistry.integrations.mcp, "
        "toolregistry.integrations.openapi; "
        f"sys.exit(toolregistry.__version__ != {TOOLREGISTRY_VERSION!r})"
    )
    done = subprocess.run([str(python), "-c", check], capture_output=True, timeout=120, check=False)
    return done.returncode == 0


def ensure_peer_env(bench_dir: Path, console: Console) -> Path:
    """Return the Python of ToolRegistry's own venv, making it (venv + pip install) if needed.

    ToolRegistry is installed with its `mcp` and `openapi` extras, for the remote workloads.

    Raises:
        BenchError: the venv could not be made or ToolRegistry could not be installed.
    """
    env = bench_dir / f"toolregistry-{TOOLREGISTRY_VERSION}"
    python = _venv_python(env)
    if _has_toolregistry(python):
        return python
    steps: list[list[str]] = []
    if not python.exists():
        steps.append([sys.executable, "-m", "venv", str(env)])
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    steps.append([*pip, _REQUIREMENT])
    with console.status(f"Making ToolRegistry {TOOLREGISTRY_VERSION}'s venv in {env} ..."):
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"{' '.join(step)!r} took too long") from exc
            if done.returncode != 0:
                raise BenchError(f"{' '.join(step)!r} failed:\n{done.stdout}{done.stderr}")
    if not _has_toolregistry(python):
        raise BenchError(f"{_REQUIREMENT} is not importable by {python}")
    return python


class Peer:
    """The ToolRegistry peer process; one command at a time, answers read line by line."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self._log_path = log_path
        self.version = ""

    async def request(self, command: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one command and return the peer's answer."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command).encode() + b"\n")
            await stdin.drain()
        except ConnectionError:
            raise BenchError(f"the ToolRegistry peer exited; see {self._log_path}") from None
        return await self.read_answer(timeout_s=timeout_s)

    async def read_answer(self, *, timeout_s: float) -> dict[str, Any]:
        """Return the peer's next answer line; raise `BenchError` if it is a failure."""
        stdout = self._process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await stdout.readline()
        except TimeoutError:
            raise BenchError(
                f"the ToolRegistry peer did not answer within {timeout_s:g} s; see {self._log_path}"
            ) from None
        if not line:
            raise BenchError(f"the ToolRegistry peer exited; see {self._log_path}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BenchError(f"the ToolRegistry peer failed: {answer.get('error')}")
        return answer

    async def run(
        self,
        registry: str,
        variant: Variant,
        calls: list[dict[str, Any]],
        *,
        source: Mapping[str, str] | None = None,
    ) -> float:
        """Run one batch in the peer and return the seconds it measured around the call.

        Args:
            registry: The peer's registry to use, made on first use.
            variant: ToolRegistry's API and mode.
            calls: OpenAI tool calls.
            source: For a registry of remote tools, `{"kind": "openapi" | "mcp", "url": ...}`:
                where the peer registers them from when it makes the registry.
        """
        command: dict[str, Any] = {
            "op": "run",
            "registry": registry,
            "api": variant.api,
            "mode": variant.mode,
            "calls": calls,
        }
        if source is not None:
            command["source"] = dict(source)
        answer = await self.request(command, timeout_s=_PEER_REPLY_TIMEOUT_S)
        if answer["failed"]:
            raise BenchError(
                f"{answer['failed']} ToolRegistry calls of {registry} via {variant.label} "
                f"failed, e.g. {answer['errors']}"
            )
        return float(answer["elapsed_s"])

    async def aclose(self) -> None:
        """Ask the peer to quit, and kill it if it does not within 10 s. Idempotent."""
        process = self._process
        if process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):  # a pipe the peer already closed
                assert process.stdin is not None
                process.stdin.write(b'{"op": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
        await process.wait()


def open_log(path: Path) -> IO[bytes]:
    """Open a child process's log for writing, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


@contextlib.asynccontextmanager
async def open_peer(
    python: Path, log_path: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[Peer]:
    """Start the peer, wait for its greeting, and stop it on the way out, even on errors.

    Args:
        python: The interpreter of ToolRegistry's venv.
        log_path: Where the peer's stderr goes.
        env: The peer's environment; defaults to this process's.
    """
    log = open_log(log_path)
    try:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(_PEER_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=str(log_path.parent),
            env=None if env is None else dict(env),
        )
        peer = Peer(process, log_path)
        try:
            greeting = await peer.read_answer(timeout_s=_PEER_START_TIMEOUT_S)
            peer.version = str(greeting.get("version", ""))
            yield peer
        finally:
            await peer.aclose()
    finally:
        log.close()
