"""What every store backend agrees on: argument checks, value encoding, and memory semantics.

Both backends run these same functions, so the conformance suite tests one set of rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral._json import dumps, loads
from corral._types import JSONValue
from corral.errors import StateError, UsageError, VersionConflict
from corral.messages import Message
from corral.state.base import MemoryKind, MemoryRecord, RequestStatus
from corral.tools import ToolCall

__all__ = [
    "FINAL_STATUSES",
    "MAX_VALUE_BYTES",
    "appended",
    "bad_transition",
    "check_after_seq",
    "check_final_status",
    "check_id",
    "check_if_version",
    "check_key",
    "check_kind",
    "check_limit",
    "check_new_status",
    "check_number",
    "check_patch",
    "check_scope",
    "check_text",
    "check_versioned_write",
    "check_write",
    "conflict",
    "decode_json",
    "decode_message",
    "encode_json",
    "encode_message",
    "incremented",
    "merge_patch",
    "patched",
    "session_scope",
]

MAX_VALUE_BYTES = 1_000_000
"""Largest encoded memory value or message: memory is for state, not for documents."""
_MAX_DEPTH = 64

FINAL_STATUSES: frozenset[RequestStatus] = frozenset({"done", "failed", "cancelled"})

_SCOPE = re.compile(r"(session|agent|workspace):([A-Za-z0-9][A-Za-z0-9_.@-]{0,127})")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,199}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


def check_scope(scope: object) -> str:
    """Return `scope` if it is ``session:<id>``, ``agent:<name>`` or ``workspace:<name>``."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise UsageError(
            f"memory scope {scope!r} is not valid: use 'session:<id>', 'agent:<name>' or "
            "'workspace:<name>', the name 1 to 128 letters, digits, '_', '.', '@' or '-'"
        )
    return scope


def session_scope(session_id: str) -> str:
    """Return the memory scope private to one session."""
    return f"session:{session_id}"


def check_key(key: object) -> str:
    """Return `key` if it is a valid memory key."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise UsageError(
            f"memory key {key!r} is not valid: use 1 to 200 letters, digits or '_.:/@+-', "
            "not starting with a punctuation mark other than '_'"
        )
    return key


def check_id(value: object, what: str) -> str:
    """Return `value` if it is a valid id of a tenant, session, request or writer."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise UsageError(
            f"{what} {value!r} is not valid: use 1 to 128 letters, digits, '_', '.', ':', '@' "
            "or '-', starting with a letter or digit"
        )
    return value


def check_text(value: object, what: str, *, max_len: int = 200, empty: bool = False) -> str:
    """Return `value` if it is a string of at most `max_len` characters (non-empty unless asked)."""
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value.strip()):
        need = "a string" if empty else "a non-empty string"
        raise UsageError(f"{what} must be {need} of at most {max_len} characters, got {value!r}")
    return value


def check_write(scope: object, key: object, writer: object) -> str:
    """Check a memory write's scope, key and writer (in that order); return the writer.

    Both stores run these checks before anything else, so a bad call fails alike on each.
    """
    check_scope(scope)
    check_key(key)
    return check_text(writer, "writer")


def check_versioned_write(
    scope: object, key: object, if_version: object, writer: object, *, create_allowed: bool
) -> tuple[int | None, str]:
    """Check a conditional write's scope, key, precondition and writer, in that order.

    Returns the expected version (None: create) and the writer.
    """
    check_scope(scope)
    check_key(key)
    expected = check_if_version(if_version, create_allowed=create_allowed)
    return expected, check_text(writer, "writer")


def check_if_version(if_version: object, *, create_allowed: bool) -> int | None:
    """Return the version precondition: a positive int, or None (create) where allowed."""
    if if_version is None and create_allowed:
        return None
    if isinstance(if_version, int) and not isinstance(if_version, bool) and if_version >= 1:
        return if_version
    allowed = "a version (an int >= 1, as read)" + (" or None to create" if create_allowed else "")
    raise UsageError(f"if_version must be {allowed}, got {if_version!r}")


def check_kind(kind: object, value: JSONValue) -> MemoryKind:
    """Return `kind` if it is "json" or "text", and `value` a string when it is "text"."""
    if kind == "json":
        return "json"
    if kind == "text":
        if not isinstance(value, str):
            raise UsageError(f"a 'text' memory value must be a string, got {type(value).__name__}")
        return "text"
    raise UsageError(f"memory kind must be 'json' or 'text', got {kind!r}")


def check_limit(limit: object) -> int | None:
    """Return `limit` if it is None or a positive int."""
    if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        return limit
    raise UsageError(f"limit must be a positive int or None, got {limit!r}")


# -- encoding -----------------------------------------------------------------------------------


