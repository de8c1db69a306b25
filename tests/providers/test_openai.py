"""OpenAIProvider against a fake OpenAI-compatible server over real HTTP and SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal, cast

import pytest

from corral.errors import (
    ClosedError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    StreamBroken,
)
from corral.messages import Message
from corral.providers import (
    Finish,
    ModelCapabilities,
    ModelRequest,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    complete,
)
from corral.providers.openai import OpenAIProvider, to_openai_messages
from corral.scheduler import ErrorInfo, Status, ToolResult
from corral.tools import ToolCall
from tests.fake_llm import Call, FakeOpenAI, Reply
from tests.providers.helpers import ADD, calls_of, drain, drain_into, request, text_of
from tests.servers import free_port

Transport = Literal["direct", "sdk"]


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(params=["direct", "sdk"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Every test that streams runs on both transports: they must behave alike."""
    return cast(Transport, request.param)


@pytest.fixture
async def provider(fake: FakeOpenAI, transport: Transport) -> AsyncIterator[OpenAIProvider]:
    async with fake.serve() as url:
        async with OpenAIProvider(
            base_url=url, api_key="test", timeout_s=5, transport=transport
        ) as provider:
            yield provider


async def test_text_streams_in_deltas_then_usage_then_finish(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="Hello, world", input_tokens=12, output_tokens=4))
    events = await drain(provider.stream(request()))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo,", " wo", "rld"]
    assert events[-2:] == [Usage(12, 4), Finish("stop")]
    body = fake.bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


async def test_parallel_tool_calls_assemble_from_split_deltas(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(
        Reply(
            text="Let me add.",
            calls=[
                Call("add", '{"a": 1, "b": 2}', id="call_a"),
                Call("add", '{"a": 30, "b": 12}', id="call_b"),
                Call("mul", "{}", id="call_c"),
            ],
            piece_chars=2,
        )
    )
    events = await drain(provider.stream(request(tools=(ADD,))))
    assert text_of(events) == "Let me add."
    assert calls_of(events) == [
        ("call_a", "add", '{"a": 1, "b": 2}'),
        ("call_b", "add", '{"a": 30, "b": 12}'),
        ("call_c", "mul", "{}"),
    ]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert "".join(d.arguments for d in deltas if d.index == 1) == '{"a": 30, "b": 12}'
    assert [(d.index, d.id, d.name) for d in deltas if d.id] == [
        (0, "call_a", "add"),
        (1, "call_b", "add"),
        (2, "call_c", "mul"),
    ]
    # A call is done as soon as the next one starts: a caller may run it while the model writes.
    first_done = next(i for i, e in enumerate(events) if isinstance(e, ToolCallDone))
    second_start = events.index(ToolCallDelta(1, "call_b", "add", ""))
    assert first_done < second_start
    assert events[-1] == Finish("tool_calls")
    assert fake.bodies[0]["tools"][0]["function"]["name"] == "add"


async def test_a_whole_answer_when_the_model_does_not_stream_tool_calls(fake: FakeOpenAI) -> None:
    fake.add(Reply(text="sum", calls=[Call("add", '{"a": 1}', id="c1")]))
    async with fake.serve() as url:
        caps = {"local-*": ModelCapabilities(streams_tool_calls=False)}
        async with OpenAIProvider(base_url=url, api_key="k", capabilities=caps) as provider:
            done = await complete(provider, request(model="local-llama", tools=(ADD,)))
    assert done.text == "sum"
    assert done.tool_calls == (ToolCall("c1", "add", '{"a": 1}'),)
    assert done.usage == Usage(11, 7)
    assert done.finish_reason == "tool_calls"
    assert "stream" not in fake.bodies[0] or fake.bodies[0]["stream"] is False


@pytest.mark.parametrize("model", ["o3-mini", "o1", "o4-mini-2025-04-16", "gpt-5", "openai/o3"])
async def test_parallel_tool_calls_is_never_sent_to_a_reasoning_model(
    fake: FakeOpenAI, provider: OpenAIProvider, model: str
) -> None:
    fake.add(Reply(text="ok"))
    req = request(model=model, tools=(ADD,), parallel_tool_calls=False, max_tokens=50)
    await drain(provider.stream(req))
    body = fake.bodies[0]
    assert "parallel_tool_calls" not in body
    assert body["max_completion_tokens"] == 50
    assert "max_tokens" not in body


async def test_parallel_tool_calls_is_sent_only_when_set_and_accepted(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="a"), Reply(text="b"), Reply(text="c"))
    await drain(provider.stream(request(tools=(ADD,), parallel_tool_calls=False, max_tokens=9)))
    await drain(provider.stream(request(tools=(ADD,))))
    await drain(provider.stream(request(parallel_tool_calls=True)))  # no tools: not allowed
    first, second, third = fake.bodies
    assert first["parallel_tool_calls"] is False
    assert first["max_tokens"] == 9
    assert "parallel_tool_calls" not in second
    assert "parallel_tool_calls" not in third


