"""What an HTTP status or a broken stream means for a model call, shared by the SDK providers.

Each provider module maps its SDK's exceptions at one boundary; this module holds the rules they
share, so both providers draw the same line between "try again" and "the request is wrong".
"""

from __future__ import annotations

from collections.abc import Mapping

from corral._retry import parse_retry_after
from corral.errors import (
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
)

__all__ = ["after_output", "failed_connection", "retry_after_from", "status_error", "type_error"]

# 408 and 409 are what the SDKs themselves retry besides 429 and 5xx: a request timeout and a
# lock conflict say nothing against the request.
_RETRYABLE_4XX = frozenset({408, 409})


def failed_connection(exc: BaseException) -> BaseException | None:
    """Return the refused or reset connection behind an SDK error, if there is one.

    The SDKs' aiohttp transport reports a refused connection as a connect *timeout*
    (openai/_vendor/httpx_aiohttp maps every aiohttp ClientConnectionError so); the OSError
    underneath tells the two apart, and "connection failed" is the truer message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError):
            return current
        os_error = getattr(current, "os_error", None)  # aiohttp.ClientConnectorError
        if isinstance(os_error, ConnectionError):
            return os_error
        current = current.__cause__ or current.__context__
    return None


def retry_after_from(headers: Mapping[str, str] | None) -> float | None:
    """Return the wait a response asks for: `retry-after-ms` (OpenAI's), else `Retry-After`."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def status_error(
    where: str, status: int, detail: str, retry_after_s: float | None
) -> ProviderError:
    """Return the corral error for an HTTP error status; `where` names provider and model."""
    message = f"{where} answered {status}"
    if retry_after_s is not None:
        message += f" (Retry-After: {retry_after_s:g} s)"
    if detail:
        message += f": {detail}"
    if status == 429:
        return RateLimited(message, retry_after_s=retry_after_s)
    if status >= 500 or status in _RETRYABLE_4XX:
        return ProviderUnavailable(message, retry_after_s=retry_after_s)
    return ProviderRejected(message)


def type_error(where: str, error_type: str | None, detail: str) -> ProviderError:
    """Return the corral error for an error reported inside a stream, by its `type` field.

    Streams report failures as events after a 200 status: Anthropic's `overloaded_error`,
    `rate_limit_error`; OpenAI's `server_error`. Unknown types count as the server's failure.
    """
    kind = (error_type or "").lower()
    message = f"{where} reported {error_type or 'an error'} in the stream"
    if detail:
        message += f": {detail}"
    if "rate_limit" in kind:
        return RateLimited(message)
    if "invalid_request" in kind or "authentication" in kind or "permission" in kind:
        return ProviderRejected(message)
    return ProviderUnavailable(message)


def after_output(error: ProviderError, *, delivered: bool) -> ProviderError:
    """Apply the stream rule: a failure after output reached the caller is `StreamBroken`.

    Restarting such a stream would show the caller its beginning twice, so it is never retried.
    Before any output it is an ordinary failure, retried or not by its own kind.
    """
    if not delivered or isinstance(error, StreamBroken):
        return error
    broken = StreamBroken(f"the stream broke after output reached the caller: {error}")
    broken.__cause__ = error
    return broken
