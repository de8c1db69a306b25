"""Streamed JSON-over-SSE model calls straight on aiohttp: the OpenAI provider's direct transport.

Written by hand rather than through the official SDK's request path, and said so because the
style guide prefers the SDK: for one streamed chat completion the SDK builds its request options,
an httpx request and response over its aiohttp transport, and decodes SSE line by line in Python,
~0.75 ms of CPU per call under `corral bench server` (profiled with py-spy), more than the rest
of the provider, the agent and the request manager together. This path sends the same body with
the same headers (taken from the SDK client, so authentication, organization, project and the
SDK's identification headers are its own) and reads the same stream for about a quarter of that.
The SDK stays the transport for whole (non-streamed) answers, for a client the caller brings, and
on request (`transport="sdk"`). The Anthropic provider streams its Messages API over it the same
way (its SDK builds a pydantic object per event, and its request path is the same as OpenAI's).

What an HTTP status, a broken connection or an error event means is decided by `_errors`, the
rules both providers share, so the two transports fail alike (the provider tests run on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import urllib.request
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import aiohttp
import certifi

from corral._json import dumps, loads
from corral._sse import SSEDecoder
from corral.errors import ProviderError, ProviderUnavailable
from corral.providers._errors import (
    failed_connection,
    retry_after_from,
    status_error,
    type_error,
)

__all__ = ["WireClient", "wire_client"]

_DRAIN_S = 1.0
"""How long the end of a response is waited for after its `[DONE]`."""
_ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error response read for its message; the rest is not needed to say what failed."""


class WireClient:
    """POST a JSON body and stream back the `data:` objects of the SSE answer.

    Args:
        url: The endpoint, e.g. "http://127.0.0.1:8000/v1/chat/completions".
        headers: Sent with every request (authentication included).
        timeout_s: Connect timeout, and the longest wait for any next bytes of the answer
            (the first token included), as the SDK's timeout bounds a read.

    The aiohttp session (and its connection pool, kept alive between calls) is made on first
    use, inside the running loop, and closed by `aclose()`. The pool has no cap of its own:
    how many calls run at once is `LimitedProvider`'s and the request manager's decision.
    """

    def __init__(self, url: str, headers: Mapping[str, str], *, timeout_s: float) -> None:
        self.url = url
        self._headers = dict(headers)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._proxy = _proxy_for(url)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=_tls_context()),
                timeout=self._timeout,
                # Not `trust_env=True`: it reads ~/.netrc and the proxy variables again on every
                # request (a tenth of a call's CPU); the proxy is looked up once instead.
                trust_env=False,
                raise_for_status=False,
            )
        return self._session

    async def stream(
        self,
        body: Mapping[str, Any],
        where: str,
        *,
        last: Callable[[dict[str, Any]], bool] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield each JSON object of the answer's stream until `[DONE]`, `last(object)` or its end.

        Raises corral errors only (`where` names provider and model in them): the status rules
        of `_errors` for an HTTP error, `ProviderUnavailable` for a failed or cut connection, a
        timeout or a malformed chunk, and the mapped error of an `error` inside the stream.
        Leaving early closes the connection (it is not put back in the pool mid-answer).
        """
        data = dumps(body)
        try:
            async with self._http().post(
                self.url, data=data, headers=self._headers, proxy=self._proxy
            ) as response:
                if response.status >= 400:
                    raise await _status_error(where, response)
                decoder = SSEDecoder()
                async for chunk in response.content.iter_any():
                    for sse in decoder.feed(chunk):
                        if sse.data == "[DONE]":
                            await _read_to_end(response)
                            return
                        item = _chunk(where, sse.event, sse.data)
                        if last is not None and last(item):
                            # Read to the end first: a caller stops reading at its last event.
                            await _read_to_end(response)
                            yield item
                            return
                        yield item
                for sse in decoder.close():
                    if sse.data != "[DONE]":
                        yield _chunk(where, sse.event, sse.data)
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise ProviderUnavailable(f"{where} timed out: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            lost = failed_connection(exc) or exc
            raise ProviderUnavailable(
                f"{where}: connection failed: {type(lost).__name__}: {lost}"
            ) from exc

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def wire_client(client: Any, path: str, timeout_s: float) -> WireClient:
    """Return the direct transport to an SDK client's endpoint `path`, with the SDK's headers.

    `client` is an `openai.AsyncOpenAI` or `anthropic.AsyncAnthropic` made with a key: its
    `default_headers` (identification, version, organization; unset ones are `Omit` values and
    are left out) and `auth_headers`, and its `base_url`.
    """
    headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
    headers.update(client.auth_headers)
    url = str(client.base_url).rstrip("/") + path
    return WireClient(url, headers, timeout_s=timeout_s)


def _tls_context() -> ssl.SSLContext:
    """Return the CAs the SDK's httpx client trusts: SSL_CERT_FILE / SSL_CERT_DIR, else certifi's.

    aiohttp alone would take the system's store, which slim containers often lack: the two
    transports must accept the same servers.
    """
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile or None, capath=capath or None)
    return ssl.create_default_context(cafile=certifi.where())


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    """Read the little that follows `[DONE]`, so the connection goes back to the pool.

    A response left unread is closed instead, and the next call pays a new connection. A server
    that keeps the stream open after `[DONE]` gets `_DRAIN_S`, then its connection is closed.
    """
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            await response.read()


def _proxy_for(url: str) -> str | None:
    """Return the proxy for `url` from HTTP(S)_PROXY / NO_PROXY, as the SDK's httpx honours them."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


def _chunk(where: str, event: str, text: str) -> dict[str, Any]:
    try:
        data = loads(text)
    except ValueError as exc:
        raise ProviderUnavailable(f"{where} sent a malformed chunk: {exc}: {text!r:.200}") from exc
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"{where} sent a chunk that is not an object: {text!r:.200}")
    # An error inside a 200 stream, as the SDK reads it: an `error` member, in any event.
    error = data.get("error")
    if error or event == "error":
        info = error if isinstance(error, dict) else {}
        message = str(info.get("message") or error or text)
        raise type_error(where, info.get("type") or info.get("code"), message)
    return data


async def _status_error(where: str, response: aiohttp.ClientResponse) -> ProviderError:
    raw = await response.content.read(_ERROR_BODY_LIMIT)
    detail = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            detail = str(error["message"])
        elif isinstance(error, str) and error:
            detail = error
        elif isinstance(body.get("message"), str):
            detail = body["message"]
    return status_error(where, response.status, detail[:2000], retry_after_from(response.headers))
