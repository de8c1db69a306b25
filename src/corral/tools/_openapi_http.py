"""One OpenAPI operation over HTTP: arguments to a request, a response to a value or an error."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import httpx

from corral._retry import parse_retry_after
from corral.errors import (
    HTTPStatusError,
    OutcomeUnknown,
    RemoteConnectError,
    RemoteTimeout,
    RemoteToolError,
)
from corral.scheduler import Claim
from corral.tools._openapi_spec import Operation, ParamSpec

__all__ = ["IDEMPOTENT_METHODS", "SAFE_METHODS", "Route", "decode", "excerpt", "transport_error"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods that only read: their calls claim their path for reading."""
IDEMPOTENT_METHODS = SAFE_METHODS | {"PUT", "DELETE"}
"""Methods that may be sent again when an attempt failed."""
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_EXCERPT_CHARS = 200


class Route:
    """Where one operation's requests go, and how arguments become URL, headers and body."""

    def __init__(self, op: Operation, base_url: str) -> None:
        self.op = op
        self.base = base_url
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # The default port is spelled out so `http://h` and `http://h:80` are one resource.
        self._root = f"url:/{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"

    def path(self, arguments: Mapping[str, Any]) -> str:
        """Return the concrete path: the template with every path parameter percent-encoded.

        Encoded, a value holding "/" stays one segment, in the URL and in the resource.
        """
        path = self.op.path
        for p in self.op.params:
            if p.location == "path":
                path = path.replace("{" + p.name + "}", _path_value(p, arguments[p.arg]))
        return path

    def claims(self, arguments: Mapping[str, Any], cwd: str) -> list[Claim]:
        """Return the one resource a call touches: its concrete URL path, read or written."""
        del cwd  # URLs do not depend on the working directory
        resource = (self._root + self.path(arguments)).rstrip("/")
        return [Claim(resource, write=self.op.method not in SAFE_METHODS)]

    def build(self, client: httpx.AsyncClient, arguments: Mapping[str, Any]) -> httpx.Request:
        """Return the request for one call's (validated) arguments."""
        query: list[tuple[str, str]] = []
        headers: dict[str, str] = {}
        cookies: list[str] = []
        for p in self.op.params:
            value = arguments.get(p.arg)
            if value is None or p.location == "path":
                continue  # an absent or null optional parameter is left out
            if p.location == "query":
                query.extend(_query_pairs(p, value))
            elif p.location == "header":
                headers[p.name] = _simple(p, value)
            else:
                cookies.append(f"{p.name}={_simple(p, value)}")
        if cookies:
            # A request's Cookie header replaces the client's: keep the caller's cookies too.
            cookies.insert(0, client.headers.get("cookie", ""))
            headers["Cookie"] = "; ".join(c for c in cookies if c)
        content, content_type = self._body(arguments)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return client.build_request(
            self.op.method,
            self.base + self.path(arguments),
            params=tuple(query) or None,
            headers=headers,
            content=content,
        )

    def _body(self, arguments: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
        body = self.op.body
        if body is None:
            return None, None
        if body.arg is None:
            value: Any = {f: arguments[f] for f in body.fields if f in arguments}
            if not value and not body.required:
                return None, None
        elif body.arg in arguments:
            value = arguments[body.arg]
        else:
            return None, None
        if body.kind == "json":
            return _json(value).encode(), body.media_type
        if body.kind == "form" and isinstance(value, Mapping):
            pairs = [
                (str(k), _scalar(item))
                for k, v in value.items()
                for item in (v if isinstance(v, list) else [v])
            ]
            return urlencode(pairs).encode(), body.media_type
        text = value if isinstance(value, str) else _json(value)
        return text.encode(), body.media_type


def decode(request: httpx.Request, response: httpx.Response) -> Any:
    """Return a 2xx answer's value (JSON, text, headers for HEAD, None if empty); raise others."""
    if response.is_success:
        if request.method == "HEAD":
            return dict(response.headers)
        if response.status_code in (204, 205) or not response.content:
            return None
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or kind.endswith("+json"):
            try:
                return response.json()
            except ValueError:
                return response.text  # mislabelled; the text is still the answer
        return response.text
    status = response.status_code
    retry_after = None
    if status in _RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    message = f"{request.method} {request.url} returned {status} {response.reason_phrase}".rstrip()
    if retry_after is not None:
        message += f" (Retry-After: {retry_after:g} s)"
    if response.is_redirect and "location" in response.headers:
        message += f" (Location: {response.headers['location']})"
    body = excerpt(response)
    if body:
        message += f": {body}"
    raise HTTPStatusError(message, status=status, retry_after_s=retry_after)


def _precise(exc: httpx.HTTPError) -> httpx.HTTPError:
    """Re-map an error of the aiohttp transport from its cause.

    httpx-aiohttp maps aiohttp's errors coarsely (a connection dropped mid-request becomes
    `ConnectTimeout`), which would hide whether the request may have reached the server.
    """
    cause = exc.__cause__
    if not isinstance(cause, aiohttp.ClientError | TimeoutError):
        return exc
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unreachable, DNS
        return httpx.ConnectError(message)
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(cause, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(
        cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError
    ):
        return httpx.RemoteProtocolError(message)
    return exc


def transport_error(request: httpx.Request, exc: httpx.HTTPError) -> RemoteToolError:
    """Map an httpx failure to the most specific corral error."""
    exc = _precise(exc)
    target = f"{request.method} {request.url}"
    detail = str(exc) or type(exc).__name__
    limits = request.extensions.get("timeout", {})
    if isinstance(exc, httpx.ConnectTimeout):
        return RemoteConnectError(
            f"cannot connect to {request.url}: no answer within {limits.get('connect')} s"
        )
    if isinstance(exc, httpx.ConnectError):
        return RemoteConnectError(f"cannot connect to {request.url}: {detail}")
    if isinstance(exc, httpx.PoolTimeout):
        return RemoteTimeout(
            f"{target}: no free connection in the pool within {limits.get('pool')} s"
        )
    if isinstance(exc, httpx.WriteTimeout):
        return RemoteTimeout(f"{target}: could not send the request within {limits.get('write')} s")
    if isinstance(exc, httpx.TimeoutException):
        return RemoteTimeout(f"{target}: no response within {limits.get('read')} s")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        if request.method in IDEMPOTENT_METHODS:
            # Sending it again is safe, so it is retried like a connection that never opened.
            return RemoteConnectError(f"{target}: the connection broke ({detail})")
        return OutcomeUnknown(
            f"{target}: the connection broke while the request was in flight ({detail}); it may "
            "or may not have taken effect, so it is not retried"
        )
    return RemoteToolError(f"{target}: {detail}")


def excerpt(response: httpx.Response) -> str:
    """Return the start of a response's body, whitespace collapsed, for an error message."""
    text = " ".join(response.text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _json(value)
    return str(value)


def _simple(p: ParamSpec, value: Any) -> str:
    """Serialise a path, header or cookie value (OpenAPI style "simple")."""
    if p.as_json:
        return _json(value)
    if isinstance(value, list):
        return ",".join(_scalar(v) for v in value)
    if isinstance(value, Mapping):
        if p.explode:
            return ",".join(f"{k}={_scalar(v)}" for k, v in value.items())
        return ",".join(f"{k},{_scalar(v)}" for k, v in value.items())
    return _scalar(value)


def _path_value(p: ParamSpec, value: Any) -> str:
    encoded = quote(_simple(p, value), safe=",=")
    if p.style == "label":
        return "." + encoded
    if p.style == "matrix":
        return f";{p.name}={encoded}"
    return encoded


def _query_pairs(p: ParamSpec, value: Any) -> list[tuple[str, str]]:
    """Serialise a query value: form (exploded or not), space/pipe delimited, deepObject."""
    if p.as_json:
        return [(p.name, _json(value))]
    if isinstance(value, list):
        if p.explode and p.style == "form":
            return [(p.name, _scalar(v)) for v in value]
        sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(p.style, ",")
        return [(p.name, sep.join(_scalar(v) for v in value))]
    if isinstance(value, Mapping):
        if p.style == "deepObject":
            return [(f"{p.name}[{k}]", _scalar(v)) for k, v in value.items()]
        if p.explode:
            return [(str(k), _scalar(v)) for k, v in value.items()]
        return [(p.name, ",".join(f"{k},{_scalar(v)}" for k, v in value.items()))]
    return [(p.name, _scalar(value))]
