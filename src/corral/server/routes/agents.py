"""The agents the server serves, and their tools with their schemas."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from corral.server._agents import AgentEntry
from corral.server.routes._deps import CallerDep
from corral.server.schemas import AgentOut, ErrorOut, ToolOut

__all__ = ["router"]

router = APIRouter(tags=["agents"])


def agent_out(entry: AgentEntry) -> AgentOut:
    """Describe an agent."""
    return AgentOut(
        name=entry.name,
        description=entry.description,
        provider=entry.provider,
        model=entry.model,
        policy=entry.policy,
        max_steps=entry.agent.max_steps,
        tools=[t.name for t in entry.registry],
    )


@router.get("/agents", response_model=list[AgentOut])
async def list_agents(caller: CallerDep) -> list[AgentOut]:
    """List the agents sessions can be created with (POST /sessions names one)."""
    runtime, tenant = caller
    del tenant  # authenticated, not tenant-specific
    return [agent_out(e) for e in runtime.agents.values()]


@router.get("/agents/{name}", response_model=AgentOut, responses={404: {"model": ErrorOut}})
async def get_agent(name: str, caller: CallerDep) -> AgentOut:
    """Return one agent."""
    runtime, tenant = caller
    del tenant
    entry = runtime.agents.get(name)
    if entry is None:
        raise HTTPException(404, f"no agent {name!r} (agents: {', '.join(runtime.agents)})")
    return agent_out(entry)


@router.get("/tools", response_model=list[ToolOut])
async def list_tools(
    caller: CallerDep,
    agent: Annotated[str | None, Query(description="Only this agent's tools.")] = None,
) -> list[ToolOut]:
    """List the registered tools, with the JSON schema of their arguments."""
    runtime, tenant = caller
    del tenant
    if agent is not None and agent not in runtime.agents:
        raise HTTPException(404, f"no agent {agent!r} (agents: {', '.join(runtime.agents)})")
    found: dict[int, ToolOut] = {}
    for entry in runtime.agents.values():
        if agent is not None and entry.name != agent:
            continue
        for tool in entry.registry:
            out = found.get(id(tool))
            if out is None:
                found[id(tool)] = ToolOut(
                    name=tool.name,
                    description=tool.description,
                    parameters=dict(tool.parameters),
                    read_only=tool.read_only,
                    agents=[entry.name],
                )
            else:
                out.agents.append(entry.name)
    return list(found.values())
