"""Reading SSE bodies in tests, and models the tests hold where they want them."""

from __future__ import annotations

import json
from typing import Any

from corral.providers import ModelRequest
from corral.providers.scripted import Reply
from corral.testing import Gate


def parse_sse(body: str) -> list[dict[str, Any]]:
    """Return the events of an SSE body: id, event and the decoded data of each frame."""
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            events.append(
                {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}
            )
    return events


def last_user(request: ModelRequest) -> str:
    return next(m.content for m in reversed(request.messages) if m.role == "user")


class HeldModel:
    """A scripted model whose calls wait at `gate` until the test opens it; then it echoes.

    Messages starting with "quick" are answered at once.
    """

    def __init__(self) -> None:
        self.gate = Gate()

    async def __call__(self, request: ModelRequest) -> Reply | str:
        text = last_user(request)
        if not text.startswith("quick"):
            await self.gate.passage()
        return Reply(f"echo: {text}")
