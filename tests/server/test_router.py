"""The provider router: one provider in front of many, chosen by the model name's route."""

from __future__ import annotations

import pytest

from corral.errors import UsageError
from corral.messages import Message
from corral.providers import ModelRequest, complete
from corral.providers.scripted import ScriptedProvider
from corral.server._router import ProviderRouter


def ask(model: str) -> ModelRequest:
    return ModelRequest(model, (Message.user("hi"),))


async def test_each_call_goes_to_its_routes_provider_with_the_route_taken_off() -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def script(name: str) -> ScriptedProvider:
        def answer(request: ModelRequest) -> str:
            seen[name].append(request.model)
            return f"{name} answers"

        return ScriptedProvider(script=answer)

    router = ProviderRouter({"a": script("a"), "b": script("b")})
    first = await complete(router, ask(ProviderRouter.model("a", "gpt-x")))
    second = await complete(router, ask(ProviderRouter.model("b", "claude-y")))
    assert (first.text, second.text) == ("a answers", "b answers")
    assert seen == {"a": ["gpt-x"], "b": ["claude-y"]}
    await router.aclose()


async def test_a_model_without_a_known_route_is_refused_naming_the_routes() -> None:
    router = ProviderRouter({"a": ScriptedProvider()})
    for model in ("gpt-x", "z::gpt-x"):
        with pytest.raises(UsageError, match=r"names no route \(known: \['a'\]\)"):
            router.stream(ask(model))
    with pytest.raises(UsageError, match="non-empty and without"):
        ProviderRouter({"a::b": ScriptedProvider()})