async def test_capability_overrides_win_over_the_table(fake: FakeOpenAI) -> None:
    fake.add(Reply(text="ok"))
    async with fake.serve() as url:
        caps = {"o3-proxy": ModelCapabilities(parallel_tool_calls=True)}
        async with OpenAIProvider(base_url=url, api_key="k", capabilities=caps) as provider:
            assert not provider.capabilities("o3-mini").parallel_tool_calls
            assert provider.capabilities("O3-PROXY").parallel_tool_calls
            req = request(model="o3-proxy", tools=(ADD,), parallel_tool_calls=True)
            await drain(provider.stream(req))
    assert fake.bodies[0]["parallel_tool_calls"] is True


def test_messages_translate_to_the_chat_format_and_back() -> None:
    calls = (
        ToolCall("c1", "add", '{"a": 1, "b": 2}'),
        ToolCall("c2", "add", {"a": 3, "b": 4}),
    )
    history = (
        Message.system("sys"),
        Message.user("add things"),
        Message.assistant("Adding.", calls),
        Message.tool_result(ToolResult("c1", "add", Status.OK, value=3)),
        Message.tool_result(
            ToolResult("c2", "add", Status.ERROR, error=ErrorInfo("ZeroDivisionError", "x"))
        ),
        Message.assistant("Done."),
    )
    wire = to_openai_messages(history)
    assert [m["role"] for m in wire] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    back = tuple(ToolCall.from_openai(c) for c in wire[2]["tool_calls"])
    assert [(c.id, c.name, json.loads(str(c.arguments))) for c in back] == [
        ("c1", "add", {"a": 1, "b": 2}),
        ("c2", "add", {"a": 3, "b": 4}),
    ]
    assert wire[2]["content"] == "Adding."
    assert wire[3] == {"role": "tool", "tool_call_id": "c1", "content": "3"}
    assert wire[4]["tool_call_id"] == "c2"
    assert "ZeroDivisionError" in wire[4]["content"]
    assert wire[5] == {"role": "assistant", "content": "Done."}
    assert to_openai_messages((Message.assistant("", calls[:1]),))[0]["content"] is None


# -- errors -----------------------------------------------------------------------------------


async def test_429_is_rate_limited_with_the_retry_after(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(status=429, retry_after="7"))
    with pytest.raises(RateLimited) as caught:
        await drain(provider.stream(request()))
    assert caught.value.retry_after_s == 7
    assert "429" in str(caught.value)
    assert "gpt-4o" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ProviderUnavailable), (503, ProviderUnavailable), (400, ProviderRejected)],
)
async def test_error_statuses_map_to_corral_errors(
    fake: FakeOpenAI, provider: OpenAIProvider, status: int, error: type[Exception]
) -> None:
    fake.add(Reply(status=status))
    with pytest.raises(error, match=str(status)):
        await drain(provider.stream(request()))


async def test_connection_refused_is_unavailable(transport: Transport) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with OpenAIProvider(
        base_url=url, api_key="k", timeout_s=2, transport=transport
    ) as provider:
        with pytest.raises(ProviderUnavailable, match="connection failed"):
            await drain(provider.stream(request()))


