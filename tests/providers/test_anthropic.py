"""AnthropicProvider against a fake Messages API over real HTTP and SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, cast

import pytest

from corral.errors import ProviderRejected, ProviderUnavailable, RateLimited, StreamBroken
from corral.messages import Message
from corral.providers import Finish, ModelRequest, ProviderEvent, ToolCallDelta, ToolCallDone, Usage
from corral.providers.anthropic import AnthropicProvider, to_anthropic_messages
from corral.scheduler import ErrorInfo, Status, ToolResult
from corral.tools import ToolCall
from tests.fake_llm import Call, FakeAnthropic, Reply
from tests.providers.helpers import ADD, calls_of, drain, drain_into, request, text_of
from tests.servers import free_port

MODEL = "claude-fake-1"
Transport = Literal["direct", "sdk"]


@pytest.fixture
def fake() -> FakeAnthropic:
    return FakeAnthropic()


@pytest.fixture(params=["direct", "sdk"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Every test that streams runs on both transports: they must behave alike."""
    return cast(Transport, request.param)


@pytest.fixture
async def provider(fake: FakeAnthropic, transport: Transport) -> AsyncIterator[AnthropicProvider]:
    async with fake.serve() as url:
        async with AnthropicProvider(
            base_url=url, api_key="test", timeout_s=5, transport=transport
        ) as provider:
            yield provider


async def test_text_streams_with_usage_and_stop_reason(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="Hello there", input_tokens=20, output_tokens=3))
    events = await drain(provider.stream(request(model=MODEL)))
    assert text_of(events) == "Hello there"
    assert events[-2:] == [Usage(20, 3), Finish("stop")]
    body = fake.bodies[0]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert body["max_tokens"] == 4096


async def test_tool_use_blocks_assemble_from_input_json_deltas(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(
        Reply(
            text="Adding both.",
            calls=[
                Call("add", '{"a": 1, "b": 2}', id="toolu_1"),
                Call("add", '{"a": 5, "b": 8}', id="toolu_2"),
            ],
            piece_chars=4,
        )
    )
    events = await drain(provider.stream(request(model=MODEL, tools=(ADD,), max_tokens=100)))
    assert text_of(events) == "Adding both."
    assert calls_of(events) == [
        ("toolu_1", "add", '{"a": 1, "b": 2}'),
        ("toolu_2", "add", '{"a": 5, "b": 8}'),
    ]
    # Indexes count tool calls, not content blocks (the text block is block 0).
    starts = [e for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert [(d.index, d.id) for d in starts] == [(0, "toolu_1"), (1, "toolu_2")]
    # Each call is done at its own block's end, before the next call starts.
    first_done = next(i for i, e in enumerate(events) if isinstance(e, ToolCallDone))
    assert first_done < events.index(starts[1])
    assert events[-1] == Finish("tool_calls")
    body = fake.bodies[0]
    assert body["tools"] == [
        {"name": "add", "description": ADD.description, "input_schema": dict(ADD.parameters)}
    ]
    assert body["max_tokens"] == 100
    assert "tool_choice" not in body


async def test_parallel_tool_calls_false_disables_parallel_tool_use(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="one at a time"))
    req = request(model=MODEL, tools=(ADD,), parallel_tool_calls=False, temperature=0.3)
    await drain(provider.stream(req))
    body = fake.bodies[0]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "parallel_tool_calls" not in body
    assert body["temperature"] == 0.3


def test_tool_results_are_grouped_in_one_user_turn() -> None:
    calls = (ToolCall("t1", "add", '{"a": 1, "b": 2}'), ToolCall("t2", "add", {"a": 3, "b": 4}))
    history = (
        Message.system("You add."),
        Message.user("add things"),
        Message.assistant("Adding.", calls),
        Message.tool_result(ToolResult("t1", "add", Status.OK, value=3)),
        Message.tool_result(
            ToolResult("t2", "add", Status.ERROR, error=ErrorInfo("ValueError", "bad"))
        ),
        Message.user("and then?"),
        Message.system("Be terse."),
    )
    system, turns = to_anthropic_messages(history)
    assert system == "You add.\n\nBe terse."
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Adding."},
        {"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 1, "b": 2}},
        {"type": "tool_use", "id": "t2", "name": "add", "input": {"a": 3, "b": 4}},
    ]
    results = turns[2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "t1", "content": "3"}
    assert results[1]["is_error"] is True
    assert "ValueError" in results[1]["content"]
    # Round trip: the assistant turn reads back as the same calls.
    back = [ToolCall.from_anthropic(b) for b in turns[1]["content"][1:]]
    assert [(c.id, c.name, c.arguments) for c in back] == [
        ("t1", "add", {"a": 1, "b": 2}),
        ("t2", "add", {"a": 3, "b": 4}),
    ]


def test_malformed_arguments_are_kept_not_dropped() -> None:
    history = (Message.assistant("", (ToolCall("t1", "add", '{"a": 1,'),)),)
    _, turns = to_anthropic_messages(history)
    assert turns == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "t1",
                    "name": "add",
                    "input": {"_raw_arguments": '{"a": 1,'},
                }
            ],
        }
    ]


