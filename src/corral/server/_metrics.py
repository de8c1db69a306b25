"""Prometheus metrics, read from the runtime's statistics at each scrape (nothing global).

Each app has its own `CollectorRegistry`, so several servers in one process (tests) never share
counters, and a scrape costs one `statistics()` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.server._runtime import Runtime

__all__ = ["metrics_registry", "render"]


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime()
        if runtime is None or not hasattr(runtime, "sessions"):
            return
        stats = runtime.statistics()
        manager = stats.manager
        gauges = {
            "corral_manager_queued": (
                "Model calls waiting in the request manager's queue.",
                manager.queued,
            ),
            "corral_manager_running": ("Model calls the manager is processing.", manager.running),
            "corral_manager_streams_in_use": ("Provider streams open.", manager.streams_in_use),
            "corral_manager_followers": ("Subscribers sharing another's call.", manager.followers),
            "corral_manager_retained": ("Request logs kept for resumption.", manager.retained),
            "corral_requests_running": ("Agent requests running.", stats.sessions.running),
            "corral_requests_queued": (
                "Agent requests queued behind others of their session.",
                stats.sessions.queued,
            ),
            "corral_sessions_loaded": ("Sessions held in memory.", stats.sessions.sessions),
            "corral_sse_streams": ("Open SSE streams.", stats.sse_streams),
            "corral_requests_in_flight": (
                "Agent requests admitted and not ended (bounded by max_requests).",
                stats.requests_in_flight,
            ),
            "corral_store_in_flight": ("Store calls in flight.", stats.store.in_flight),
            "corral_store_connections_checked_out": (
                "Database connections lent out.",
                stats.store.checked_out,
            ),
        }
        for name, (text, value) in gauges.items():
            yield GaugeMetricFamily(name, text, value=value)
        counters = {
            "corral_manager_dedup_hits": (
                "Calls that joined an identical call in flight.",
                manager.dedup_hits,
            ),
            "corral_manager_cache_hits": (
                "Calls answered from the result cache.",
                manager.cache_hits,
            ),
            "corral_manager_reaped": ("Calls the janitor ended (timeouts).", manager.reaped),
            "corral_provider_retries": (
                "Provider calls retried.",
                sum(p.retries for p in stats.providers),
            ),
            "corral_provider_rate_limited": (
                "429 answers from providers.",
                sum(p.rate_limited for p in stats.providers),
            ),
            "corral_persist_failures": (
                "Turns the store failed to persist.",
                stats.persist_failures,
            ),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        tools = CounterMetricFamily(
            "corral_tool_calls", "Tool calls ended, by status.", labels=["status"]
        )
        for status, count in sorted(stats.tool_calls.items()):
            tools.add_metric([status], count)
        yield tools
        requests = CounterMetricFamily(
            "corral_requests", "Agent requests ended, by status.", labels=["status"]
        )
        for status, count in sorted(stats.requests.items()):
            requests.add_metric([status], count)
        yield requests
        refused = CounterMetricFamily(
            "corral_requests_refused",
            "Agent requests refused at admission (429), by the limit: server or tenant.",
            labels=["limit"],
        )
        for limit, count in sorted(stats.requests_refused.items()):
            refused.add_metric([limit], count)
        yield refused


def metrics_registry(runtime: Callable[[], Runtime | None]) -> CollectorRegistry:
    """Return a registry whose one collector reads `runtime()`'s statistics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RuntimeCollector(runtime))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Return the registry in Prometheus' text format."""
    return generate_latest(registry)
