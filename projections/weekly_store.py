"""SQL write of weekly deltas into ``focus_user_weekly`` (inside the caller's transaction).

The live projector calls :func:`apply_weekly` from ``ProjectionRepository.write`` with the deltas
that :func:`projections.weekly.delta` planned; the replay calls it during its catch-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import sql

from projections.weekly import WeekDelta, WeekKey

WEEKLY_TABLE = "focus_user_weekly"


async def apply_weekly(cur: Any, schema: str, deltas: Mapping[WeekKey, WeekDelta]) -> None:
    """Add ``deltas`` to the weekly rows of ``schema``; delete weeks left with no ended session."""
    if not deltas:
        return
    keys = sorted(deltas)  # a stable lock order, as for the per-user totals
    users = [user for user, _ in keys]
    weeks = [week for _, week in keys]
    table = sql.Identifier(schema, WEEKLY_TABLE)
    await cur.execute(
        sql.SQL(
            "INSERT INTO {t} AS w (user_id, week_start, sessions_ended, sessions_completed,"
            " focus_seconds)"
            " SELECT * FROM unnest(%b::text[], %b::date[], %b::bigint[], %b::bigint[],"
            " %b::numeric[])"
            " ON CONFLICT (user_id, week_start) DO UPDATE SET"
            " sessions_ended = w.sessions_ended + EXCLUDED.sessions_ended,"
            " sessions_completed = w.sessions_completed + EXCLUDED.sessions_completed,"
            " focus_seconds = w.focus_seconds + EXCLUDED.focus_seconds"
        ).format(t=table),
        (
            users,
            weeks,
            [deltas[k].sessions_ended for k in keys],
            [deltas[k].sessions_completed for k in keys],
            [deltas[k].focus_seconds for k in keys],
        ),
    )
    await cur.execute(
        sql.SQL(
            "DELETE FROM {t} WHERE sessions_ended = 0"
            " AND (user_id, week_start) IN (SELECT * FROM unnest(%b::text[], %b::date[]))"
        ).format(t=table),
        (users, weeks),
    )
