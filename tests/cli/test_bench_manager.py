from __future__ import annotations

import io

from rich.console import Console

from corral.cli.bench_manager import run_manager_bench


def test_manager_bench_runs_small_and_reports_every_figure() -> None:
    out = io.StringIO()
    figures = run_manager_bench(Console(file=out, width=120), requests=60)
    assert figures.identical_provider_calls == 1
    assert figures.distinct_max_open <= 50
    assert figures.added_p99_ms > 0
    assert figures.fanout_peak_mb > 0
    text = out.getvalue()
    assert "added latency" in text
    assert "peak memory" in text