def _check_json(value: object, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise UsageError(f"{path} nests deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"{path} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise UsageError(f"{path} has the key {k!r}; JSON object keys must be strings")
            _check_json(item, f"{path}[{k!r}]", depth + 1)
        return
    raise UsageError(f"{path} is a {type(value).__name__}, which is not a JSON value")


def encode_json(value: object, what: str) -> str:
    """Return `value` as compact JSON text, after checking it is JSON (strictly) and not huge.

    Strict: a JSON encoder would quietly turn `{1: 2}` into `{"1": 2}` and write `NaN`; both are
    refused here, so what is read back is what was written.
    """
    _check_json(value, what, 0)
    text = dumps(value).decode()  # checked above: nothing for its fallback
    if len(text) > MAX_VALUE_BYTES:  # characters, a lower bound of the UTF-8 size
        raise UsageError(
            f"{what} is {len(text)} characters of JSON; the limit is {MAX_VALUE_BYTES}"
        )
    return text


def decode_json(text: str) -> Any:
    """Return the value stored as `text` (a fresh copy: callers may change it)."""
    return loads(text)


def encode_message(message: object, index: int) -> str:
    """Return a message as JSON text for storage."""
    if not isinstance(message, Message):
        raise UsageError(f"messages[{index}] is a {type(message).__name__}, not a corral.Message")
    data = message.to_dict()
    for call in data.get("tool_calls", ()):
        if not isinstance(call["arguments"], str):
            call["arguments"] = dict(call["arguments"])
    return encode_json(data, f"messages[{index}]")


def decode_message(text: str) -> Message:
    """Return the message stored as `text`."""
    data = loads(text)
    calls = tuple(
        ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
        for c in data.get("tool_calls", ())
    )
    return Message(
        role=data["role"],
        content=data.get("content", ""),
        tool_calls=calls,
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
        status=data.get("status"),
        partial=data.get("partial", False),
    )


# -- memory semantics ---------------------------------------------------------------------------


def merge_patch(target: JSONValue, patch: JSONValue) -> JSONValue:
    """Return `target` with the RFC 7386 JSON merge `patch` applied (neither is changed).

    An object patch merges member by member (a `null` member deletes it; nested objects merge);
    any other patch replaces the target whole.
    """
    if not isinstance(patch, dict):
        return patch
    result: dict[str, JSONValue] = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def check_patch(patch: object) -> Mapping[str, JSONValue]:
    """Return `patch` if it is a JSON object (a merge patch that is not one replaces everything)."""
    if not isinstance(patch, Mapping):
        raise UsageError(
            f"a merge patch must be a JSON object, got {type(patch).__name__}; "
            "write a whole new value with memory_put instead"
        )
    return patch


def appended(record: MemoryRecord | None, item: JSONValue) -> list[JSONValue]:
    """Return the list `record` holds with `item` added (a new list when there is no record)."""
    if record is None:
        return [item]
    if record.kind != "json" or not isinstance(record.value, list):
        raise UsageError(
            f"memory key {record.key!r} in {record.scope} holds {_describe(record)}, not a list; "
            "memory_append needs a list"
        )
    return [*record.value, item]


def check_number(by: object) -> int | float:
    """Return `by` if it is a finite int or float (not a bool)."""
    if isinstance(by, bool) or not isinstance(by, int | float) or not math.isfinite(by):
        raise UsageError(f"an increment must be a finite number, got {by!r}")
    return by


def incremented(record: MemoryRecord | None, by: int | float) -> int | float:
    """Return the number `record` holds plus `by` (`by` itself when there is no record)."""
    if record is None:
        return by
    value = record.value
    if record.kind != "json" or isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(
            f"memory key {record.key!r} in {record.scope} holds {_describe(record)}, not a number; "
            "memory_increment needs a number"
        )
    total = value + by
    if not math.isfinite(total):
        raise UsageError(f"incrementing memory key {record.key!r} by {by!r} overflows")
    return total


def _describe(record: MemoryRecord) -> str:
    if record.kind == "text":
        return "text"
    return "null" if record.value is None else f"a {type(record.value).__name__}"


def conflict(
    scope: str, key: str, *, expected: int | None, current: MemoryRecord | None
) -> VersionConflict:
    """Return the `VersionConflict` for a write based on `expected` that found `current`."""
    name = f"memory key {key!r} in {scope}"
    if current is None:
        message = (
            f"{name} does not exist (you expected version {expected}): it was deleted or never "
            "created; write it with no version to create it"
        )
    elif expected is None:
        message = (
            f"{name} already exists at version {current.version}; read it, then write with "
            f"version {current.version} to change it"
        )
    else:
        message = (
            f"{name} is at version {current.version}, not {expected}: it changed since you read "
            f"it; read it again and redo your change on version {current.version}"
        )
    return VersionConflict(
        message,
        key=key,
        expected=expected,
        actual=None if current is None else current.version,
        current=current,
    )


def patched(current: MemoryRecord, patch: Mapping[str, JSONValue]) -> JSONValue:
    """Return the value of `current` with a merge patch applied; text cannot be patched."""
    if current.kind != "json":
        raise UsageError(
            f"memory key {current.key!r} in {current.scope} holds text; only JSON values can be "
            "patched"
        )
    return merge_patch(current.value, dict(patch))


def check_final_status(status: object, error: object) -> RequestStatus:
    """Return `status` if it is a final request status, and `error` a string or None."""
    if status not in FINAL_STATUSES:
        raise UsageError(
            f"a finished request's status must be one of {', '.join(sorted(FINAL_STATUSES))}, "
            f"not {status!r}"
        )
    if error is not None and not isinstance(error, str):
        raise UsageError(f"a request's error must be a string or None, got {error!r}")
    return status


def check_new_status(status: object) -> RequestStatus:
    """Return `status` if a request may start in it ("queued" or "running")."""
    if status not in ("queued", "running"):
        raise UsageError(f"a new request's status must be 'queued' or 'running', not {status!r}")
    return status


def bad_transition(request_id: str, status: str, allowed: Sequence[str], what: str) -> StateError:
    """Return the error for a request status change its current status does not allow."""
    return StateError(
        f"request {request_id!r} is {status}; only a request that is {' or '.join(allowed)} "
        f"can be {what}"
    )


def check_after_seq(after_seq: object) -> int:
    """Return `after_seq` if it is an int >= 0."""
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise UsageError(f"after_seq must be an int >= 0, got {after_seq!r}")
    return after_seq