async def test_a_stream_cut_before_output_is_unavailable(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="abcdef", cut_after=1))  # only the role chunk, no text
    with pytest.raises(ProviderUnavailable) as caught:
        await drain(provider.stream(request()))
    assert not isinstance(caught.value, StreamBroken)


async def test_a_stream_cut_after_output_is_broken(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="abcdefghi", cut_after=3))
    seen: list[ProviderEvent] = []
    with pytest.raises(StreamBroken) as caught:
        await drain_into(provider.stream(request()), seen)
    assert text_of(seen) == "abcdef"
    assert isinstance(caught.value.__cause__, ProviderUnavailable)


async def test_an_error_event_in_the_stream_is_mapped(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="abc", error_event="server_error", cut_after=1))
    with pytest.raises(ProviderUnavailable, match="server_error"):
        await drain(provider.stream(request()))


async def test_a_slow_first_token_times_out_as_unavailable(
    fake: FakeOpenAI, transport: Transport
) -> None:
    fake.add(Reply(text="late", first_token_delay_s=3))
    async with fake.serve() as url:
        async with OpenAIProvider(
            base_url=url, api_key="k", timeout_s=0.3, transport=transport
        ) as provider:
            with pytest.raises(ProviderUnavailable, match="timed out"):
                await drain(provider.stream(request()))


async def test_closed_provider_refuses_new_streams(fake: FakeOpenAI, transport: Transport) -> None:
    async with fake.serve() as url:
        provider = OpenAIProvider(base_url=url, api_key="k", transport=transport)
        await provider.aclose()
        await provider.aclose()
        with pytest.raises(ClosedError, match="closed"):
            await drain(provider.stream(request()))


async def test_a_caller_that_stops_early_closes_the_response(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="a long answer " * 50), Reply(text="next"))
    stream = provider.stream(request())
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    # The connection went back to the pool or was closed; either way the next call works.
    assert text_of(await drain(provider.stream(request()))) == "next"


