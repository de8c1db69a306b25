"""Sessions over the scripted provider; every `Sessions` made is closed and checked idle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.agent import Agent
from corral.providers.scripted import ScriptedProvider
from corral.sessions import Sessions
from corral.tools import ToolRegistry
from tests.sessions.helpers import MakeSessions


@pytest.fixture
async def make_sessions(registry: ToolRegistry) -> AsyncIterator[MakeSessions]:
    made: list[Sessions] = []

    def make(provider: ScriptedProvider, *, policy: Any = "concurrent", **options: Any) -> Sessions:
        agent = Agent(provider=provider, tools=registry, model="scripted", **options)
        sessions = Sessions(agent, policy=policy)
        made.append(sessions)
        return sessions

    yield make
    for sessions in made:
        await sessions.aclose()
        assert sessions.statistics().idle, sessions.statistics()
        assert not sessions._tasks
