"""SQL write of weekly deltas into ``focus_user_weekly`` (inside the caller's transaction).

The live projector calls :func:`apply_weekly` from ``ProjectionRepository.write`` with the deltas
that :func:`focus_sessions.projections.weekly.delta` planned; the replay calls it during its
catch-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import sql

from focus_sessions.projections.staging import stage
from focus_sessions.projections.weekly import WeekDelta, WeekKey

WEEKLY_TABLE = "focus_user_weekly"
WEEKLY_COLUMNS = ("user_id", "week_start", "sessions_ended", "sessions_completed", "focus_seconds")
WEEKLY_TYPES = ("varchar", "date", "int8", "int8", "numeric")


async def apply_weekly(cur: Any, schema: str, deltas: Mapping[WeekKey, WeekDelta]) -> None:
    """Add ``deltas`` to the weekly rows of ``schema``; delete weeks left with no ended session.
    The deltas are staged by binary COPY (:mod:`focus_sessions.projections.staging`), as the totals
    are."""
    if not deltas:
        return
    table = sql.Identifier(schema, WEEKLY_TABLE)
    await stage(cur, table, "focus_user_weekly_batch", WEEKLY_COLUMNS, WEEKLY_TYPES, (
        (user, week, d.sessions_ended, d.sessions_completed, d.focus_seconds)
        # sorted: a stable lock order, as for the per-user totals
        for (user, week), d in sorted(deltas.items())))
    await cur.execute(sql.SQL(
        "INSERT INTO {t} AS w (user_id, week_start, sessions_ended, sessions_completed,"
        " focus_seconds)"
        " SELECT user_id, week_start, sessions_ended, sessions_completed, focus_seconds"
        " FROM focus_user_weekly_batch ORDER BY user_id, week_start"
        " ON CONFLICT (user_id, week_start) DO UPDATE SET"
        " sessions_ended = w.sessions_ended + EXCLUDED.sessions_ended,"
        " sessions_completed = w.sessions_completed + EXCLUDED.sessions_completed,"
        " focus_seconds = w.focus_seconds + EXCLUDED.focus_seconds"
    ).format(t=table))
    await cur.execute(sql.SQL(
        "DELETE FROM {t} w USING focus_user_weekly_batch b"
        " WHERE w.user_id = b.user_id AND w.week_start = b.week_start AND w.sessions_ended = 0"
    ).format(t=table))
