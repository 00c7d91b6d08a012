"""SQL of ``focus verify``: the rollup recomputed from ``focus_sessions`` by its definition."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql

#: Users whose stored rollup differs from the aggregate of their sessions (either side missing
#: counts too). Placeholders: ``sessions``, ``stats`` (schema-qualified identifiers).
ROLLUP_MISMATCHES = sql.SQL("""
WITH recomputed AS (
    SELECT user_id,
           count(*) AS sessions_started,
           count(ended_at) AS sessions_ended,
           count(*) FILTER (WHERE ended_at IS NOT NULL AND completed) AS sessions_completed,
           coalesce(sum(focus_seconds) FILTER (WHERE ended_at IS NOT NULL), 0)
               AS total_focus_seconds,
           coalesce(sum(duration_minutes), 0) AS total_planned_minutes,
           coalesce(sum(interruptions), 0) AS total_interruptions,
           max(started_at) AS last_session_at
    FROM {sessions} GROUP BY user_id
)
SELECT coalesce(r.user_id, s.user_id),
       CASE WHEN s.user_id IS NULL THEN 'no row' ELSE
           format('started=%s ended=%s completed=%s focus_seconds=%s planned=%s'
                  ' interruptions=%s last=%s', s.sessions_started, s.sessions_ended,
                  s.sessions_completed, s.total_focus_seconds, s.total_planned_minutes,
                  s.total_interruptions, s.last_session_at) END,
       CASE WHEN r.user_id IS NULL THEN 'no sessions' ELSE
           format('started=%s ended=%s completed=%s focus_seconds=%s planned=%s'
                  ' interruptions=%s last=%s', r.sessions_started, r.sessions_ended,
                  r.sessions_completed, r.total_focus_seconds, r.total_planned_minutes,
                  r.total_interruptions, r.last_session_at) END
FROM recomputed r
FULL JOIN {stats} s USING (user_id)
WHERE (r.sessions_started, r.sessions_ended, r.sessions_completed, r.total_focus_seconds,
       r.total_planned_minutes, r.total_interruptions, r.last_session_at)
      IS DISTINCT FROM
      (s.sessions_started, s.sessions_ended, s.sessions_completed, s.total_focus_seconds,
       s.total_planned_minutes, s.total_interruptions, s.last_session_at)
ORDER BY 1
""")


def rollup_check(schema: str) -> sql.Composed:
    """The rollup check for the tables of ``schema``: one row per mismatching user
    (user, stored, recomputed)."""
    return ROLLUP_MISMATCHES.format(sessions=sql.Identifier(schema, "focus_sessions"),
                                    stats=sql.Identifier(schema, "focus_user_stats"))


async def table_exists(conn: AsyncConnection[Any], schema: str, table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                             (sql.Identifier(schema, table).as_string(conn),))
    found = await cur.fetchone()
    return bool(found and found[0])
