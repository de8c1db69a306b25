"""corral._json: the standard library's JSON, faster, with nothing it writes lost or refused."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from corral._json import dumps, loads

VALUES: list[object] = [
    {"type": "text", "seq": 7, "text": "héllo ✓", "nested": {"list": [1, 2.5, None, True]}},
    2**70,
    [0.1, 1e16, 1e-7, -0.0],
    "",
    {"k": (1, 2)},
]


@pytest.mark.parametrize("value", VALUES)
def test_what_is_written_reads_back_as_the_standard_library_reads_it(value: object) -> None:
    text = dumps(value)
    assert loads(text) == json.loads(text) == json.loads(json.dumps(value))
    assert b" " not in text.replace(b"\xc3\xa9llo \xe2\x9c\x93", b"")  # compact: no padding


def test_what_json_cannot_hold_is_written_as_its_str() -> None:
    when = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    assert loads(dumps({"at": when}))["at"].startswith("2026-11-28")
    assert loads(dumps({"o": object()}))["o"].startswith("<object object")
    # What the fast encoder refuses (bytes that are not UTF-8) still goes out, as json does it.
    assert loads(dumps({"raw": b"\xff"})) == {"raw": "b'\\xff'"}
    assert loads(dumps({1: "int key"})) == {"1": "int key"}


def test_bad_text_is_a_value_error_that_says_where() -> None:
    with pytest.raises(ValueError, match="line 1 column"):
        loads(b'{"a": ')
