"""The API's Prometheus metrics, declared once (the table: docs/metrics.md), and ``/metrics``.

Request durations are timed by :class:`Timed`, the outermost middleware, so they include the
body limit and the analytics fast path (a cache hit never reaches FastAPI's routing: it is
labelled with the analytics route's template). The analytics cache's figures are read from the
cache when scraped (:class:`CacheCollector`), so a cache hit costs nothing more.

With several uvicorn workers (``FOCUS_API_WORKERS``), set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory before ``focus api`` starts: the request histogram is then summed over the
workers; the cache's figures stay those of the worker that answers the scrape (each worker has
its own cache).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from focus_sessions.api.cache import AnalyticsCache

ANALYTICS_ROUTE = "/users/{user_id}/analytics"
#: Seconds: a cached hit (sub-millisecond) to a read that meets FOCUS_API_DB_TIMEOUT_MS.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                    10)


class ApiMetrics:
    """Every metric of one API process; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, cache: AnalyticsCache) -> None:
        self.registry = CollectorRegistry()
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.requests = Histogram(
            "focus_api_request_duration_seconds", "HTTP requests by method, route template "
            "and status, from the first byte in to the last byte out.",
            ["method", "route", "status"], buckets=DURATION_BUCKETS,
            registry=None if shared else self.registry)
        if shared:
            MultiProcessCollector(self.registry, path=shared)  # type: ignore[no-untyped-call]
        self.registry.register(CacheCollector(cache))

    async def endpoint(self, request: Request) -> Response:
        """Prometheus text format: request durations and the analytics cache."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class CacheCollector(Collector):
    """The analytics cache's counters and state, read when scraped."""

    def __init__(self, cache: AnalyticsCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.cache
        yield CounterMetricFamily("focus_api_analytics_cache_hits", "Analytics reads answered "
                                  "from the cache.", value=c.hits)
        yield CounterMetricFamily("focus_api_analytics_cache_misses", "Plain analytics reads "
                                  "the cache could not answer (not cached, expired, offline).",
                                  value=c.misses)
        yield CounterMetricFamily("focus_api_analytics_cache_refused", "Reads not kept because "
                                  "a change notice raced them.", value=c.refused)
        yield GaugeMetricFamily("focus_api_analytics_cache_entries", "Users cached now.",
                                value=len(c))
        yield GaugeMetricFamily("focus_api_analytics_cache_capacity", "Most users the cache "
                                "keeps (FOCUS_API_CACHE_ENTRIES; 0: off).", value=c.capacity)
        yield GaugeMetricFamily("focus_api_analytics_cache_online", "1 while the cache serves "
                                "(its notice listener is connected), else 0.",
                                value=1 if c.online else 0)


class Timed:
    """ASGI middleware: one observation per HTTP request, labelled by the route's template
    (``unmatched`` for a path no route takes, so a scan cannot grow the label set)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.histogram = metrics.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.histogram.labels(scope["method"], _route(scope, status), str(status)).observe(
                time.perf_counter() - began)


def _route(scope: Scope, status: int) -> str:
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    path: str = scope["path"]
    if status == 200 and path.startswith("/users/") and path.endswith("/analytics"):
        return ANALYTICS_ROUTE  # answered by the fast path, before routing
    return "unmatched"
