"""Read-modify-write calls racing on one real file, in the thread pool.

Declared (a Path parameter or `writes="file:{...}"`), the scheduler runs them one at a time in the
order the model emitted them and no line is lost. Declared as nothing under
`assume="independent"`, they run at once and lose lines: the hazard the scheduler exists for,
made deterministic with a barrier that lets every call read before any writes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corral import Status
from tests import support
from tests.scheduler.helpers import MakeRegistry, call

CALLS = 8


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_declared_by_a_path_parameter_every_line_lands_in_emitted_order(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(mode="thread", cwd=tmp_path)
    reg.register(support.append_line)  # `path: Path`: it writes file:{path}
    # Four spellings of one file: relative, "./", through "..", absolute.
    spellings = ["notes.txt", "./notes.txt", "sub/../notes.txt", str(tmp_path / "notes.txt")]
    order = [5, 2, 7, 0, 3, 6, 1, 4]  # emitted order is not numeric order
    calls = [
        call(f"c{n}", "append_line", path=spellings[i % 4], text=f"line {n}", delay_ms=5)
        for i, n in enumerate(order)
    ]
    results = await reg.execute(calls)
    assert results.ok, results
    assert {r.mode for r in results} == {"thread"}
    assert lines(tmp_path / "notes.txt") == [f"line {n}" for n in order]
    # Each call saw the file as every earlier call had left it.
    assert [r.value for r in results] == [len("line 0\n") * i for i in range(CALLS)]


async def test_declared_by_a_writes_template_every_line_lands_in_emitted_order(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(mode="thread", cwd=tmp_path)
    target = tmp_path / "log.txt"

    @reg.tool(writes="file:{name}")
    def append_text(name: str, text: str) -> int:
        return support.append_line(Path(name), text, delay_ms=5)

    calls = [call(f"c{n}", "append_text", name=str(target), text=f"line {n}") for n in range(CALLS)]
    results = await reg.execute(calls)
    assert results.ok, results
    assert lines(target) == [f"line {n}" for n in range(CALLS)]


async def test_undeclared_tools_are_safe_by_default(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(mode="thread", cwd=tmp_path)
    target = tmp_path / "log.txt"

    def append_undeclared(name: str, text: str) -> int:  # a str, not a Path: declares nothing
        return support.append_line(Path(name), text, delay_ms=5)

    reg.register(append_undeclared)
    calls = [
        call(f"c{n}", "append_undeclared", name=str(target), text=f"line {n}") for n in range(CALLS)
    ]
    results = await reg.execute(calls)
    assert results.ok, results
    assert lines(target) == [f"line {n}" for n in range(CALLS)]


async def test_undeclared_and_assumed_independent_the_race_loses_lines(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(mode="thread", cwd=tmp_path, assume="independent")
    target = tmp_path / "log.txt"
    # Every call reads, then waits until all have read, then writes: the worst interleaving,
    # every time. (If the scheduler ran them one at a time, the barrier would break instead.)
    everyone_has_read = threading.Barrier(CALLS, timeout=10)

    def racy_append(name: str, text: str) -> int:
        path = Path(name)
        before = path.read_text() if path.exists() else ""
        everyone_has_read.wait()
        path.write_text(before + text + "\n")
        return len(before)

    reg.register(racy_append)
    calls = [call(f"c{n}", "racy_append", name=str(target), text=f"line {n}") for n in range(CALLS)]
    results = await reg.execute(calls)
    assert [r.status for r in results] == [Status.OK] * CALLS
    assert [r.value for r in results] == [0] * CALLS  # every call read the empty file
    survivors = lines(target)
    assert len(survivors) == 1  # the last writer wins: CALLS - 1 lines lost
    assert survivors[0] in {f"line {n}" for n in range(CALLS)}


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared-independent"])
async def test_the_plan_shows_the_difference(
    make_registry: MakeRegistry, tmp_path: Path, declared: bool
) -> None:
    reg = make_registry(cwd=tmp_path, assume="independent")
    reg.register(support.append_line if declared else support.add)
    calls = (
        [call(f"c{n}", "append_line", path="f.txt", text="x") for n in range(3)]
        if declared
        else [call(f"c{n}", "add", a=1, b=2) for n in range(3)]
    )
    edges = {(e.before, e.after) for e in reg.plan(calls).edges}
    assert edges == ({(0, 1), (1, 2)} if declared else set())