async def test_a_conversation_with_tool_results_goes_out_as_one_request(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="It is 3."))
    history = (
        Message.user("1+2?"),
        Message.assistant("", (ToolCall("t1", "add", '{"a": 1, "b": 2}'),)),
        Message.tool_result(ToolResult("t1", "add", Status.OK, value=3)),
    )
    events = await drain(provider.stream(ModelRequest(MODEL, history, tools=(ADD,))))
    assert text_of(events) == "It is 3."
    body = fake.bodies[0]
    assert "system" not in body
    assert body["messages"][2]["content"][0]["type"] == "tool_result"


# -- errors -----------------------------------------------------------------------------------


async def test_429_is_rate_limited_with_the_retry_after(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(status=429, retry_after="3"))
    with pytest.raises(RateLimited) as caught:
        await drain(provider.stream(request(model=MODEL)))
    assert caught.value.retry_after_s == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ProviderUnavailable), (529, ProviderUnavailable), (400, ProviderRejected)],
)
async def test_error_statuses_map_to_corral_errors(
    fake: FakeAnthropic, provider: AnthropicProvider, status: int, error: type[Exception]
) -> None:
    fake.add(Reply(status=status))
    with pytest.raises(error, match=str(status)):
        await drain(provider.stream(request(model=MODEL)))
    assert len(fake.arrivals) == 1  # the SDK's own retries are off


async def test_connection_refused_is_unavailable(transport: Transport) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AnthropicProvider(
        base_url=url, api_key="k", timeout_s=2, transport=transport
    ) as provider:
        with pytest.raises(ProviderUnavailable, match="connection failed"):
            await drain(provider.stream(request(model=MODEL)))


async def test_overloaded_in_the_stream_before_output_is_unavailable(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="never seen", error_event="overloaded_error", cut_after=1))
    with pytest.raises(ProviderUnavailable, match="overloaded_error") as caught:
        await drain(provider.stream(request(model=MODEL)))
    assert not isinstance(caught.value, StreamBroken)


async def test_overloaded_in_the_stream_after_output_is_broken(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="abcdefghi", error_event="overloaded_error", cut_after=5))
    with pytest.raises(StreamBroken, match="overloaded_error"):
        await drain(provider.stream(request(model=MODEL)))


async def test_a_stream_cut_after_output_is_broken(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="abcdefghi", cut_after=4))
    seen: list[ProviderEvent] = []
    with pytest.raises(StreamBroken):
        await drain_into(provider.stream(request(model=MODEL)), seen)
    assert text_of(seen) == "abc"


async def test_a_rate_limit_error_event_is_rate_limited(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.add(Reply(text="x", error_event="rate_limit_error"))
    with pytest.raises(RateLimited):
        await drain(provider.stream(request(model=MODEL)))


async def test_both_transports_send_the_sdks_headers_and_body(fake: FakeAnthropic) -> None:
    fake.add(Reply(text="a"), Reply(text="b"))
    async with fake.serve() as url:
        for transport in ("direct", "sdk"):
            async with AnthropicProvider(
                base_url=url, api_key="sk-both", transport=transport
            ) as provider:
                await drain(provider.stream(request(model=MODEL, temperature=0.5)))
    direct, sdk = fake.headers
    for name in ("authorization", "anthropic-version", "user-agent", "x-stainless-lang"):
        assert direct[name] == sdk[name], name
    # The same body, `extra_body` fields (temperature) merged in as the SDK merges them.
    assert fake.bodies[0] == fake.bodies[1]
    assert fake.bodies[0]["temperature"] == 0.5


async def test_streams_one_after_another_share_one_connection(
    fake: FakeAnthropic, provider: AnthropicProvider, transport: Transport
) -> None:
    fake.add(*(Reply(text=t, end_delay_s=0.05) for t in ("one", "two", "three")))
    for want in ("one", "two", "three"):
        assert text_of(await drain(provider.stream(request(model=MODEL)))) == want
    if transport == "direct":  # read past message_stop to the end: the connection is kept
        assert len(set(fake.client_ports)) == 1
