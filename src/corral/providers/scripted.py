"""`ScriptedProvider`: an offline, deterministic model for demos and tests.

It answers from a script (a list of replies, one per call, or a function of the request) or from
rules ("when the user's message matches this pattern, call that tool; once results are in, sum
them up"). It streams like a real provider: text token by token, tool calls as argument deltas,
then the assembled calls, `Usage` and `Finish`, with an optional delay before the first token and
between tokens (the sleep function is injectable, so tests need no real time).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from corral.errors import ClosedError, ProviderError, UsageError
from corral.messages import Message
from corral.providers.base import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
)
from corral.tools import ToolCall

__all__ = ["DEMO_RULES", "Reply", "Rule", "ScriptFunction", "ScriptedProvider", "summarize"]

_TOKEN = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of the scripted model.

    Args:
        text: Streamed token by token (a token is a word with the spaces before it).
        tool_calls: Calls to ask for; a call with an empty id gets a unique one. `arguments` may
            be a mapping (sent as JSON) or raw text (sent as it is, even if it is not JSON).
        finish_reason: Defaults to "tool_calls" when there are calls, else "stop".
        usage: Defaults to an estimate: 4 characters a token for the prompt, one token per chunk
            streamed for the answer.
        hold: Awaited after the text has streamed and before the tool calls: a test holds the
            model mid-answer there (with a `Gate`), to cancel it or to prove what overlaps.
        error: Raised after the text has streamed (and after `hold`): a stream that breaks.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    hold: Callable[[], Awaitable[None]] | None = None
    error: ProviderError | None = None


ScriptFunction: TypeAlias = Callable[[ModelRequest], "Reply | str | Awaitable[Reply | str]"]


@dataclass(frozen=True, slots=True)
class Rule:
    """When the user's last message matches `pattern`, call `tool` (once per match).

    String values in `arguments` are formatted with the match's named groups
    (`{"path": "{path}"}`); or `arguments` is a function of the match.
    """

    pattern: str | re.Pattern[str]
    tool: str
    arguments: Mapping[str, Any] | Callable[[re.Match[str]], Mapping[str, Any]] = field(
        default_factory=dict
    )

    def calls(self, text: str) -> list[ToolCall]:
        """Return one call per match of the pattern in `text` (ids left for the provider)."""
        return [call for _, call in self.found(text)]

    def found(self, text: str) -> list[tuple[int, ToolCall]]:
        """Return each match's position in `text` with the call it asks for."""
        pattern = (
            self.pattern
            if isinstance(self.pattern, re.Pattern)
            else re.compile(self.pattern, re.IGNORECASE)
        )
        return [
            (m.start(), ToolCall("", self.tool, self._arguments(m))) for m in pattern.finditer(text)
        ]

    def _arguments(self, match: re.Match[str]) -> dict[str, Any]:
        if callable(self.arguments):
            return dict(self.arguments(match))
        groups = {k: v or "" for k, v in match.groupdict().items()}
        return {
            k: v.format_map(groups) if isinstance(v, str) else v for k, v in self.arguments.items()
        }


DEMO_RULES: tuple[Rule, ...] = (
    Rule(r"\bread (?:the )?(?:file )?(?P<path>[\w./-]+\.\w+)", "read_file", {"path": "{path}"}),
    Rule(
        r"\bwrite ['\"](?P<text>[^'\"]*)['\"] (?:to|into) (?P<path>[\w./-]+)",
        "write_file",
        {"path": "{path}", "text": "{text}"},
    ),
    Rule(
        r"\blist (?:the )?(?:files|directory|dir)(?: (?:in|of) (?P<path>[\w./-]+))?",
        "list_dir",
        lambda m: {"path": m.group("path") or "."},
    ),
    Rule(
        r"\b(?:calculate|compute|what is)\s+(?P<expression>[-+*/%().\d\s]*\d[-+*/%().\d\s]*)",
        "calculate",
        lambda m: {"expression": m.group("expression").strip()},
    ),
    Rule(r"\bfetch (?P<url>https?://\S+)", "fetch", {"url": "{url}"}),
)
"""Rules for a demo agent with file and calculator tools: `read_file(path)`,
`write_file(path, text)`, `list_dir(path)`, `calculate(expression)` and `fetch(url)`. One message
may trigger several ("read a.txt and b.txt" does not, "read a.txt and read b.txt" does); they run
in one batch."""


def summarize(results: Sequence[Message]) -> str:
    """Return the answer the rules give once tool results are in: one line per result."""
    lines = []
    for m in results:
        if m.is_error:
            lines.append(f"- {m.name} failed: {m.content}")
        else:
            lines.append(f"- {m.name}: {m.content}")
    return "Here is what the tools returned:\n" + "\n".join(lines)


def _echo(request: ModelRequest) -> str:
    user = _last_user(request.messages)
    return f"You said: {request.messages[user].content}" if user is not None else "Hello!"


