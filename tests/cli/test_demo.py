from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from corral.cli import app
from corral.cli.demo import run_demo


def test_demo_prints_a_timeline_with_every_call() -> None:
    out = io.StringIO()
    run_demo(Console(file=out, width=200))
    text = out.getvalue()
    for call_id in ("w1", "r1", "w2", "l1", "w3", "f1", "f2", "p1", "s1", "s2", "x1"):
        assert f" {call_id} " in text
    assert "writes file:notes/todo.txt" in text
    assert "w1 (file:notes/todo.txt)" in text  # r1 waited for w1 on that file
    assert "undeclared: one at a time" in text
    assert text.count(" ok ") == 10
    assert text.count(" error ") == 1


def test_bare_corral_command_runs_the_demo() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "11 tool calls" in result.output
