"""Read an OpenAPI 3.0/3.1 document into operations: names, argument schemas, request mapping.

Pure: no I/O. `_openapi.py` fetches the document and `_openapi_http.py` sends the requests; this
module decides what the model sees and how its arguments map back onto the request.

How arguments are named (the clash rule):

1. Parameters are named by their `name`, in the order path, query, header, cookie. A parameter
   whose name an earlier location already took gets its location as a prefix: a path `id` and a
   query `id` become `id` and `query_id`. Names outside `[A-Za-z0-9_.-]` or longer than 64 (what
   the providers accept) have the other characters replaced by `_`.
2. A JSON (or form) body that is a plain object has its properties flattened into the arguments
   when none of them clashes with a parameter's argument name, no property name needs rewriting,
   it allows no extra properties, and either the body is required or none of its properties is.
   Otherwise the whole body is one argument, `body` (`request_body` if a parameter took `body`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from corral.errors import UsageError
from corral.tools._openapi_schema import Resolver

__all__ = [
    "METHODS",
    "BodySpec",
    "Operation",
    "ParamSpec",
    "check_version",
    "operations",
    "parse_document",
]

logger = logging.getLogger(__name__)

Location = Literal["path", "query", "header", "cookie"]
BodyKind = Literal["json", "form", "text"]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_LOCATIONS: tuple[Location, ...] = ("path", "query", "header", "cookie")
# OpenAPI 3 §4.8.12.1: these header parameters "SHALL be ignored"; the client sets them.
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_ARG_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TOOL_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")

_COMBINATORS = frozenset({"allOf", "anyOf", "oneOf", "not", "if", "$ref", "patternProperties"})


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One parameter: its argument name, its name on the wire, where it goes, how to write it."""

    arg: str
    name: str
    location: Location
    style: str
    explode: bool
    as_json: bool = False
    """Declared with `content` (a JSON media type) instead of `schema`: sent as JSON text."""


@dataclass(frozen=True, slots=True)
class BodySpec:
    """The request body: its media type, and the argument(s) holding it."""

    media_type: str
    kind: BodyKind
    required: bool
    arg: str | None
    """The one argument holding the whole body, or None when its properties are flattened."""
    fields: tuple[str, ...] = ()
    """The flattened property names (when `arg` is None)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the document, ready to become a tool."""

    name: str
    method: str
    """Upper case: GET, POST, ..."""
    path: str
    """The path template, e.g. `/items/{item_id}`."""
    description: str
    params: tuple[ParamSpec, ...]
    body: BodySpec | None
    schema: dict[str, Any]
    """The JSON schema of the tool's arguments."""
    server: str | None
    """The first `servers` URL of the operation, else of its path, else of the document."""


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: `2024-01-01` stays a string, as JSON needs."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_document(text: str, where: str, *, json_first: bool = False) -> dict[str, Any]:
    """Parse JSON or YAML text into a document and check its version."""
    document: Any = None
    if json_first or text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None
    if document is None:
        try:
            document = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
        except yaml.YAMLError as exc:
            raise UsageError(f"{where} is neither JSON nor YAML: {exc}") from None
    return check_version(document, where)


def check_version(document: Any, where: str) -> dict[str, Any]:
    """Return `document` if it is an OpenAPI 3.0 or 3.1 document, else raise `UsageError`."""
    if not isinstance(document, Mapping):
        raise UsageError(
            f"{where} is not an OpenAPI document: expected an object, got {type(document).__name__}"
        )
    version = document.get("openapi")
    if isinstance(version, str) and re.match(r"^3\.[01](\.|$)", version):
        return dict(document)
    if "swagger" in document:
        got = f"Swagger {document['swagger']}"
    elif version is not None:
        got = f"OpenAPI {version}"
    else:
        got = "no 'openapi' version field"
    raise UsageError(
        f"{where} is not OpenAPI 3.0 or 3.1 (got {got}); convert it first (e.g. with "
        "swagger2openapi)"
    )


def operations(document: Mapping[str, Any], where: str, namespace: str | None) -> list[Operation]:
    """Return every operation of `document` (checked by `check_version`), in document order."""
    resolver = Resolver(document, where)
    paths = resolver.deref(document.get("paths") or {}, "paths")
    if not isinstance(paths, Mapping):
        raise UsageError(f"{where}: 'paths' must be an object")
    names = _Names(namespace)
    result: list[Operation] = []
    for path, raw_item in paths.items():
        if not isinstance(path, str) or not path.startswith("/"):
            continue  # `x-` extensions
        item = resolver.deref(raw_item, f"paths.{path}")
        if not isinstance(item, Mapping):
            raise UsageError(f"{where}: path item {path!r} must be an object")
        for method in METHODS:
            op = item.get(method)
            if isinstance(op, Mapping):
                built = _operation(resolver, names, path, item, method, op)
                if built is not None:
                    result.append(built)
    return result


