"""ToolResult and ToolResults: what a model reads back, and the batch as a sequence."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from corral.scheduler import ErrorInfo, Status, ToolResult, ToolResults, make_plan


def ok(call_id: str, value: object = None, **kw: object) -> ToolResult:
    return ToolResult(call_id, "t", Status.OK, value=value, **kw)  # type: ignore[arg-type]


def failed(call_id: str, status: Status = Status.ERROR) -> ToolResult:
    return ToolResult(call_id, "t", status, error=ErrorInfo("ValueError", "bad input"))


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain text", "plain text"),
        ({"a": [1, 2], "é": None}, '{"a": [1, 2], "é": null}'),
        (3, "3"),
        (None, "null"),
        (Point(1, 2), '{"x":1,"y":2}'),
        (Path("/tmp/x"), '"/tmp/x"'),
        (datetime.date(2024, 5, 1), '"2024-05-01"'),
    ],
    ids=["str", "dict", "int", "none", "dataclass", "path", "date"],
)
def test_content_is_the_value_as_text(value: object, text: str) -> None:
    assert ok("c", value).content() == text


def test_content_of_an_unserialisable_value_falls_back_to_repr() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    assert "<opaque>" in ok("c", Opaque()).content()


@pytest.mark.parametrize("status", [Status.ERROR, Status.TIMEOUT, Status.CANCELLED, Status.SKIPPED])
def test_content_of_a_failure_names_status_type_and_message(status: Status) -> None:
    result = failed("c", status)
    assert not result.ok
    assert result.content() == f"{status.value}: ValueError: bad input"


def test_error_info_from_an_exception() -> None:
    info = ErrorInfo.from_exception(KeyError("k"), traceback="tb")
    assert (info.type, info.message, info.traceback) == ("KeyError", "'k'", "tb")
    assert str(info) == "KeyError: 'k'"
    assert info == ErrorInfo("KeyError", "'k'")  # the traceback does not take part in equality


def test_provider_messages() -> None:
    good, bad = ok("c1", {"n": 1}), failed("c2")
    assert good.to_openai_message() == {"role": "tool", "tool_call_id": "c1", "content": '{"n": 1}'}
    assert good.to_anthropic_block() == {
        "type": "tool_result",
        "tool_use_id": "c1",
        "content": '{"n": 1}',
    }
    assert bad.to_anthropic_block() == {
        "type": "tool_result",
        "tool_use_id": "c2",
        "content": "error: ValueError: bad input",
        "is_error": True,
    }


def test_duration_only_for_calls_that_ran() -> None:
    assert ok("c", started_at=1.0, finished_at=1.25).duration_s == 0.25
    assert failed("c", Status.SKIPPED).duration_s is None


def test_status_values_are_the_documented_strings() -> None:
    assert [s.value for s in Status] == ["ok", "error", "timeout", "cancelled", "skipped"]
    assert Status("skipped") is Status.SKIPPED
    assert f"{Status.OK}" == "ok"


def test_results_are_a_sequence_in_call_order() -> None:
    items = [ok("a", 1), failed("b"), ok("c", 3)]
    results = ToolResults(items)
    assert len(results) == 3
    assert results[1].id == "b"
    assert [r.id for r in results[1:]] == ["b", "c"]
    assert [r.id for r in results] == ["a", "b", "c"]
    assert results.by_id("c").value == 3
    assert not results.ok
    assert ToolResults(items[::2]).ok
    assert ToolResults([]).ok


def test_by_id_names_the_missing_id() -> None:
    with pytest.raises(KeyError, match="no result for call id 'zz'"):
        ToolResults([ok("a")]).by_id("zz")


def test_results_compare_with_results_and_lists_and_are_unhashable() -> None:
    items = [ok("a", 1), failed("b")]
    assert ToolResults(items) == ToolResults(list(items))
    assert ToolResults(items) == items
    assert ToolResults(items) != items[:1]
    assert ToolResults(items) != 3
    with pytest.raises(TypeError):
        hash(ToolResults(items))
    assert "ToolResults([" in repr(ToolResults(items))


def test_results_carry_their_plan() -> None:
    plan = make_plan([])
    assert ToolResults([], plan=plan).plan is plan
    assert ToolResults([]).plan is None


def test_batch_messages_keep_call_order() -> None:
    results = ToolResults([ok("a", "x"), failed("b")])
    assert [m["tool_call_id"] for m in results.to_openai_messages()] == ["a", "b"]
    assert [b["tool_use_id"] for b in results.to_anthropic_blocks()] == ["a", "b"]
