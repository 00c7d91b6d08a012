"""compose.yaml: valid against the Compose specification, and wired the way the design says.

No Docker engine is needed: the file is checked, not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SHARED_SCHEMAS = ROOT.parent / "shared" / "schemas"
yaml = pytest.importorskip("yaml", reason="PyYAML reads compose.yaml for the wiring checks")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _check_jsonschema() -> str:
    beside_python = Path(sys.executable).with_name("check-jsonschema")
    found = str(beside_python) if beside_python.exists() else shutil.which("check-jsonschema")
    if found is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    return found


def test_compose_file_is_valid_against_the_packaged_compose_spec() -> None:
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not SHARED_SCHEMAS.is_dir(),
                    reason=f"official schemas not found at {SHARED_SCHEMAS}")
def test_compose_file_is_valid_against_the_shared_compose_spec() -> None:
    from jsonschema import Draft7Validator

    spec = json.loads((SHARED_SCHEMAS / "compose-spec.json").read_text())
    errors = [e.message for e in Draft7Validator(spec).iter_errors(compose())]
    assert not errors


def test_kafka_runs_in_kraft_mode_on_a_persistent_volume_without_auto_created_topics() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in kafka["volumes"])
    assert "healthcheck" in kafka


def test_topics_are_created_once_with_partitions_and_a_dead_letter_topic() -> None:
    topics = compose()["services"]["topics"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = topics["command"][0]
    assert "--create --if-not-exists" in script
    assert "$$DLQ" in script
    assert topics["environment"]["PARTITIONS"].endswith(":-6}")


def test_services_start_in_order_and_wait_for_health() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("projector", "api"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["topics"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "postgres", "api"):
        assert services[name]["healthcheck"]["test"]


def test_two_projector_replicas_share_one_consumer_group() -> None:
    projector = compose()["services"]["projector"]
    assert projector["command"] == ["project"]
    assert projector["deploy"]["replicas"] == 2
    assert "FOCUS_CONSUMER_GROUP" not in projector["environment"]  # same default group


def test_the_projector_healthcheck_asks_its_own_health_endpoint() -> None:
    projector = compose()["services"]["projector"]
    port = projector["environment"]["FOCUS_PROJECTOR_METRICS_PORT"]
    assert str(port) in projector["expose"]
    check = " ".join(projector["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in check
    assert projector["environment"]["FOCUS_PROJECTOR_HEALTH_WINDOW_S"] > 0


def test_secrets_come_from_the_environment_and_are_required() -> None:
    services = compose()["services"]
    assert services["api"]["environment"]["FOCUS_JWT_SECRET"].startswith("${FOCUS_JWT_SECRET:?")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?")
    assert "@" not in services["api"]["environment"]["DATABASE_URL"].split("//")[1].split("@")[0]


def test_data_lives_in_named_volumes() -> None:
    document = compose()
    assert set(document["volumes"]) == {"kafka-data", "postgres-data", "prometheus-data",
                                        "grafana-data"}
    assert "postgres-data:/var/lib/postgresql/data" in document["services"]["postgres"]["volumes"]


def test_the_app_image_is_built_from_the_dockerfile_on_python_311_slim() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nFROM python:3.11-slim\n" in dockerfile
    assert "pip install ." in dockerfile
    assert 'ENTRYPOINT ["focus"]' in dockerfile
    for name in ("migrate", "projector", "api"):
        assert compose()["services"][name]["build"] == "."


def _compose_kafka_setting(env: dict[str, Any], key: str) -> str | None:
    value = env.get("KAFKA_" + key.upper().replace(".", "_"))
    return None if value is None else str(value).lower()


def test_the_kafka_image_is_the_version_the_maven_project_fetches() -> None:
    from focus_sessions.apache import POM, kafka_version

    images = {compose()["services"][name]["image"] for name in ("kafka", "topics")}
    assert images == {f"apache/kafka:{kafka_version(POM)}"}


def test_the_local_apache_broker_has_the_settings_of_the_compose_broker() -> None:
    # one node: every replication factor 1, as in compose; the topic is kept forever, uncompacted
    from focus_sessions.apache import cluster_settings

    env = compose()["services"]["kafka"]["environment"]
    local = cluster_settings(nodes=1)
    assert {key: _compose_kafka_setting(env, key) for key in local} == local
    assert local["log.retention.ms"] == "-1"
    assert local["log.cleanup.policy"] == "delete"


def test_compose_creates_the_topics_with_the_retention_and_cleanup_of_the_broker() -> None:
    script = compose()["services"]["topics"]["command"][0]
    assert "--config retention.ms=-1 --config cleanup.policy=delete" in script
    assert "--replication-factor 1" in script


def test_a_three_node_cluster_replicates_three_times_and_needs_two_in_sync_replicas() -> None:
    from focus_sessions.apache import cluster_settings

    three = cluster_settings(nodes=3)
    assert three["default.replication.factor"] == "3"
    assert three["offsets.topic.replication.factor"] == "3"
    assert three["min.insync.replicas"] == "2"
    assert three["transaction.state.log.min.isr"] == "2"
