#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.11+ and pip.

    python3 dev.py start      install into .venv if needed, then run `corral serve` (the main job)
    python3 dev.py test       install into .venv if needed, then ruff, mypy and the test suite
    python3 dev.py lock       re-pin requirements.lock from pyproject.toml (maintainers)

Each command creates `.venv` on first use and reinstalls only when `requirements.lock` or
`pyproject.toml` changed. Extra arguments go to the tool: `python3 dev.py test -k plan`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".corral-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def run(*args: str | os.PathLike[str], **kwargs: object) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    result = subprocess.run([str(a) for a in args], cwd=ROOT, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode:
        sys.exit(result.returncode)


def fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (LOCK, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - a clear message for an old interpreter
        sys.exit(f"corral needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    want = fingerprint()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        run(sys.executable, "-m", "venv", VENV)
    pip: list[str | os.PathLike[str]] = [
        BIN / "python",
        "-m",
        "pip",
        "--disable-pip-version-check",
        "-q",
    ]
    run(*pip, "install", "-r", LOCK)
    run(*pip, "install", "--no-deps", "--no-build-isolation", "-e", ".")
    STAMP.write_text(want)


def cmd_start(args: list[str]) -> None:
    ensure_venv()
    # The HTTP server; `corral demo` (or bare `corral`) is the one-batch timeline demo.
    os.execv(str(BIN / "corral"), [str(BIN / "corral"), "serve", *args])


def cmd_test(args: list[str]) -> None:
    ensure_venv()
    run(BIN / "ruff", "check", "src", "tests", "benchmarks", "dev.py")
    run(BIN / "ruff", "format", "--check", "src", "tests", "benchmarks", "dev.py")
    run(BIN / "mypy")
    run(BIN / "python", "-m", "pytest", *args)


def cmd_lock(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "venv"
        run(sys.executable, "-m", "venv", env)
        py = env / ("Scripts" if os.name == "nt" else "bin") / "python"
        run(py, "-m", "pip", "-q", "install", f"{ROOT}[dev]", "hatchling", "editables")
        frozen = subprocess.run(
            [str(py), "-m", "pip", "freeze", "--exclude", "corral", "--all"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    lines = [
        line
        for line in frozen.splitlines()
        if line and not line.startswith(("pip==", "setuptools=="))
    ]
    LOCK.write_text(
        "# Pinned by `python3 dev.py lock` from pyproject.toml ([dev] extra included).\n"
        + "\n".join(sorted(lines, key=str.lower))
        + "\n"
    )
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(lines)} packages)")


COMMANDS = {"start": cmd_start, "test": cmd_test, "lock": cmd_lock}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
