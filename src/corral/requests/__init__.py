"""The request manager: admission, caps, singleflight with stream broadcast, and a janitor."""

from corral.requests._broadcast import EventLog, LogStatistics
from corral.requests._flight import StreamCancelled, StreamDone, StreamEvent, StreamFailed
from corral.requests.manager import ManagerStatistics, RequestHandle, RequestManager

__all__ = [
    "EventLog",
    "LogStatistics",
    "ManagerStatistics",
    "RequestHandle",
    "RequestManager",
    "StreamCancelled",
    "StreamDone",
    "StreamEvent",
    "StreamFailed",
]
