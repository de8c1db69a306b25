"""corral: an async-native concurrency runtime for LLM agents."""

from corral.errors import (
    ClosedError,
    CorralError,
    ToolArgumentsInvalid,
    ToolError,
    ToolNotFound,
    ToolTimeout,
    UsageError,
    WorkerDied,
)
from corral.scheduler import ErrorInfo, Plan, Status, ToolResult, ToolResults
from corral.tools import RegistryStatistics, Tool, ToolCall, ToolContext, ToolRegistry, tool

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "CorralError",
    "ErrorInfo",
    "Plan",
    "RegistryStatistics",
    "Status",
    "Tool",
    "ToolArgumentsInvalid",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolNotFound",
    "ToolRegistry",
    "ToolResult",
    "ToolResults",
    "ToolTimeout",
    "UsageError",
    "WorkerDied",
    "__version__",
    "tool",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        try:
            _obj.__module__ = "corral"
        except (AttributeError, TypeError):
            pass
del _name, _obj
