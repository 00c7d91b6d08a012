"""Compare the shadow tables with the live ones: row counts, differing keys, a few examples.

Run inside one REPEATABLE READ transaction after the shadow has been caught up to the live
positions read in that transaction, so both sides describe the same prefix of the log and every
difference is a real one (a bug fixed, a corrupted row, a new rollup), not lag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql

from focus_sessions.projections.readmodels import TABLES, Table


@dataclass(frozen=True, slots=True)
class Example:
    key: tuple[Any, ...]
    kind: str  # "only live" | "only shadow" | "differs"
    #: column -> (live value, shadow value), for rows on both sides
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        key = ", ".join(str(k) for k in self.key)
        if not self.columns:
            return f"({key}): {self.kind}"
        changes = "; ".join(f"{c}: {a!r} -> {b!r}" for c, (a, b) in self.columns.items())
        return f"({key}): {changes}"


@dataclass(frozen=True, slots=True)
class TableDiff:
    table: str
    live_rows: int
    shadow_rows: int
    only_live: int
    only_shadow: int
    differing: int
    examples: list[Example]

    @property
    def clean(self) -> bool:
        return not (self.only_live or self.only_shadow or self.differing)


@dataclass(frozen=True, slots=True)
class ReplayDiff:
    tables: list[TableDiff]

    @property
    def clean(self) -> bool:
        return all(t.clean for t in self.tables)

    def table(self, name: str) -> TableDiff:
        return next(t for t in self.tables if t.table == name)


async def diff(
    conn: AsyncConnection[Any], live: str, shadow: str, *, users: Sequence[str] | None = None,
    examples: int = 5, tables: Sequence[Table] = TABLES,
) -> ReplayDiff:
    """Differences between ``live`` and ``shadow``, table by table. With ``users``, only
    their rows, in the tables whose rows belong to users (org-wide sums are not compared)."""
    return ReplayDiff([await _table(conn, live, shadow, t, users, examples) for t in tables
                       if users is None or t.per_user])


async def _table(
    conn: AsyncConnection[Any], live: str, shadow: str, table: Table,
    users: Sequence[str] | None, examples: int,
) -> TableDiff:
    name, keys = table.name, table.key
    where = sql.SQL("WHERE user_id = ANY(%(users)s)" if users is not None else "")
    params = {"users": list(users or ())}
    joined = sql.SQL(
        "(SELECT * FROM {live} {where}) l FULL JOIN {shadow} s USING ({keys})"
        " WHERE l IS DISTINCT FROM s"
    ).format(live=sql.Identifier(live, name), shadow=sql.Identifier(shadow, name), where=where,
             keys=sql.SQL(", ").join(map(sql.Identifier, keys)))
    first = sql.Identifier(keys[0])
    cur = await conn.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM {live} {where}), (SELECT count(*) FROM {shadow}),"
        " count(*) FILTER (WHERE s.{k} IS NULL), count(*) FILTER (WHERE l.{k} IS NULL),"
        " count(*) FILTER (WHERE l.{k} IS NOT NULL AND s.{k} IS NOT NULL) FROM {joined}"
    ).format(live=sql.Identifier(live, name), shadow=sql.Identifier(shadow, name), where=where,
             k=first, joined=joined), params)
    counts = await cur.fetchone()
    assert counts is not None
    found: list[Example] = []
    if any(counts[2:]) and examples:
        # keys first (a top-N sort of keys), then only those rows as JSON
        cols = sql.SQL(", ").join(map(sql.Identifier, keys))
        cur = await conn.execute(sql.SQL(
            "WITH k AS (SELECT {cols} FROM {joined} ORDER BY {cols} LIMIT %(n)s)"
            " SELECT {cols}, (SELECT to_jsonb(l) FROM {live} l WHERE ({lk}) = ({kk})),"
            " (SELECT to_jsonb(s) FROM {shadow} s WHERE ({sk}) = ({kk})) FROM k ORDER BY {cols}"
        ).format(cols=cols, joined=joined, live=sql.Identifier(live, name),
                 shadow=sql.Identifier(shadow, name),
                 lk=sql.SQL(", ").join(sql.Identifier("l", k) for k in keys),
                 sk=sql.SQL(", ").join(sql.Identifier("s", k) for k in keys),
                 kk=sql.SQL(", ").join(sql.Identifier("k", k) for k in keys)),
            {**params, "n": examples})
        found = [_example(r[: len(keys)], r[-2], r[-1]) for r in await cur.fetchall()]
    live_rows, shadow_rows, only_live, only_shadow, differing = counts
    return TableDiff(name, live_rows, shadow_rows, only_live, only_shadow, differing, found)


def _example(key: tuple[Any, ...], live: dict[str, Any] | None,
             shadow: dict[str, Any] | None) -> Example:
    if live is None:
        return Example(tuple(key), "only shadow")
    if shadow is None:
        return Example(tuple(key), "only live")
    columns = {c: (live[c], shadow.get(c)) for c in live if live[c] != shadow.get(c)}
    return Example(tuple(key), "differs", columns)
