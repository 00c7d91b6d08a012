"""The API's ``/metrics``: request durations by route template and status, the analytics cache's
hits, misses and state; unauthenticated, and not part of the OpenAPI schema."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.api_harness import api_settings, eventually, running_api, seed_session


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_requests_by_route_and_the_cache_hits_and_misses(
    kafka_bootstrap, fresh_database, fresh_topics
):
    settings = api_settings(kafka_bootstrap, fresh_database, fresh_topics)
    async with running_api(settings) as api:  # migrates first
        seed_session(fresh_database, "zoe", ended=True)
        async def online() -> bool:
            return bool(api.cache.online)

        await eventually(online)
        for _ in range(2):  # a miss, kept; then a hit from the fast path
            answer = await api.client.get("/users/zoe/analytics", headers=api.user("zoe"))
            assert answer.status_code == 200
        assert (await api.client.get("/no/such/route")).status_code == 404
        scraped = await api.client.get("/metrics")  # no token
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        schema = (await api.client.get("/openapi.json")).json()
    found = samples(scraped.text)

    def value(name: str, **labels: str) -> float:
        return found.get((name, frozenset(labels.items())), 0.0)

    analytics = {"method": "GET", "route": "/users/{user_id}/analytics", "status": "200"}
    assert value("focus_api_request_duration_seconds_count", **analytics) == 2
    assert value("focus_api_request_duration_seconds_count", method="GET", route="unmatched",
                 status="404") == 1
    assert (value("focus_api_analytics_cache_hits_total"),
            value("focus_api_analytics_cache_misses_total")) == (1, 1)
    assert value("focus_api_analytics_cache_entries") == 1
    assert value("focus_api_analytics_cache_online") == 1
    assert value("focus_api_analytics_cache_capacity") == settings.focus_api_cache_entries
    assert "/metrics" not in schema["paths"]
