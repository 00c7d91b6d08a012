"""The registry of read models: the one list the projector, the replay, its diff and swap, and
``focus verify`` loop over. Adding a read model is one module here and one migration.

- :mod:`.sessions` — ``focus_sessions`` and ``session_events``: the fold's rows and every
  accepted event (written by :mod:`focus_sessions.projections.repository`);
- the rollups, sums over ``focus_sessions`` (:class:`.base.Rollup`): :mod:`.user_totals`
  (``focus_user_stats``), :mod:`.weekly` (``focus_user_weekly``), :mod:`.daily`
  (``focus_daily_users``, ``focus_daily_totals``).

``projector_positions`` and ``unstorable_events`` are not read models of the log but travel with
them: positions are written in the same transaction and swapped with the tables; the record of
unstorable events is carried over by a swap.
"""

from __future__ import annotations

from focus_sessions.projections.readmodels import daily, sessions, user_totals, weekly
from focus_sessions.projections.readmodels.base import Rollup, Table

#: Every rollup, in the order a batch writes them (its lock order).
ROLLUPS: tuple[Rollup, ...] = (user_totals.MODEL, weekly.MODEL, daily.MODEL)

#: Read-model tables, in the order the live projector first touches them (a swap's lock order).
TABLES: tuple[Table, ...] = (
    sessions.EVENTS, sessions.SESSIONS, *(t for r in ROLLUPS for t in r.tables),
)
POSITIONS = "projector_positions"
UNSTORABLE = "unstorable_events"
#: Tables a replay's bulk phase loads with their indexes stripped (built after the load): the
#: sessions' tables and each rollup's sums.
BULK_LOADED = (sessions.EVENTS.name, sessions.SESSIONS.name, *(r.tables[0].name for r in ROLLUPS))


def table(name: str) -> Table:
    return next(t for t in TABLES if t.name == name)


__all__ = ["BULK_LOADED", "POSITIONS", "ROLLUPS", "TABLES", "UNSTORABLE", "Rollup", "Table",
           "table"]
