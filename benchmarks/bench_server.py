"""The whole server under load; the same code as `corral bench server`.

    .venv/bin/python benchmarks/bench_server.py [--clients 1,10,50,200] [--seconds 10]
        [--warmup 2] [--streams 1000] [--database-url URL] [--instructions 10] [--floor]

Starts a fake OpenAI-compatible model and `corral serve` on 127.0.0.1, loads them with C clients
per level, holds `streams` SSE streams open at once, and stops both processes at the end. With
`--instructions N` it also counts the instructions per run of a second server, then of a second
fake model, under valgrind's callgrind (N runs of one client): figures of the work that the
machine's speed does not move. `--floor` measures a bare relay doing a run's I/O and nothing else
in corral's place: what the I/O alone costs on the machine.
"""

from __future__ import annotations

import sys

from corral.cli import app


def main(argv: list[str]) -> None:
    app(["bench", "server", *argv], prog_name="bench_server.py")


if __name__ == "__main__":
    main(sys.argv[1:])