# -- one operation -------------------------------------------------------------------------------


def _operation(
    resolver: Resolver,
    names: _Names,
    path: str,
    item: Mapping[str, Any],
    method: str,
    op: Mapping[str, Any],
) -> Operation | None:
    where = f"{method.upper()} {path}"
    properties: dict[str, Any] = {}
    required: list[str] = []
    specs = _parameters(
        resolver, _merged_parameters(resolver, item, op, where), properties, required, where
    )
    body = _body(resolver, op, where, properties, required)
    if body is False:
        return None
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    servers = op.get("servers") or item.get("servers") or resolver.document.get("servers")
    return Operation(
        name=names.claim(op.get("operationId"), method, path),
        method=method.upper(),
        path=path,
        description=_description(op, item, where),
        params=specs,
        body=body,
        schema=schema,
        server=_server_url(servers),
    )


def _parameters(
    resolver: Resolver,
    params: list[Mapping[str, Any]],
    properties: dict[str, Any],
    required: list[str],
    where: str,
) -> tuple[ParamSpec, ...]:
    """Add each parameter's argument to `properties`, by location (the module's rule 1)."""
    specs: list[ParamSpec] = []
    for location in _LOCATIONS:
        for p in params:
            if p["in"] != location:
                continue
            arg = _free_name(p["name"], location, properties)
            param_schema, as_json = _param_schema(resolver, p, where)
            properties[arg] = _described(param_schema, p.get("description"))
            if location == "path" or p.get("required") is True:
                required.append(arg)
            specs.append(_param_spec(arg, p, location, as_json))
    return tuple(specs)


def _merged_parameters(
    resolver: Resolver, item: Mapping[str, Any], op: Mapping[str, Any], where: str
) -> list[Mapping[str, Any]]:
    """Path-level parameters, overridden by operation-level ones with the same name and `in`."""
    merged: dict[tuple[str, str], Mapping[str, Any]] = {}
    for index, raw in enumerate([*(item.get("parameters") or ()), *(op.get("parameters") or ())]):
        p = resolver.deref(raw, f"{where} parameter #{index}")
        if not (
            isinstance(p, Mapping) and isinstance(p.get("name"), str) and p.get("in") in _LOCATIONS
        ):
            raise UsageError(
                f"{resolver.where}: {where} has a malformed parameter (needs 'name' and 'in' of "
                f"{', '.join(_LOCATIONS)}): {_clip(p)}"
            )
        if p["in"] == "header" and p["name"].lower() in _IGNORED_HEADERS:
            continue
        merged[(p["in"], p["name"])] = p  # a later (operation-level) one replaces, in place
    return list(merged.values())


def _param_schema(resolver: Resolver, p: Mapping[str, Any], where: str) -> tuple[Any, bool]:
    if "schema" in p:
        return resolver.schema(p["schema"]), False
    content = p.get("content")
    if isinstance(content, Mapping) and content:
        media = resolver.deref(next(iter(content.values())), f"{where} parameter {p['name']!r}")
        return resolver.schema(media.get("schema", {})), True
    return {}, False


def _param_spec(arg: str, p: Mapping[str, Any], location: Location, as_json: bool) -> ParamSpec:
    default_style = "form" if location in ("query", "cookie") else "simple"
    style = p.get("style") or default_style
    explode = p.get("explode")
    if not isinstance(explode, bool):
        explode = style == "form"  # the spec's default: explode only for form style
    return ParamSpec(arg, p["name"], location, str(style), explode, as_json)


def _body(
    resolver: Resolver,
    op: Mapping[str, Any],
    where: str,
    properties: dict[str, Any],
    required: list[str],
) -> BodySpec | None | Literal[False]:
    """Add the body's argument(s) to `properties`; False if the operation cannot be offered."""
    raw = op.get("requestBody")
    if raw is None:
        return None
    rb = resolver.deref(raw, f"{where} requestBody")
    content = rb.get("content") if isinstance(rb, Mapping) else None
    if not isinstance(content, Mapping) or not content:
        return None
    chosen = _pick_media_type(content)
    if chosen is None:
        logger.warning(
            "skipping %s: request bodies of type %s are not supported", where, ", ".join(content)
        )
        return False
    media_type, kind = chosen
    media = resolver.deref(content[media_type], f"{where} requestBody {media_type}")
    schema = _writable(
        resolver.schema(media.get("schema", {}) if isinstance(media, Mapping) else {})
    )
    is_required = rb.get("required") is True
    fields = _flattenable(schema, is_required, properties) if kind != "text" else None
    if fields is not None:
        for field_name in fields:
            properties[field_name] = _untitled(schema["properties"][field_name])
        required.extend(r for r in schema.get("required", ()) if r in fields)
        return BodySpec(media_type, kind, is_required, None, tuple(fields))
    arg = "body" if "body" not in properties else _free_name("body", "request", properties)
    properties[arg] = _described(schema, rb.get("description"))
    if is_required:
        required.append(arg)
    return BodySpec(media_type, kind, is_required, arg)


