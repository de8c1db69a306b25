"""The whole server under load; the same code as `corral bench server`.

    .venv/bin/python benchmarks/bench_server.py [--clients 1,10,50,200] [--seconds 10]
        [--warmup 2] [--streams 1000] [--database-url URL] [--instructions 10]

Starts a fake OpenAI-compatible model and `corral serve` on 127.0.0.1, loads them with C clients
per level, holds `streams` SSE streams open at once, and stops both processes at the end. With
`--instructions N` it also counts a second server's instructions per run under valgrind's
callgrind (N runs of one client): a figure of the server's work the machine's speed does not move.
"""

from __future__ import annotations

import sys

from corral.cli import app


def main(argv: list[str]) -> None:
    app(["bench", "server", *argv], prog_name="bench_server.py")


if __name__ == "__main__":
    main(sys.argv[1:])
