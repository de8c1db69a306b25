"""A timeline table of one batch: when each call ran, and which call it waited for and why."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from corral.scheduler import EXCLUSIVE_RESOURCE, Edge, EdgeKind, Status, ToolResults

__all__ = ["timeline_table"]

_STYLE = {
    Status.OK: "green",
    Status.ERROR: "red",
    Status.TIMEOUT: "yellow",
    Status.CANCELLED: "magenta",
    Status.SKIPPED: "dim",
}


def timeline_table(
    results: ToolResults, *, title: str = "timeline", width: int = 40, base: str | None = None
) -> Table:
    """Return a table with one row per call: resources, what it waited for, and a time bar.

    File resources under `base` are shown relative to it.
    """
    plan = results.plan
    started = [r.started_at for r in results if r.started_at is not None]
    finished = [r.finished_at for r in results if r.finished_at is not None]
    origin = min(started, default=0.0)
    span = max(max(finished, default=origin) - origin, 1e-9)
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("call", "tool", "mode", "touches", "waited for", "start ms", "end ms"):
        table.add_column(column, no_wrap=column in ("call", "tool", "mode"))
    table.add_column("status")
    table.add_column(f"0 … {span * 1000:.0f} ms", no_wrap=True)
    for index, result in enumerate(results):
        touches = "-"
        waited = "-"
        if plan is not None:
            claims = plan.claims[index]
            touches = ", ".join(_claim(c.resource, c.write, base) for c in claims) or "nothing"
            edges = plan.incoming[index]
            waited = ", ".join(f"{plan.ids[e.before]} ({_why(e, base)})" for e in edges) or "-"
        start = end = "-"
        bar = Text(" " * width)
        if result.started_at is not None and result.finished_at is not None:
            s = (result.started_at - origin) / span
            e = (result.finished_at - origin) / span
            start, end = f"{s * span * 1000:.1f}", f"{e * span * 1000:.1f}"
            left = min(int(s * width), width - 1)
            right = max(left + 1, int(round(e * width)))
            bar = Text(" " * left + "█" * (right - left) + " " * (width - right))
            bar.stylize(_STYLE[result.status])
        table.add_row(
            result.id,
            result.name,
            result.mode or "-",
            touches,
            waited,
            start,
            end,
            Text(result.status.value, style=_STYLE[result.status]),
            bar,
        )
    return table


def _claim(resource: str, write: bool, base: str | None) -> str:
    if resource == EXCLUSIVE_RESOURCE:
        return "anything (undeclared)"
    return f"{'writes' if write else 'reads'} {_short(resource, base)}"


def _why(edge: Edge, base: str | None) -> str:
    if edge.kind is EdgeKind.EXPLICIT:
        return "depends_on"
    if edge.kind is EdgeKind.EXCLUSIVE:
        return "undeclared: one at a time"
    if edge.kind is EdgeKind.ORDER or edge.resource is None:
        return "order kept around a call that could not run"
    return _short(edge.resource, base)


def _short(resource: str, base: str | None) -> str:
    prefix = f"file:{base.rstrip('/')}/" if base else None
    if prefix and resource.startswith(prefix):
        return "file:" + resource[len(prefix) :]
    return resource
