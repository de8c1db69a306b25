"""`corral bench server`: the whole server under load, over real sockets on 127.0.0.1.

Three processes: the fake OpenAI-compatible model (`_model`: 50 ms to the first chunk, then 2 ms
per chunk), `corral serve` with an agent whose tools `add` and `multiply` each await 20 ms
(`_tools`), and this one, the clients. One run = create a session, then stream one message: the
model answers with both tool calls in one message, and after their results with a final text that
quotes them, which the client checks. C clients do runs back to back, for each C in turn; the
server's CPU time comes from ``/proc/<pid>/stat`` over the measured window only.

Then `streams` clients each open a message stream whose model call the fake holds: all of them
are open at once (the server's own `corral_sse_streams` gauge says how many), then released, and
every one must end with the right answer.

With `instruction_runs` (`--instructions N`), a second server runs under valgrind's callgrind and
its instructions per run are counted over N runs of one client (`Callgrind`): a measure of the
server's work that, unlike CPU seconds, the machine's speed of the moment does not move. The fake
model's are counted the same way, in a pass of its own: its work per run is fixed, so the server's
count as a multiple of it compares across machines.

With `floor` (`--floor`), a bare relay (`_floor`) stands in corral's place: the same uvicorn,
uvloop and model transport doing a run's I/O, and nothing else. Its figures are what a run's I/O
costs on the machine: the floor under corral's own.
"""

from __future__ import annotations

from corral.cli.bench_server._run import (
    LevelFigures,
    ServerBenchError,
    ServerBenchFigures,
    ServerBenchOptions,
    StreamsFigures,
    run_server_bench,
)

__all__ = [
    "LevelFigures",
    "ServerBenchError",
    "ServerBenchFigures",
    "ServerBenchOptions",
    "StreamsFigures",
    "run_server_bench",
]
