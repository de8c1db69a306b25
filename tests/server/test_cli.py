"""`corral serve` and `corral keys`: help, banner, first-start key, config errors, shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.errors import UsageError
from corral.providers.settings import ProviderSettings
from corral.server import ServerSettings
from tests.servers import free_port

runner = CliRunner()


def test_serve_help_lists_every_setting() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in [*ServerSettings.model_fields, *ProviderSettings.model_fields]:
        assert f"CORRAL_{name.upper()}" in result.output, name


def test_serve_reports_a_config_error_and_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('[agents.a]\nsystem = "x"\nmax_steps = -1\n')
    result = runner.invoke(app, ["serve", "--config", str(config), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{config}:3: agents.a.max_steps = -1" in result.output
    assert not (tmp_path / "corral.db").exists()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_keys_create_and_revoke(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    made = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--name", "ci"], env=env)
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert re.fullmatch(r"crl_[0-9a-f]{16}_\S+", key)
    revoked = runner.invoke(app, ["keys", "revoke", key.split("_")[1], "--tenant", "acme"], env=env)
    assert revoked.exit_code == 0, revoked.output
    unknown = runner.invoke(
        app, ["keys", "revoke", "0123456789abcdef", "--tenant", "acme"], env=env
    )
    assert unknown.exit_code == 1
    assert "no API key" in unknown.output


def test_corral_serve_prints_where_it_is_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = _clean_env(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", "from corral.cli import main; main()", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "try:" in line:
                break
        output = "".join(lines)
        assert f"corral is serving on http://127.0.0.1:{port}" in output, output
        assert f"{tmp_path / 'data' / 'corral.db'} (SQLite, WAL)" in output
        assert "provider scripted" in output
        assert "loop:      uvloop" in output  # installed with corral on this platform
        key = re.search(r"(crl_[0-9a-f]{16}_\S+)", output)
        assert key is not None, output
        response = httpx.post(
            f"http://127.0.0.1:{port}/sessions",
            json={},
            headers={"authorization": f"Bearer {key.group(1)}"},
        )
        assert response.status_code == 201
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
        # uvicorn re-raises the signal once it has shut down: the exit status says SIGTERM.
        assert process.returncode in (0, -signal.SIGTERM), rest
        assert "Application shutdown complete" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_loop_setting() -> None:
    import uvloop

    from corral.cli.serve import loop_factory

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    with pytest.raises(UsageError, match="not a loop"):
        loop_factory("tokio")
