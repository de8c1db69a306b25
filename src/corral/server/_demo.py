"""The built-in demo agent's tools: files in the session's own directory, and a calculator.

They answer `DEMO_RULES` of the scripted provider ("write 'hi' to a.txt, then read a.txt",
"list the files", "calculate 2 * 21", "fetch https://..."). The file tools refuse paths outside
the session's working directory: each session has its own under the server's data directory.
"""

from __future__ import annotations

import ast
import asyncio
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.tools import ToolContext, ToolRegistry

__all__ = ["demo_tools"]


def _inside(path: Path, ctx: ToolContext) -> Path:
    # The registry has resolved `path` against the session's directory (".." included); a path
    # that still points elsewhere is refused rather than followed.
    root = ctx.cwd.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise PermissionError(f"{str(path)!r} is outside this session's directory")
    return resolved


def read_file(path: Path, ctx: ToolContext) -> str:
    """Return the text of a file in the session's directory."""
    return _inside(path, ctx).read_text()


def write_file(path: Path, text: str, ctx: ToolContext) -> int:
    """Write text to a file in the session's directory; return the characters written."""
    target = _inside(path, ctx)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.write_text(text)


def list_dir(path: Path, ctx: ToolContext) -> list[str]:
    """List the names in a directory of the session's directory."""
    return sorted(p.name for p in _inside(path, ctx).iterdir())


async def fetch(url: str) -> str:
    """Fetch a URL (simulated: the demo stays offline)."""
    await asyncio.sleep(0)
    return f"<html>{url}</html>"


_OPERATORS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression (numbers, + - * / %, parentheses).

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


def demo_tools(registry: ToolRegistry) -> None:
    """Register the demo tools in `registry`."""
    registry.register(read_file, read_only=True)
    registry.register(write_file)  # a Path parameter: it writes file:{path}
    registry.register(list_dir, read_only=True)
    registry.register(fetch, read_only=True)
    registry.register(calculate, read_only=True)
