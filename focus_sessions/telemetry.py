"""The projector's HTTP endpoint, on ``FOCUS_PROJECTOR_METRICS_PORT`` (0: none, metrics off).

* ``GET /metrics``: Prometheus text format (docs/metrics.md has the table);
* ``GET /healthz``: ``200`` while every projector process is OK, ``503`` on STOP or STALL
  (:mod:`focus_sessions.consumers.health`), with a JSON body saying which and why.

One ``focus project`` serves its own registry from a daemon thread, so a stuck event loop
still gets an answer (its verdict: STOP). Under ``--processes N`` the supervisor serves the
workers' aggregate (prometheus-client's multiprocess mode) from its own thread-less loop,
:meth:`Endpoint.serve_for`, and judges each worker by its ``pid``: a stopped worker turns the
endpoint unhealthy while the others still answer. Unauthenticated, like any exporter: bind it
where only the scraper and the healthcheck reach it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from focus_sessions.consumers.health import Heartbeat, Verdict, judge_all

log = logging.getLogger(__name__)

_POLL, _PROGRESS, _LAG = (
    "focus_projector_last_poll_timestamp_seconds",
    "focus_projector_last_progress_timestamp_seconds", "focus_projector_lag_events")
#: How long one request may hold the supervisor's loop (a client that connects and says nothing).
REQUEST_TIMEOUT_S = 2.0


def heartbeats(registry: CollectorRegistry) -> list[Heartbeat]:
    """Each process's heartbeat in ``registry``, by its ``pid`` label (none: one process)."""
    polled: dict[str, float] = {}
    progress: dict[str, float] = {}
    lag: dict[str, float] = defaultdict(float)
    for metric in registry.collect():
        for sample in metric.samples:
            pid = sample.labels.get("pid", "")
            if sample.name == _POLL:
                polled[pid] = sample.value
            elif sample.name == _PROGRESS:
                progress[pid] = sample.value
            elif sample.name == _LAG:
                lag[pid] += sample.value
    return [Heartbeat(at, progress.get(pid, at), int(lag[pid]), pid)
            for pid, at in sorted(polled.items())]


def verdicts(registry: CollectorRegistry, window: float, started_at: float) -> list[Verdict]:
    found: list[Verdict] = judge_all(heartbeats(registry), time.time(), window, started_at)
    return found


class Endpoint(HTTPServer):
    """``/metrics`` and ``/healthz`` of ``registry``, judged with ``window`` seconds."""

    def __init__(self, port: int, registry: CollectorRegistry, window: float) -> None:
        self.registry = registry
        self.window = window
        self.started_at = time.time()
        self._thread: threading.Thread | None = None
        super().__init__(("", port), _Handler)

    def health(self) -> tuple[int, bytes]:
        found = verdicts(self.registry, self.window, self.started_at)
        ok = all(v.healthy for v in found)
        worst = next((v for v in found if not v.healthy), found[0])
        body = {"status": worst.status.value, "window_s": self.window,
                "processes": [{"pid": v.worker, "status": v.status.value, "detail": v.detail}
                              for v in found]}
        return (200 if ok else 503), json.dumps(body).encode()

    def serve_for(self, seconds: float) -> None:
        """Answer requests for ``seconds`` (the supervisor's wait between looks at its
        workers), in this thread."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.timeout = left
            self.handle_request()

    def start_thread(self) -> Endpoint:
        self._thread = threading.Thread(target=self.serve_forever, name="focus-metrics",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, kind = 200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            status, body = self.server.health()
            kind = "application/json"
        else:
            status, body, kind = 404, b"not found: try /metrics or /healthz\n", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


def open_endpoint(port: int, registry: CollectorRegistry, window: float) -> Endpoint | None:
    """The endpoint on ``port`` of every interface, or None (logged) when the port is taken:
    the projection goes on without it, and a healthcheck that asks it fails, as it should."""
    try:
        return Endpoint(port, registry, window)
    except OSError as exc:
        log.error("metrics and health endpoint not started on port %d (%s): set "
                  "FOCUS_PROJECTOR_METRICS_PORT to a free port, or 0 for none", port, exc)
        return None


def workers_registry(directory: Path) -> CollectorRegistry:
    """The aggregate of the workers' metric files in ``directory`` (multiprocess mode)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry
