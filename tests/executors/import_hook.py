"""A module for worker processes to preload, misbehaving as `CORRAL_TEST_IMPORT` says.

`exit` ends the process during the import; `wait:<path>` blocks the import until the file exists
(at most 30 s). Without the variable the import does nothing. Not a test module: pytest never
imports it, only the workers of the tests that preload it do.
"""

from __future__ import annotations

import os
import time

_ACTION = os.environ.get("CORRAL_TEST_IMPORT", "")

if _ACTION == "exit":
    os._exit(5)
elif _ACTION.startswith("wait:"):
    _path = _ACTION.removeprefix("wait:")
    _deadline = time.monotonic() + 30
    while not os.path.exists(_path) and time.monotonic() < _deadline:
        time.sleep(0.005)
