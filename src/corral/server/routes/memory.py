"""Versioned shared memory over HTTP: ETags are versions; overwrites need `If-Match`.

- GET returns the record with ``ETag: "<version>"``.
- PUT, PATCH (RFC 7386 JSON merge patch) and DELETE need ``If-Match: "<version>"`` (428 without
  it). A stale version answers 412 with the current version and document: re-read, re-apply,
  retry; nothing is ever overwritten blindly. PUT creates a key with ``If-None-Match: *`` (or
  ``If-Match: "0"``, the version `memory_read` reports for a missing key).
- POST .../append and .../increment need no precondition: concurrent ones all land.

A key that does not exist (or is another tenant's) answers 404, also to a conditional write.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import JsonValue

from corral.errors import VersionConflict
from corral.server.routes._deps import CallerDep
from corral.server.schemas import AppendIn, ErrorOut, IncrementIn, MemoryOut, PutIn
from corral.state import MemoryRecord

__all__ = ["router"]

router = APIRouter(tags=["memory"])

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')
_WRITER = Header(
    alias="x-corral-writer",
    max_length=120,
    description="Who writes, for the audit log (default: 'api').",
)
_CONDITIONAL: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such key."},
    412: {"model": ErrorOut, "description": "Stale If-Match: the current version and document."},
    428: {"model": ErrorOut, "description": "If-Match is required."},
}


def memory_out(record: MemoryRecord) -> MemoryOut:
    """Describe a memory record."""
    return MemoryOut(
        scope=record.scope,
        key=record.key,
        kind=record.kind,
        value=record.value,
        version=record.version,
        updated_at=record.updated_at,
        updated_by=record.updated_by,
    )


def _with_etag(record: MemoryRecord, status_code: int = 200) -> JSONResponse:
    return JSONResponse(
        memory_out(record).model_dump(mode="json"),
        status_code=status_code,
        headers={"etag": f'"{record.version}"'},
    )


def _version(if_match: str | None, *, required: bool) -> int | None:
    if if_match is None:
        if required:
            raise HTTPException(
                428,
                "this write needs 'If-Match: \"<version>\"' with the version you read "
                "(GET returns it as the ETag)",
            )
        return None
    found = _ETAG.match(if_match)
    if found is None:
        raise HTTPException(
            422, f"If-Match {if_match!r} is not a version: send the ETag, e.g. '\"3\"'"
        )
    return int(found.group(1))


def _conflict(exc: VersionConflict) -> JSONResponse:
    # The key is gone (or never was, for this tenant): that is a 404, not a stale version.
    if exc.current is None:
        return JSONResponse({"detail": f"no memory key {exc.key!r}"}, status_code=404)
    current = memory_out(exc.current)
    body = {
        "detail": f"memory key {exc.key!r} is at version {current.version}, not "
        f"{exc.expected or 0}: re-read it, re-apply your change, and retry with its version",
        "version": current.version,
        "current": current.model_dump(mode="json"),
    }
    return JSONResponse(body, status_code=412, headers={"etag": f'"{current.version}"'})


@router.get("/memory/{scope}", response_model=list[MemoryOut])
async def list_memory(scope: str, caller: CallerDep) -> list[MemoryOut]:
    """List the live keys of a scope (``session:<id>``, ``agent:<name>``, ``workspace:<name>``)."""
    runtime, tenant = caller
    return [memory_out(r) for r in await runtime.store.memory_list(tenant.id, scope)]


@router.get(
    "/memory/{scope}/{key:path}",
    response_model=MemoryOut,
    responses={404: {"model": ErrorOut, "description": "No such key."}},
)
async def get_memory(scope: str, key: str, caller: CallerDep) -> Response:
    """Return a key's value and version (also its ETag)."""
    runtime, tenant = caller
    record = await runtime.store.memory_get(tenant.id, scope, key)
    if record is None:
        raise HTTPException(404, f"no memory key {key!r} in {scope!r}")
    return _with_etag(record)


@router.put("/memory/{scope}/{key:path}", response_model=MemoryOut, responses=_CONDITIONAL)
async def put_memory(
    scope: str,
    key: str,
    body: PutIn,
    caller: CallerDep,
    if_match: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    writer: Annotated[str, _WRITER] = "api",
) -> Response:
    """Replace a value if it is still at the If-Match version; create with If-None-Match: *."""
    runtime, tenant = caller
    creating = if_none_match is not None and if_none_match.strip() == "*"
    # Version 0 is what a missing key reads as (see memory_read): writing on it creates.
    if_version = None if creating else (_version(if_match, required=True) or None)
    try:
        record = await runtime.store.memory_put(
            tenant.id,
            scope,
            key,
            body.value,
            if_version=if_version,
            writer=writer,
            kind=body.kind,
        )
    except VersionConflict as exc:
        return _conflict(exc)  # a create that found the key: 412 with what is there
    return _with_etag(record, 201 if if_version is None else 200)


@router.patch("/memory/{scope}/{key:path}", response_model=MemoryOut, responses=_CONDITIONAL)
async def patch_memory(
    scope: str,
    key: str,
    patch: Annotated[dict[str, JsonValue], Body(description="An RFC 7386 JSON merge patch.")],
    caller: CallerDep,
    if_match: Annotated[str | None, Header()] = None,
    writer: Annotated[str, _WRITER] = "api",
) -> Response:
    """Merge-patch a JSON object if it is still at the If-Match version."""
    runtime, tenant = caller
    expected = _version(if_match, required=True)
    assert expected is not None
    try:
        record = await runtime.store.memory_patch(
            tenant.id, scope, key, patch, if_version=expected, writer=writer
        )
    except VersionConflict as exc:
        return _conflict(exc)
    return _with_etag(record)


@router.delete("/memory/{scope}/{key:path}", status_code=204, responses=_CONDITIONAL)
async def delete_memory(
    scope: str,
    key: str,
    caller: CallerDep,
    if_match: Annotated[str | None, Header()] = None,
    writer: Annotated[str, _WRITER] = "api",
) -> Response:
    """Delete a key if it is still at the If-Match version."""
    runtime, tenant = caller
    expected = _version(if_match, required=True)
    assert expected is not None
    try:
        await runtime.store.memory_delete(tenant.id, scope, key, if_version=expected, writer=writer)
    except VersionConflict as exc:
        return _conflict(exc)
    return Response(status_code=204)


@router.post("/memory/{scope}/{key:path}/append", response_model=MemoryOut)
async def append_memory(
    scope: str,
    key: str,
    body: AppendIn,
    caller: CallerDep,
    writer: Annotated[str, _WRITER] = "api",
) -> Response:
    """Append an item to the list at a key (created if absent); no precondition needed."""
    runtime, tenant = caller
    record = await runtime.store.memory_append(tenant.id, scope, key, body.item, writer=writer)
    return _with_etag(record)


@router.post("/memory/{scope}/{key:path}/increment", response_model=MemoryOut)
async def increment_memory(
    scope: str,
    key: str,
    body: IncrementIn,
    caller: CallerDep,
    writer: Annotated[str, _WRITER] = "api",
) -> Response:
    """Add to the number at a key (created if absent); no precondition needed."""
    runtime, tenant = caller
    record = await runtime.store.memory_increment(tenant.id, scope, key, body.by, writer=writer)
    return _with_etag(record)
