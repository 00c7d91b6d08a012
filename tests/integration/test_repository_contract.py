"""The repository contract (``tests/unit/test_repository_contract.py``) against PostgreSQL:
what holds here holds for the in-memory store the projector's unit tests run on."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from focus_sessions.migrate import migrate
from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.readmodels.sessions import SESSION_COLUMNS, SESSION_EVENT_COLUMNS
from focus_sessions.projections.readmodels.user_totals import TABLE as USER_TOTALS
from focus_sessions.projections.repository import ProjectionRepository
from tests.support.fakes import Snapshot
from tests.unit.test_repository_contract import Backend, RepositoryContract


class PostgresBackend:
    def __init__(self, url: str) -> None:
        self.url = url
        self.repository = ProjectionRepository()

    async def connect(self) -> Any:
        return await psycopg.AsyncConnection.connect(self.url)

    async def snapshot(self) -> Snapshot:
        async with await self.connect() as conn:
            async def rows(query: str) -> list[tuple[Any, ...]]:
                found: list[tuple[Any, ...]] = await (await conn.execute(query)).fetchall()
                return found

            return Snapshot(
                positions={(t, p): o for t, p, o in await rows(
                    "SELECT topic, kafka_partition, next_offset FROM projector_positions")},
                events={(r[0], r[1]): r for r in await rows(
                    f"SELECT {', '.join(SESSION_EVENT_COLUMNS)} FROM session_events")},
                sessions={r[0]: SessionRow(*r) for r in await rows(
                    f"SELECT {', '.join(SESSION_COLUMNS)} FROM focus_sessions")},
                totals={r[0]: r[1:] for r in await rows(
                    f"SELECT {', '.join(USER_TOTALS.columns)} FROM focus_user_stats")},
                weekly={(u, w): (e, c, s) for u, w, e, c, s in await rows(
                    "SELECT user_id, week_start, sessions_ended, sessions_completed,"
                    " focus_seconds FROM focus_user_weekly")},
                unstorable={(t, p, o): (e, s, d) for t, p, o, e, s, d in await rows(
                    "SELECT topic, kafka_partition, kafka_offset, event_id, session_id, detail"
                    " FROM unstorable_events")})


class TestPostgresRepository(RepositoryContract):
    @pytest.fixture
    def backend(self, fresh_database: str) -> Backend:
        migrate(fresh_database)
        return PostgresBackend(fresh_database)
