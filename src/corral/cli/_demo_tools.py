"""The tools of the demo batch; module-level so process-mode workers import them by path."""

from __future__ import annotations

import ast
import asyncio
import operator
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_file(path: Path) -> str:
    """Return the text of a file."""
    time.sleep(0.03)  # a slow disk, so the timeline shows who waited for whom
    return path.read_text()


def write_file(path: Path, text: str) -> int:
    """Write text to a file and return the number of characters written."""
    time.sleep(0.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.write_text(text)


def list_dir(path: Path) -> list[str]:
    """List the names in a directory."""
    time.sleep(0.02)
    return sorted(p.name for p in path.iterdir())


async def fetch(url: str) -> str:
    """Fetch a URL (simulated: the demo stays offline)."""
    await asyncio.sleep(0.05)
    return f"<html>{url}</html>"


def fib(n: int) -> int:
    """Compute a Fibonacci number the slow way (CPU-bound: runs in a worker process)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def shell(command: str) -> str:
    """Run a shell command (simulated).

    It declares nothing, so it runs alone among the undeclared tools.
    """
    time.sleep(0.03)
    return f"$ {command}\nok"


def flaky(message: str) -> str:
    """Fail, to show that one failure does not sink its siblings."""
    raise RuntimeError(message)


_OPERATORS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression (numbers, + - * / ** %, parentheses).

    Args:
        expression: For example "(2 + 3) * 4".
    """

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    return float(value(ast.parse(expression, mode="eval").body))