def _writable(schema: Any) -> Any:
    """Drop a body's `readOnly` properties: the server sets them, a request must not send them."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return schema
    read_only = {k for k, v in props.items() if isinstance(v, Mapping) and v.get("readOnly")}
    if not read_only:
        return schema
    out = {**schema, "properties": {k: v for k, v in props.items() if k not in read_only}}
    if isinstance(schema.get("required"), list):
        out["required"] = [r for r in schema["required"] if r not in read_only]
        if not out["required"]:
            del out["required"]  # Draft 4 wants at least one name in `required`
    return out


def _pick_media_type(content: Mapping[str, Any]) -> tuple[str, BodyKind] | None:
    types = [str(t) for t in content]
    for t in types:
        base = t.split(";")[0].strip().lower()
        if base == "application/json" or base.endswith("+json"):
            return t, "json"
    for t in types:
        if t.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            return t, "form"
    for t in types:
        if t.lower().startswith("text/"):
            return t, "text"
    return None


def _flattenable(schema: Any, is_required: bool, taken: Mapping[str, Any]) -> list[str] | None:
    """Return the body's property names if they can be arguments of their own (rule 2 above)."""
    if not isinstance(schema, Mapping) or _COMBINATORS & set(schema):
        return None
    props = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(props, Mapping) or not props:
        return None
    if schema.get("additionalProperties", False) is not False:
        return None
    names = list(props)
    if any(not _ARG_NAME.match(n) or n in taken for n in names):
        return None
    if not is_required and schema.get("required"):
        return None  # "send none or all the required ones" cannot be said in one flat schema
    return names


def _free_name(name: str, location: str, taken: Mapping[str, Any]) -> str:
    """Return the argument name for `name`: itself, else prefixed by its location, else numbered."""
    candidate = _arg_name(name)
    if candidate not in taken:
        return candidate
    candidate = _arg_name(f"{location}_{name}")
    n = 2
    while candidate in taken:
        suffix = f"_{n}"
        candidate = _arg_name(f"{location}_{name}")[: 64 - len(suffix)] + suffix
        n += 1
    return candidate


def _arg_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "_"


def _described(schema: Any, description: Any) -> Any:
    schema = _untitled(schema)
    if isinstance(description, str) and description.strip() and isinstance(schema, dict):
        schema = {**schema, "description": description.strip()}
    return schema


def _untitled(schema: Any) -> Any:
    """Drop a top-level `title`: the argument's name already says it, and it costs tokens."""
    if isinstance(schema, Mapping) and "title" in schema:
        return {k: v for k, v in schema.items() if k != "title"}
    if schema is True:
        return {}
    return schema


def _description(op: Mapping[str, Any], item: Mapping[str, Any], where: str) -> str:
    summary = str(op.get("summary") or item.get("summary") or "").strip()
    description = str(op.get("description") or item.get("description") or "").strip()
    if summary and description and not description.startswith(summary):
        return f"{summary}\n\n{description}"
    return description or summary or where


def _server_url(servers: Any) -> str | None:
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], Mapping):
        return None
    server = servers[0]
    url = str(server.get("url", ""))
    variables = server.get("variables") or {}
    for key, spec in variables.items():
        if isinstance(spec, Mapping) and "default" in spec:
            url = url.replace("{" + str(key) + "}", str(spec["default"]))
    return url


def _clip(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Names:
    """Tool names: sanitised, namespaced, at most 64 characters, unique within the document."""

    def __init__(self, namespace: str | None) -> None:
        self._prefix = f"{namespace}-" if namespace else ""
        self._used: set[str] = set()

    def claim(self, operation_id: Any, method: str, path: str) -> str:
        if isinstance(operation_id, str) and operation_id.strip():
            base = _TOOL_NAME_BAD.sub("_", operation_id.strip())
        else:
            # No operationId: `GET /items/{item_id}` -> `get_items_item_id`.
            base = re.sub(r"_+", "_", _TOOL_NAME_BAD.sub("_", f"{method}_{path}")).strip("_")
        name = (self._prefix + base)[:64]
        n = 2
        while name in self._used:
            suffix = f"_{n}"
            name = (self._prefix + base)[: 64 - len(suffix)] + suffix
            n += 1
        if name != self._prefix + base:
            logger.info("OpenAPI operation %s %s is registered as %r", method.upper(), path, name)
        self._used.add(name)
        return name
