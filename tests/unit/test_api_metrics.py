"""The API's metrics with several uvicorn workers: PROMETHEUS_MULTIPROC_DIR makes /metrics read
the workers' files, and the cache's figures still come from this worker's cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.api.metrics import ApiMetrics


def test_with_a_multiprocess_directory_the_workers_files_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    cache = AnalyticsCache(10, 60.0, topic="t")
    cache.hits = 4
    text = generate_latest(ApiMetrics(cache).registry).decode()
    assert "focus_api_analytics_cache_hits_total 4.0" in text
    assert "focus_api_analytics_cache_online 0.0" in text