async def test_streams_one_after_another_share_one_connection(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(*(Reply(text=t, end_delay_s=0.05) for t in ("one", "two", "three")))
    for want in ("one", "two", "three"):
        assert text_of(await drain(provider.stream(request()))) == want
    # Each answer was read past its [DONE] to the end, so its connection went back to the pool.
    assert len(set(fake.client_ports)) == 1


async def test_the_sdk_does_not_retry_by_itself(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    fake.add(Reply(status=500), Reply(text="would succeed"))
    with pytest.raises(ProviderUnavailable):
        await drain(provider.stream(request()))
    assert len(fake.arrivals) == 1


async def test_extra_fields_temperature_and_seed_reach_the_body(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake.add(Reply(text="ok"))
    req = ModelRequest("m", (Message.user("x"),), temperature=0.2, seed=7, extra={"top_p": 0.5})
    await drain(provider.stream(req))
    body = fake.bodies[0]
    assert (body["temperature"], body["seed"], body["top_p"]) == (0.2, 7, 0.5)


def test_tool_call_deltas_without_index_and_out_of_order() -> None:
    from corral.providers.openai import _ToolCalls

    calls = _ToolCalls()
    # Some servers send no index: a new id starts a new call, no id continues the current one.
    calls.add(None, "c1", "add", '{"a"')
    calls.add(None, None, None, ": 1}")
    events = calls.add(None, "c2", "mul", "{}")
    assert isinstance(events[0], ToolCallDone)
    assert events[0].call == ToolCall("c1", "add", '{"a": 1}')
    assert [e.call.id for e in calls.finish() if isinstance(e, ToolCallDone)] == ["c2"]
    # Going back to a finished call would change a call the caller may already be running.
    calls = _ToolCalls()
    calls.add(0, "c1", "add", "{}")
    calls.add(1, "c2", "add", "{}")
    with pytest.raises(ProviderUnavailable, match="after it was complete"):
        calls.add(0, None, None, "more")


def test_an_empty_partial_answer_is_not_sent() -> None:
    from corral.messages import Message
    from corral.providers.openai import to_openai_messages

    sent = to_openai_messages(
        (Message.user("hi"), Message.assistant("", partial=True), Message.user("again"))
    )
    assert [m["role"] for m in sent] == ["user", "user"]


def test_malformed_chunks_are_named() -> None:
    from corral.providers.openai import _ChunkReader

    for chunk, what in (
        ([1, 2], "not a JSON object"),
        ({"choices": "x"}, "choices is not a list of objects"),
        ({"choices": [{"delta": "x"}]}, "delta is not an object"),
        ({"choices": [{"delta": {"tool_calls": [3]}}]}, "tool_calls is not a list of objects"),
    ):
        with pytest.raises(ProviderUnavailable, match=what):
            _ChunkReader().feed(chunk)
    reader = _ChunkReader()
    events = reader.feed(
        {
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )
    assert [type(e).__name__ for e in events] == ["TextDelta"]
    assert (reader.finish, reader.usage) == ("stop", Usage(3, 1))


# -- the two transports -----------------------------------------------------------------------


async def test_both_transports_send_the_sdks_headers(fake: FakeOpenAI) -> None:
    fake.add(Reply(text="a"), Reply(text="b"))
    async with fake.serve() as url:
        for transport in ("direct", "sdk"):
            async with OpenAIProvider(
                base_url=url, api_key="sk-both", transport=transport
            ) as provider:
                await drain(provider.stream(request()))
    direct, sdk = fake.headers
    assert direct["authorization"] == sdk["authorization"] == "Bearer sk-both"
    assert direct["content-type"] == "application/json"
    # The SDK's identification headers, as the SDK itself sends them (per-request ones aside).
    per_request = ("x-stainless-retry-count", "x-stainless-read-timeout")
    same = {k for k in sdk if k.startswith("x-stainless-") and k not in per_request}
    assert same
    assert {k: direct[k] for k in same} == {k: sdk[k] for k in same}
    assert direct["user-agent"] == sdk["user-agent"]
    assert fake.bodies[0] == fake.bodies[1]


async def test_an_error_body_that_is_not_json_is_quoted(transport: Transport) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def bad_gateway(_: object) -> PlainTextResponse:
        return PlainTextResponse("<html>upstream down</html>", status_code=502)

    app = Starlette(routes=[Route("/v1/chat/completions", bad_gateway, methods=["POST"])])
    from tests.servers import running_asgi

    async with running_asgi(app) as url:
        async with OpenAIProvider(
            base_url=url + "/v1", api_key="k", transport=transport
        ) as provider:
            with pytest.raises(ProviderUnavailable, match="answered 502") as caught:
                await drain(provider.stream(request()))
    if transport == "direct":  # the SDK's message is only "Error code: 502"
        assert "upstream down" in str(caught.value)


async def test_a_client_given_streams_through_the_sdk(fake: FakeOpenAI) -> None:
    import openai

    from corral.errors import UsageError

    fake.add(Reply(text="via sdk"))
    async with fake.serve() as url:
        client = openai.AsyncOpenAI(base_url=url, api_key="k")
        with pytest.raises(UsageError, match="transport 'direct' needs no client"):
            OpenAIProvider(client=client, transport="direct")
        async with OpenAIProvider(client=client) as provider:
            assert text_of(await drain(provider.stream(request()))) == "via sdk"
        await client.close()


def test_the_direct_transport_takes_its_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from corral.providers._wire import _proxy_for

    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert _proxy_for("https://api.openai.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert _proxy_for("https://api.openai.com/v1/chat/completions") == "http://proxy.internal:3128"
    assert _proxy_for("http://api.openai.com/v1/chat/completions") is None  # no HTTP_PROXY
    assert _proxy_for("https://127.0.0.1:8000/v1/chat/completions") is None


def test_the_direct_transport_trusts_the_cas_httpx_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    from corral.providers._wire import _tls_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert _tls_context().cert_store_stats()["x509_ca"] > 50  # certifi's bundle
    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    one = tmp_path / "one-ca.pem"
    one.write_text(
        bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    assert _tls_context().cert_store_stats()["x509_ca"] == 1
