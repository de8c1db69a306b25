"""Resource templates: what a call touches, computed from its validated arguments."""

from __future__ import annotations

import itertools
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from corral.errors import UsageError
from corral.scheduler import Claim

__all__ = [
    "ResourceTemplate",
    "file_fields",
    "normalize_path",
    "normalize_path_arguments",
    "templates",
]

_FORMATTER = string.Formatter()
_MAX_EXPANSION = 1024


def normalize_path(value: str | os.PathLike[str], cwd: str) -> str:
    """Return `value` as an absolute POSIX path: relative to `cwd`, `~` expanded, `..` resolved.

    Symbolic links are not followed: the path names what the model asked for.
    """
    path = os.path.expanduser(os.fspath(value))
    return os.path.normpath(os.path.join(cwd, path)).replace(os.sep, "/")


@dataclass(frozen=True, slots=True)
class ResourceTemplate:
    """`scheme:{field}` over a tool's arguments, e.g. `file:{path}` or `memory:{key}`.

    A field whose value is a list or tuple expands to one resource per element; a field whose
    value is None yields no resource. Templates with the `file:` scheme are normalised as paths.
    """

    template: str
    write: bool
    pieces: tuple[tuple[str, str | None, str, str | None], ...]

    @classmethod
    def parse(
        cls, template: str, *, write: bool, params: Iterable[str], tool: str
    ) -> ResourceTemplate:
        """Check `template` against the tool's parameter names."""
        if not isinstance(template, str) or ":" not in template:
            raise UsageError(
                f"resource template {template!r} of tool {tool!r} must look like 'scheme:{{param}}'"
            )
        try:
            pieces = tuple(
                (lit, name, spec or "", conv)
                for lit, name, spec, conv in _FORMATTER.parse(template)
            )
        except ValueError as exc:
            raise UsageError(f"resource template {template!r} of tool {tool!r}: {exc}") from None
        known = set(params)
        for _, name, _, _ in pieces:
            if name is None:
                continue
            root = name.split(".", 1)[0].split("[", 1)[0]
            if not root or root not in known:
                raise UsageError(
                    f"resource template {template!r} of tool {tool!r} names {root or name!r}, "
                    f"which is not a parameter (parameters: {', '.join(sorted(known)) or 'none'})"
                )
        return cls(template, write, pieces)

    def claims(self, arguments: Mapping[str, Any], cwd: str) -> list[Claim]:
        """Return the claims this template makes for one call's arguments."""
        choices: list[Sequence[Any]] = []
        for _, name, _, _ in self.pieces:
            if name is None:
                choices.append(("",))
                continue
            value, _ = _FORMATTER.get_field(name, (), arguments)
            if value is None:
                return []
            if isinstance(value, set | frozenset):
                choices.append(sorted(value, key=str))
            elif isinstance(value, list | tuple):
                choices.append(value)
            else:
                choices.append((value,))
        claims: list[Claim] = []
        for combo in itertools.islice(itertools.product(*choices), _MAX_EXPANSION):
            parts: list[str] = []
            for (literal, name, spec, conv), value in zip(self.pieces, combo, strict=True):
                parts.append(literal)
                if name is not None:
                    value = _FORMATTER.convert_field(value, conv)
                    parts.append(
                        format(os.fspath(value) if isinstance(value, PurePath) else value, spec)
                    )
            claims.append(Claim(_normalize("".join(parts), cwd), self.write))
        return claims


def _normalize(resource: str, cwd: str) -> str:
    scheme, _, value = resource.partition(":")
    if scheme == "file":
        return f"file:{normalize_path(value, cwd)}"
    return resource


def templates(
    spec: str | Sequence[str], *, write: bool, params: Iterable[str], tool: str
) -> tuple[ResourceTemplate, ...]:
    """Parse one template or a sequence of them."""
    items = (spec,) if isinstance(spec, str) else tuple(spec)
    params = tuple(params)
    return tuple(ResourceTemplate.parse(t, write=write, params=params, tool=tool) for t in items)


def normalize_path_arguments(arguments: dict[str, Any], names: Sequence[str], cwd: str) -> None:
    """Replace path arguments in place with their absolute, normalised form (same type)."""
    for name in names:
        value = arguments.get(name)
        if isinstance(value, list | tuple):
            arguments[name] = type(value)(_normalized(v, cwd) for v in value)
        elif value is not None:
            arguments[name] = _normalized(value, cwd)


def _normalized(value: Any, cwd: str) -> Any:
    if isinstance(value, PurePath):
        return type(value)(normalize_path(value, cwd))
    if isinstance(value, str):
        return normalize_path(value, cwd)
    return value


def file_fields(templates: Iterable[ResourceTemplate]) -> list[str]:
    """Return the parameters named bare in `file:` templates: they hold paths."""
    names: list[str] = []
    for template in templates:
        if not template.template.startswith("file:"):
            continue
        for _, name, _, _ in template.pieces:
            if name and name.isidentifier() and name not in names:
                names.append(name)
    return names
