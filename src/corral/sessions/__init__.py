"""Sessions: many conversations, each with its own history; many requests in each at once."""

from corral.sessions._handle import RequestHandle
from corral.sessions._session import HistoryEntry, Session, SessionPolicy
from corral.sessions._sessions import RequestEndHook, Sessions, SessionsStatistics

__all__ = [
    "HistoryEntry",
    "RequestEndHook",
    "RequestHandle",
    "Session",
    "SessionPolicy",
    "Sessions",
    "SessionsStatistics",
]
