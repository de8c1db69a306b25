"""OpenAPI schemas as JSON Schema: `$ref`s inlined, recursion cut, 3.0 `nullable` translated.

Also the validator of a tool's arguments: Draft 4 semantics for OpenAPI 3.0 documents (whose
schemas are an extended subset of Draft 4/5), 2020-12 for 3.1 (whose schemas are 2020-12).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import unquote

import jsonschema

from corral.errors import ToolArgumentsInvalid, UsageError

__all__ = ["Resolver", "make_validator"]

# Where subschemas live, so refs are resolved and `nullable` translated everywhere, and nowhere
# else: an `enum` or `default` value that happens to contain "nullable" is data, not a schema.
_ONE_SCHEMA = frozenset(
    {
        "items",
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "additionalItems",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
)
# Keywords that only describe: next to a `$ref` they are merged in rather than wrapped in allOf.
_ANNOTATIONS = frozenset(
    {"description", "title", "summary", "default", "example", "examples", "deprecated"}
    | {"readOnly", "writeOnly"}
)


def make_validator(
    schema: Mapping[str, Any], version: str, tool: str
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Return the `Tool.validate` for `schema`: Draft 4 for OpenAPI 3.0, 2020-12 for 3.1.

    Raises `ToolArgumentsInvalid` naming every bad argument; nothing is sent then.
    """
    cls: Any = (
        jsonschema.Draft4Validator if version.startswith("3.0") else jsonschema.Draft202012Validator
    )
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        raise UsageError(
            f"tool {tool!r}: the document's schema is not valid JSON Schema at {where}: "
            f"{exc.message}"
        ) from None
    validator = cls(schema)
    known = set(schema.get("properties", {}))

    def validate(arguments: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(arguments)
        problems = [
            problem
            for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.path)))
            for problem in _describe(error, values, known)
        ]
        if problems:
            raise ToolArgumentsInvalid(
                f"invalid arguments for tool {tool!r}: " + "; ".join(problems)
            )
        return values

    return validate


def _describe(
    error: jsonschema.ValidationError, values: Mapping[str, Any], known: set[str]
) -> list[str]:
    if not error.path and error.validator == "required":
        return [
            f"{name}: missing required argument"
            for name in cast("list[str]", error.validator_value)
            if name not in values
        ]
    if not error.path and error.validator == "additionalProperties":
        return [f"{name}: unexpected argument" for name in values if name not in known]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path).lstrip(".")
    return [f"{where or 'arguments'}: {error.message}"]


class Resolver:
    """Resolve local `$ref`s; inline schemas, cutting recursive ones; translate 3.0 `nullable`."""

    def __init__(self, document: Mapping[str, Any], where: str) -> None:
        self.document = document
        self.where = where
        self._v30 = str(document.get("openapi", "")).startswith("3.0")
        self._cache: dict[str, Any] = {}
        self._cuts = 0

    def deref(self, node: Any, at: str) -> Any:
        """Follow a chain of `$ref`s on a non-schema object (parameter, body, path item)."""
        seen: list[str] = []
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                raise UsageError(f"{self.where}: $ref cycle at {at}: {' -> '.join([*seen, ref])}")
            seen.append(ref)
            node = self._target(ref, at)
        return node

    def schema(self, node: Any, stack: tuple[str, ...] = ()) -> Any:
        """Return `node` with every `$ref` inlined; a ref back into `stack` is cut short."""
        if not isinstance(node, Mapping):
            return node  # a boolean schema (3.1), or junk the validator will name
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = self._ref_schema(ref, stack)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            # 3.0 says a $ref's siblings are ignored, yet `nullable: true` beside one is common
            # and plainly meant: honour it rather than silently reject null.
            nullable = self._v30 and siblings.pop("nullable", False) is True
            merged = target
            if siblings:
                rest = self.schema(siblings, stack)
                if isinstance(target, Mapping) and set(rest) <= _ANNOTATIONS:
                    merged = {**target, **rest}
                else:
                    merged = {"allOf": [target], **rest}
            return _nullable({**merged, "nullable": True}) if nullable else merged
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):
                out[key] = {k: self.schema(v, stack) for k, v in value.items()}
            elif (key in _SCHEMA_LISTS or key == "items") and isinstance(value, list):
                out[key] = [self.schema(v, stack) for v in value]
            elif key in _ONE_SCHEMA:
                out[key] = self.schema(value, stack)
            else:
                out[key] = value
        return _nullable(out) if self._v30 else out

    def _ref_schema(self, ref: str, stack: tuple[str, ...]) -> Any:
        if ref in stack:
            # A recursive schema (a tree node holding nodes) would inline forever: below the first
            # repetition any value is accepted, and the description says what it stands for.
            self._cuts += 1
            name = ref.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")
            return {"description": f"a {name} (recursive: same shape as the enclosing {name})"}
        cached = self._cache.get(ref)
        if cached is not None:
            return cached
        cuts = self._cuts
        resolved = self.schema(self._target(ref, "a schema"), (*stack, ref))
        if self._cuts == cuts:
            # Nothing was cut inside, so the result does not depend on `stack`: reuse it, so a
            # model referenced from many places is resolved once.
            self._cache[ref] = resolved
        return resolved

    def _target(self, ref: str, at: str) -> Any:
        if not ref.startswith("#"):
            raise UsageError(
                f"{self.where}: external $ref {ref!r} (at {at}) is not supported; bundle the "
                "document into one file first"
            )
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            raise UsageError(f"{self.where}: $ref {ref!r} is not a JSON pointer (at {at})")
        node: Any = self.document
        for raw in pointer.split("/")[1:]:
            token = raw.replace("~1", "/").replace("~0", "~")  # RFC 6901: ~1 first, then ~0
            if isinstance(node, Mapping) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise UsageError(
                    f"{self.where}: $ref {ref!r} (at {at}) points at nothing: no {token!r}"
                )
        return node


def _nullable(schema: Mapping[str, Any]) -> Any:
    """OpenAPI 3.0 `nullable: true` in JSON Schema terms: `null` joins the type (and the enum)."""
    if "nullable" not in schema:
        return schema
    out = {k: v for k, v in schema.items() if k != "nullable"}
    if schema["nullable"] is not True:
        return out
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        enum = out.get("enum")
        if isinstance(enum, list) and None not in enum:
            out["enum"] = [*enum, None]
        return out
    return {"anyOf": [out, {"type": "null"}]}
