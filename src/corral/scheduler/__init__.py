"""The scheduler: plan a batch by resource claims, run it, report one outcome per call."""

from corral.scheduler._budget import Budget, BudgetStatistics
from corral.scheduler._outcome import ErrorInfo, Status, ToolResult, ToolResults
from corral.scheduler._plan import (
    EXCLUSIVE_RESOURCE,
    Claim,
    Edge,
    EdgeKind,
    Plan,
    PlanItem,
    make_plan,
)
from corral.scheduler._run import BatchCounters, Policy, Prepared, run_batch

__all__ = [
    "EXCLUSIVE_RESOURCE",
    "BatchCounters",
    "Budget",
    "BudgetStatistics",
    "Claim",
    "Edge",
    "EdgeKind",
    "ErrorInfo",
    "Plan",
    "PlanItem",
    "Policy",
    "Prepared",
    "Status",
    "ToolResult",
    "ToolResults",
    "make_plan",
    "run_batch",
]