class ScriptedProvider:
    """A model that answers from a script or rules; offline and deterministic.

    Args:
        script: A list of replies (the n-th call to `stream` gets the n-th; a str is a reply with
            that text), or a function of the request returning a reply (it may be async: await
            a `Gate` there to hold the model). Takes precedence over `rules`.
        rules: Used when there is no script (defaults to `DEMO_RULES`). For the user's last
            message: once the tools it asked for have answered, reply with `summarize` of their
            results; else call every tool whose rule matches; else `fallback`.
        fallback: The reply when no rule matches; defaults to echoing the user's message
            ("You said: ...").
        first_token_delay_s: Waited before the first event.
        token_delay_s: Waited before each later text token and argument chunk.
        sleep: How to wait (`asyncio.sleep` by default): inject a fake clock's sleep in tests.
        chunk_chars: Size of the argument pieces tool calls stream in.

    `calls` counts the calls to `stream`; `requests` holds the requests, in arrival order.
    """

    name = "scripted"

    def __init__(
        self,
        script: Sequence[Reply | str] | ScriptFunction | None = None,
        *,
        rules: Sequence[Rule] | None = None,
        fallback: ScriptFunction = _echo,
        first_token_delay_s: float = 0.0,
        token_delay_s: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        chunk_chars: int = 16,
    ) -> None:
        if script is not None and not callable(script) and isinstance(script, str | Reply):
            raise UsageError("script must be a list of replies or a function, not one reply")
        if first_token_delay_s < 0 or token_delay_s < 0:
            raise UsageError(
                f"delays must be >= 0 seconds, got first_token_delay_s={first_token_delay_s!r}, "
                f"token_delay_s={token_delay_s!r}"
            )
        if chunk_chars < 1:
            raise UsageError(f"chunk_chars must be >= 1, got {chunk_chars!r}")
        self._script = script
        self._rules = tuple(DEMO_RULES if rules is None else rules)
        self._fallback = fallback
        self._first_delay = first_token_delay_s
        self._token_delay = token_delay_s
        self._sleep = sleep
        self._chunk = chunk_chars
        self._closed = False
        self.requests: list[ModelRequest] = []

    @property
    def calls(self) -> int:
        """How many times `stream` was called."""
        return len(self.requests)

    def capabilities(self, model: str) -> ModelCapabilities:
        """Return what every scripted model accepts: everything."""
        return ModelCapabilities()

    async def aclose(self) -> None:
        """Refuse further calls. Idempotent."""
        self._closed = True

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Answer `request` as the script says, streaming like a real provider.

        Cancellation-safe: it holds nothing but the wait it is in.
        """
        if self._closed:
            raise ClosedError("the scripted provider is closed")
        number = len(self.requests)
        self.requests.append(request)
        reply = await self._reply(request, number)
        calls = [
            c if c.id else ToolCall(f"call_{number}_{i}", c.name, c.arguments)
            for i, c in enumerate(reply.tool_calls)
        ]
        if self._first_delay:
            await self._sleep(self._first_delay)
        chunks = 0
        for token in _TOKEN.findall(reply.text):
            if chunks and self._token_delay:
                await self._sleep(self._token_delay)
            chunks += 1
            yield TextDelta(token)
        if reply.hold is not None:
            await reply.hold()
        if reply.error is not None:
            raise reply.error
        # Calls stream as deltas, then each is reassembled from exactly what was streamed.
        streamed: list[list[str]] = []
        for index, call in enumerate(calls):
            text = (
                call.arguments
                if isinstance(call.arguments, str)
                else json.dumps(dict(call.arguments))
            )
            pieces = [text[i : i + self._chunk] for i in range(0, len(text), self._chunk)] or [""]
            streamed.append(pieces)
            for n, piece in enumerate(pieces):
                if chunks and self._token_delay:
                    await self._sleep(self._token_delay)
                chunks += 1
                first = n == 0
                yield ToolCallDelta(
                    index, call.id if first else None, call.name if first else None, piece
                )
        for call, pieces in zip(calls, streamed, strict=True):
            yield ToolCallDone(ToolCall(call.id, call.name, "".join(pieces)))
        usage = reply.usage or Usage(
            max(1, request.estimated_tokens() - (request.max_tokens or 0)), chunks
        )
        yield usage
        yield Finish(reply.finish_reason or ("tool_calls" if calls else "stop"))

    async def _reply(self, request: ModelRequest, number: int) -> Reply:
        script = self._script
        if script is None:
            answer = self._by_rules(request)
        elif callable(script):
            answer = script(request)
        else:
            if number >= len(script):
                raise UsageError(
                    f"the script has {len(script)} replies; call {number + 1} has none"
                )
            answer = script[number]
        if inspect.isawaitable(answer):
            answer = await answer
        return Reply(answer) if isinstance(answer, str) else answer

    def _by_rules(self, request: ModelRequest) -> Reply | str | Awaitable[Reply | str]:
        messages = request.messages
        user = _last_user(messages)
        if user is None:
            return self._fallback(request)
        after = messages[user + 1 :]
        if any(m.tool_calls for m in after):
            return summarize([m for m in after if m.role == "tool"])
        # In the order the user asked: the scheduler keeps that order between calls that
        # conflict ("write 'x' to a.txt, then read a.txt").
        found = sorted(
            (f for rule in self._rules for f in rule.found(messages[user].content)),
            key=lambda f: f[0],
        )
        calls = [call for _, call in found]
        if not calls:
            return self._fallback(request)
        names = ", ".join(dict.fromkeys(c.name for c in calls))
        return Reply(f"Let me use {names}.", tuple(calls))


def _last_user(messages: Sequence[Message]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return None
