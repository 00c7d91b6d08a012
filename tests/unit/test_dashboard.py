"""The operations dashboard (ops/): every metric it queries is one the service exports, every
table its analytics panels read is a read model, and Prometheus scrapes where the services
serve (compose.yaml). No Grafana or Prometheus is needed: the files are checked, not run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from focus_sessions.api.cache import AnalyticsCache
from focus_sessions.api.metrics import ApiMetrics
from focus_sessions.consumers.metrics import ProjectorMetrics
from focus_sessions.projections.readmodels import TABLES

yaml = pytest.importorskip("yaml", reason="PyYAML reads the provisioning files")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "ops/grafana/dashboards/focus-sessions.json").read_text())
PANELS = DASHBOARD["panels"]


#: The series names each metric type exposes (a labelled metric has no sample until used).
SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    """Series names of every metric a projector and an API process expose."""
    registries = (ProjectorMetrics().registry,
                  ApiMetrics(AnalyticsCache(10, 60.0, topic="t")).registry)
    return {family.name + suffix for registry in registries for family in registry.collect()
            for suffix in SERIES[family.type]}


def queried() -> set[str]:
    exprs = [t["expr"] for p in PANELS for t in p["targets"] if "expr" in t]
    return set(re.findall(r"\bfocus_[a-z_]+", " ".join(exprs)))


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    names = queried()
    assert len(names) >= 15  # lag, throughput, latency, letters, held, batches, API, cache
    assert sorted(names - exported()) == []


def test_the_dashboard_has_the_panels_operators_and_analysts_need() -> None:
    titles = " | ".join(p["title"] for p in PANELS).lower()
    for topic in ("lag", "throughput", "latency", "dead letters", "held", "api latency",
                  "focus minutes", "completion rate"):
        assert topic in titles, topic


def test_the_analytics_panels_read_columns_of_the_read_models() -> None:
    columns = {t.name: set(t.columns) for t in TABLES}
    sql = [t["rawSql"] for p in PANELS for t in p["targets"] if "rawSql" in t]
    assert len(sql) == 2
    for query in sql:
        (table,) = re.findall(r"FROM (\w+)", query)
        assert table in columns
        used = set(re.findall(r"\b(day|sessions_\w+|focus_seconds|active_users)\b", query))
        assert used and used <= columns[table], used - columns[table]


def test_prometheus_scrapes_each_projector_and_the_api_where_compose_serves_them() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    scrape = {job["job_name"]: job for job in
              yaml.safe_load((ROOT / "ops/prometheus.yml").read_text())["scrape_configs"]}
    projector = compose["services"]["projector"]["environment"]
    (dns,) = scrape["projector"]["dns_sd_configs"]
    assert dns["names"] == ["projector"] and dns["port"] == projector[
        "FOCUS_PROJECTOR_METRICS_PORT"]
    api = compose["services"]["api"]["environment"]
    assert scrape["api"]["static_configs"][0]["targets"] == [f"api:{api['FOCUS_API_PORT']}"]
    datasources = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/datasources/datasources.yaml").read_text())
    used = {t["datasource"]["uid"] for p in PANELS for t in p["targets"]}
    assert used == {d["uid"] for d in datasources["datasources"]}
    assert all("password" not in d for d in datasources["datasources"])  # from the environment
