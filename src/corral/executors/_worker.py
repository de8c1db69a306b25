"""The worker process of the process pool.

The pool runs this file by path (`runpy.run_path`), not as `-m corral.executors._worker`, so a
worker starts with the standard library only and does not import corral and its dependencies until
a tool needs them. Keep it that way: import nothing outside the standard library at module level.

Frames on the pipes are a 4-byte big-endian length and a pickle. The parent writes
`(seq, key, module, qualname, pickled_fn, kwargs, is_async)`; the worker answers
`(seq, OK, value)`, `(seq, RAISED, pickled_exc, type_name, message, traceback)` or
`(seq, UNPICKLABLE, type_name, message)`. At start it sends `(0, READY, pid)`. A frame it cannot
load (an argument whose class it cannot rebuild) gets `(CURRENT, BAD_ARGUMENTS, type_name,
message)`: the parent sends one call at a time, so the answer can only be for that one.

The protocol owns the worker's original stdin and stdout; the tool's own `print` goes to stderr,
so a chatty tool cannot corrupt a frame.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

# asyncio and traceback are imported when first needed (an `async def` tool, a failure): asyncio
# alone would take most of a worker's start-up time, and replacements start while calls wait.

READY, OK, RAISED, UNPICKLABLE, BAD_ARGUMENTS = 0, 1, 2, 3, 4
CURRENT = -1
"""The sequence number of an answer to the call whose frame could not be loaded."""
HEADER = struct.Struct(">I")


def _read_exactly(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _send(fd: int, message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, HEADER.pack(len(payload)) + payload)


def _resolve(
    cache: dict[str, Callable[..., Any]],
    key: str,
    module: str | None,
    qualname: str | None,
    pickled: bytes | None,
) -> Callable[..., Any]:
    fn = cache.get(key)
    if fn is None:
        if pickled is not None:
            try:
                fn = pickle.loads(pickled)
            except Exception as exc:
                # The parent sends a function by value once per worker: remember why it failed,
                # or every later call would arrive with nothing to load.
                fn = _unloadable(key, exc)
        else:
            assert module is not None
            assert qualname is not None
            fn = resolve_import(module, qualname)
        cache[key] = fn
    return fn


def _unloadable(key: str, exc: Exception) -> Callable[..., Any]:
    message = f"tool {key!r} cannot be loaded in the worker process: {type(exc).__name__}: {exc}"

    def fail(**_: Any) -> Any:
        raise RuntimeError(message)

    return fail


def resolve_import(module: str, qualname: str) -> Any:
    """Import `module` and walk `qualname` inside it."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _answer(seq: int, value: Any) -> bytes:
    try:
        payload = pickle.dumps((seq, OK, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        payload = pickle.dumps(
            (
                seq,
                UNPICKLABLE,
                type(value).__qualname__,
                f"the result of type {type(value).__qualname__} cannot be pickled: {exc}",
            )
        )
    return HEADER.pack(len(payload)) + payload


def _failure(seq: int, exc: BaseException) -> bytes:
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)
    except Exception:
        pickled = None
    import traceback

    tb = "".join(traceback.format_exception(exc))
    payload = pickle.dumps((seq, RAISED, pickled, type(exc).__name__, str(exc), tb))
    return HEADER.pack(len(payload)) + payload


def _bad_arguments(exc: Exception) -> bytes:
    message = f"{type(exc).__name__}: {exc}"
    payload = pickle.dumps((CURRENT, BAD_ARGUMENTS, type(exc).__name__, message))
    return HEADER.pack(len(payload)) + payload


def main() -> None:
    """Serve calls until the parent closes the pipe."""
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    cache: dict[str, Callable[..., Any]] = {}
    loop: asyncio.AbstractEventLoop | None = None
    for module in sys.argv[2:]:  # warm: import the tools' modules before saying ready
        try:
            importlib.import_module(module)
        except Exception as exc:  # the call that needs it will report the error
            sys.stderr.write(f"corral worker: cannot preload {module!r}: {exc!r}\n")
    _send(proto_out, (0, READY, os.getpid()))
    while True:
        try:
            (size,) = HEADER.unpack(_read_exactly(proto_in, HEADER.size))
            data = _read_exactly(proto_in, size)
        except EOFError:
            break
        try:
            seq, key, module, qualname, pickled, kwargs, is_async = pickle.loads(data)
        except Exception as exc:  # an argument this process cannot rebuild
            frame = _bad_arguments(exc)
        else:
            try:
                fn = _resolve(cache, key, module, qualname, pickled)
                if is_async:
                    if loop is None:
                        import asyncio

                        loop = asyncio.new_event_loop()
                    value = loop.run_until_complete(fn(**kwargs))
                else:
                    value = fn(**kwargs)
                frame = _answer(seq, value)
            except BaseException as exc:
                frame = _failure(seq, exc)
        try:
            _write_all(proto_out, frame)
        except BrokenPipeError:  # the parent is gone
            break
    if loop is not None:
        loop.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
