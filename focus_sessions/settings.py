"""Settings, one class per process, read from the environment and validated at start-up."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from focus_sessions.contracts.topics import DEAD_LETTER_TOPIC, EVENTS_TOPIC

S = TypeVar("S", bound=BaseSettings)


class CommonSettings(BaseSettings):
    """What every process needs. Unset broker/database means: use the embedded ones."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers, e.g. kafka:9092. Unset: embedded broker."
    )
    database_url: str | None = Field(
        None, description="PostgreSQL URL (libpq). Unset: embedded PostgreSQL."
    )
    focus_events_topic: str = Field(EVENTS_TOPIC, description="Topic of the event log.")
    focus_dlq_topic: str = Field(DEAD_LETTER_TOPIC, description="Dead-letter topic.")
    focus_topic_partitions: int = Field(
        6, ge=1, le=1024, description="Partitions when the CLI creates the topics."
    )
    focus_data_dir: Path = Field(
        Path(".focus"), description="Where the embedded servers keep their files."
    )
    focus_kafka_idempotence: Literal["auto", "on", "off"] = Field(
        "auto", description="Idempotent producers: on, off, or auto (ask the broker once; "
        "Apache Kafka grants them, the embedded tansu broker refuses them).",
    )


class ProjectorSettings(CommonSettings):
    focus_consumer_group: str = Field(
        "focus-projector", description="Kafka consumer group shared by projector replicas."
    )
    focus_batch_max_records: int = Field(
        10_000, ge=1, le=100_000, description="Most events projected in one transaction."
    )
    focus_batch_wait_ms: int = Field(
        100, ge=0, le=10_000, description="How long a poll waits for events to batch."
    )
    focus_retry_max_seconds: float = Field(
        30.0, gt=0, description="Ceiling of the exponential backoff when PostgreSQL/Kafka fail."
    )
    focus_session_timeout_ms: int = Field(
        10_000, ge=1000, description="Consumer-group session timeout: how soon a dead "
        "projector's partitions move to a live one.",
    )
    focus_dlq_max_original_bytes: int = Field(
        512 * 1024, ge=0, le=64 * 1024 * 1024, description="Largest original value a dead "
        "letter carries; a larger one travels as its size, SHA-256 and origin instead. Keep "
        "it ~16 KiB below the dead-letter topic's max.message.bytes.",
    )
    focus_projector_processes: int = Field(
        1, ge=1, le=64, description="Projector worker processes `focus project` runs on this "
        "machine (one per core; more than the partitions leaves some idle). 1: no supervisor.",
    )
    focus_projector_metrics_port: int = Field(
        9465, ge=0, le=65535, description="Port of the projector's `/metrics` and `/healthz` "
        "(every interface; with --processes N the supervisor serves all workers). 0: metrics "
        "and health off.",
    )
    focus_projector_health_window_s: float = Field(
        60.0, gt=0, le=86_400, description="`/healthz` turns 503 when the projector has not "
        "polled for this long, or has lag and has committed nothing for this long.",
    )
    focus_replay_memory: str = Field(
        "1GiB", description="Resident memory `focus replay` may use, all its processes "
        "together (e.g. 1GiB, 512MiB); `--memory` overrides it.",
    )

    @field_validator("focus_replay_memory")
    @classmethod
    def _a_size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def replay_memory_bytes(self) -> int:
        return parse_size(self.focus_replay_memory)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"512MiB"``, ``"800MB"``, ``"1073741824"`` -> bytes."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = found.group(2).lower() if found else None
    if found is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (say 1GiB, 512MiB or a number of bytes)")
    return int(float(found.group(1)) * _UNITS[unit])


def from_environment(kind: type[S], **overrides: Any) -> S:
    """``kind(**overrides)`` read from the environment; on invalid settings, exit with status 2
    and one line per variable saying what is wrong (a command's user needs no traceback)."""
    try:
        return kind(**overrides)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"]).upper()
            where = f"{name}: " if name else ""
            print(f"error: {where}{error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        raise SystemExit(2) from None
