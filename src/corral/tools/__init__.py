"""Tools: registration, schemas, and running a model message's calls as one batch."""

from corral.tools._calls import ToolCall, parse_calls
from corral.tools._python import tool
from corral.tools._registry import RegistryStatistics, ToolRegistry
from corral.tools._tool import Tool, ToolContext

__all__ = [
    "RegistryStatistics",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolRegistry",
    "parse_calls",
    "tool",
]
