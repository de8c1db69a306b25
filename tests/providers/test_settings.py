"""Choosing the provider from environment variables and a TOML file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.providers import (
    LimitedProvider,
    LimiterRegistry,
    ProviderSettings,
    RateLimits,
    complete,
    load_settings,
    provider_from_settings,
)
from corral.providers.anthropic import AnthropicProvider
from corral.providers.openai import OpenAIProvider
from corral.providers.scripted import ScriptedProvider
from tests.fake_llm import FakeOpenAI, Reply
from tests.providers.helpers import request


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CORRAL_* or provider key variables from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CORRAL_") or name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
            monkeypatch.delenv(name)


async def test_nothing_configured_runs_scripted_and_says_so_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings()
    assert settings.provider is None
    with caplog.at_level(logging.WARNING, logger="corral.providers.settings"):
        provider = provider_from_settings(settings)
    assert isinstance(provider, ScriptedProvider)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "SCRIPTED" in warning.getMessage()
    assert "CORRAL_PROVIDER" in warning.getMessage()
    await provider.aclose()


async def test_scripted_chosen_explicitly_is_quiet(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_PROVIDER", "scripted")
    with caplog.at_level(logging.WARNING):
        provider = provider_from_settings(load_settings())
    assert isinstance(provider, ScriptedProvider)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await provider.aclose()


async def test_openai_from_the_environment_with_the_key_named_by_a_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeOpenAI(Reply(text="configured"))
    async with fake.serve() as url:
        monkeypatch.setenv("CORRAL_PROVIDER", "openai")
        monkeypatch.setenv("CORRAL_MODEL", "local-model")
        monkeypatch.setenv("CORRAL_BASE_URL", url)
        monkeypatch.setenv("CORRAL_API_KEY_ENV", "MY_LLM_KEY")
        monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
        monkeypatch.setenv("CORRAL_RPM", "120")
        monkeypatch.setenv("CORRAL_MAX_CONCURRENCY", "3")
        settings = load_settings()
        provider = provider_from_settings(settings, registry=LimiterRegistry())
        assert isinstance(provider, LimitedProvider)
        assert isinstance(provider.inner, OpenAIProvider)
        assert provider.inner._client.api_key == "sk-from-env"
        async with provider:
            assert settings.model is not None
            done = await complete(provider, request(model=settings.model))
            limits = provider.limiter(settings.model).limits
    assert done.text == "configured"
    assert (limits.rpm, limits.max_concurrency, limits.backoff.attempts) == (120, 3, 4)


async def test_anthropic_reads_its_default_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROVIDER", "anthropic")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    provider = provider_from_settings(load_settings(), registry=LimiterRegistry())
    assert isinstance(provider, LimitedProvider)
    assert isinstance(provider.inner, AnthropicProvider)
    assert provider.inner._client.api_key == "sk-ant-test"
    await provider.aclose()


def test_a_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROVIDER", "openai")
    monkeypatch.setenv("CORRAL_API_KEY_ENV", "TEAM_OPENAI_KEY")
    with pytest.raises(UsageError, match="TEAM_OPENAI_KEY"):
        provider_from_settings(load_settings())


def test_the_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        "[provider]\n"
        'provider = "anthropic"\n'
        'model = "claude-from-file"\n'
        "tpm = 40000\n"
        "max_attempts = 2\n"
        "[server]\n"
        "port = 8000\n"
    )
    settings = load_settings(config)
    assert (settings.provider, settings.model, settings.tpm, settings.max_attempts) == (
        "anthropic",
        "claude-from-file",
        40000,
        2,
    )
    monkeypatch.setenv("CORRAL_MODEL", "claude-from-env")
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    settings = ProviderSettings()
    assert (settings.provider, settings.model) == ("anthropic", "claude-from-env")
    assert load_settings(config, model="from-code").model == "from-code"


def test_a_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('[provider]\nprovider = "openai"\napi_key = "sk-oops"\n')
    with pytest.raises(UsageError, match="api_key_env"):
        load_settings(config)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[provider]\nprovider = "gemini"\n', "provider"),
        ("[provider]\nrpm = -1\n", "rpm"),
        ("[provider\n", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_bad_value(tmp_path: Path, text: str, match: str) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_settings(config)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_the_sdks_are_imported_only_when_chosen() -> None:
    code = (
        "import sys, corral.providers as p\n"
        "p.provider_from_settings(p.load_settings(provider='scripted'))\n"
        "assert 'openai' not in sys.modules and 'anthropic' not in sys.modules, 'eager import'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


async def test_limits_of_the_settings_are_shared_per_key() -> None:
    registry = LimiterRegistry()
    settings = load_settings(provider="openai", base_url="http://127.0.0.1:9/v1", rpm=60)
    a = provider_from_settings(settings, registry=registry)
    b = provider_from_settings(settings, registry=registry)
    assert isinstance(a, LimitedProvider)
    assert isinstance(b, LimitedProvider)
    assert a.limiter("m") is b.limiter("m")
    assert a.limiter("m").limits == RateLimits(rpm=60)
    await a.aclose()
    await b.aclose()


async def test_the_openai_transport_is_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.providers._limited import LimitedProvider
    from corral.providers.openai import OpenAIProvider

    config = tmp_path / "corral.toml"
    config.write_text(
        '[provider]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\ntransport = "sdk"\n'
    )
    default = load_settings(provider="openai", base_url="http://127.0.0.1:9/v1")
    for settings, direct in ((load_settings(config), False), (default, True)):
        provider = provider_from_settings(settings)
        assert isinstance(provider, LimitedProvider)
        inner = provider.inner
        assert isinstance(inner, OpenAIProvider)
        assert (inner._wire is not None) is direct
        await inner.aclose()
    monkeypatch.setenv("CORRAL_TRANSPORT", "carrier-pigeon")
    with pytest.raises(UsageError, match="transport"):
        load_settings()
