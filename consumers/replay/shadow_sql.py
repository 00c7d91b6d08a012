"""SQL of a replay: shadow positions and rollups, locking the live tables, and the swap.

The swap moves whole tables between schemas (``ALTER TABLE ... SET SCHEMA``) inside one
transaction that holds ACCESS EXCLUSIVE locks on the live tables. A statement that was waiting
for one of those locks re-resolves the table name once it gets the lock, so the live projector
and the API continue on the new tables; prepared statements are re-planned on the same signal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from focus_sessions.projections.readmodels import (
    BULK_LOADED,
    POSITIONS,
    ROLLUPS,
    TABLES,
    UNSTORABLE,
)
from focus_sessions.projections.readmodels.base import replace_users
from focus_sessions.projections.readmodels.sessions import EVENTS, SESSIONS

#: The tables, in the order the live projector first touches them (the swap's lock order).
LOCK_ORDER = (EVENTS.name, POSITIONS, *(t.name for t in TABLES if t is not EVENTS))


class NotSwappable(RuntimeError):
    """The shadow and live schemas differ in a way a swap would break; says what to do."""


def _t(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


#: What a swap moves: the registry's read models, the positions and the record of unstorable
#: events. Any other table in the schema (an operator's, a ledger) stays where it is.
SWAPPED = (*LOCK_ORDER, UNSTORABLE)


async def tables(conn: AsyncConnection[Any], schema: str) -> list[str]:
    """The tables of :data:`SWAPPED` that ``schema`` has, in lock order."""
    cur = await conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
        (schema, list(SWAPPED)))
    found = {name for (name,) in await cur.fetchall()}
    return [t for t in SWAPPED if t in found]


async def positions(conn: AsyncConnection[Any], schema: str, topic: str) -> dict[int, int]:
    cur = await conn.execute(
        sql.SQL("SELECT kafka_partition, next_offset FROM {} WHERE topic = %s")
        .format(_t(schema, POSITIONS)), (topic,))
    return dict(await cur.fetchall())


async def set_positions(
    conn: AsyncConnection[Any], schema: str, topic: str, ends: Mapping[int, int],
    last_times: Mapping[int, datetime],
) -> None:
    """The bulk phase's result: every partition at the end offset it was read to."""
    parts = sorted(ends)
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (topic, kafka_partition, next_offset, last_event_time)"
            " SELECT %s, * FROM unnest(%s::int[], %s::bigint[], %s::timestamptz[])"
        ).format(_t(schema, POSITIONS)),
        (topic, parts, [ends[p] for p in parts], [last_times.get(p) for p in parts]),
    )


async def strip_indexes(conn: AsyncConnection[Any], schema: str) -> dict[str, list[list[str]]]:
    """Drop the bulk tables' indexes and keys in ``schema``; return, per table, ``[name,
    statement]`` pairs that recreate them exactly (a sorted build is several times cheaper than
    row by row).

    Partial indexes stay: they hold the few rows their predicate picks (held and contradicting
    events), so keeping one during the load costs a predicate per row, while building it
    afterwards reads the whole table, at the end of the bulk phase, when nothing overlaps it
    (~0.15 s for 1,000,000 events)."""
    cur = await conn.execute(
        "SELECT c.relname, k.conname,"
        " 'ALTER TABLE ' || %s || '.' || quote_ident(c.relname) ||"
        " ' ADD CONSTRAINT ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid),"
        " 'ALTER TABLE ' || %s || '.' || quote_ident(c.relname) || ' DROP CONSTRAINT '"
        " || quote_ident(k.conname)"
        " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s)"
        " AND k.contype IN ('p', 'u')"
        " UNION ALL SELECT c.relname, x.relname, pg_get_indexdef(i.indexrelid),"
        " 'DROP INDEX ' || %s || '.' || quote_ident(x.relname)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_class x ON x.oid = i.indexrelid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        " AND i.indpred IS NULL",
        (*[sql.Identifier(schema).as_string(conn)] * 2, schema, list(BULK_LOADED),
         sql.Identifier(schema).as_string(conn), schema, list(BULK_LOADED)),
    )
    recreate: dict[str, list[list[str]]] = {}
    for table, name, create, drop in await cur.fetchall():
        await conn.execute(drop.encode())
        recreate.setdefault(table, []).append([name, create])
    return recreate


async def restore_indexes(conn: AsyncConnection[Any], schema: str,
                          statements: Sequence[Sequence[str]]) -> None:
    """Run each ``[name, statement]`` whose index is not there yet (a resumed replay may have
    built some before it was killed; each statement commits on its own)."""
    await conn.execute("SET maintenance_work_mem = '256MB'")
    for name, statement in statements:
        cur = await conn.execute(
            "SELECT 1 FROM pg_class WHERE relnamespace = %s::regnamespace AND relname = %s",
            (schema, name))
        if await cur.fetchone() is None:
            await conn.execute(statement.encode())


async def lock_live(
    conn: AsyncConnection[Any], schema: str, names: Sequence[str], mode: str, timeout_ms: int
) -> None:
    """Lock the live tables, waiting at most ``timeout_ms`` (raises ``LockNotAvailable``).

    The wait is kept below PostgreSQL's ``deadlock_timeout`` (1 s by default): if a reader that
    holds one of the tables queues behind a lock we already hold, we give up first, so the
    deadlock detector never has to cancel the reader. The caller retries.
    """
    assert mode in ("EXCLUSIVE", "ACCESS EXCLUSIVE")
    await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(timeout_ms)))
    await conn.execute(
        sql.SQL("LOCK TABLE {} IN " + mode + " MODE").format(
            sql.SQL(", ").join(_t(schema, n) for n in names)
        )
    )
    await conn.execute("SET LOCAL lock_timeout = 0")


async def check_swappable(
    conn: AsyncConnection[Any], live: str, shadow: str, names: Sequence[str]
) -> None:
    """Refuse a swap that would silently break something, with what to do instead."""
    missing = [n for n in names if n not in await tables(conn, live)]
    if missing:
        raise NotSwappable(f"live schema {live!r} lacks {missing}: run `focus migrate` first")
    versions = []
    for schema in (live, shadow):
        cur = await conn.execute(sql.SQL(
            "SELECT coalesce(array_agg(version ORDER BY version), '{{}}') FROM {}"
        ).format(_t(schema, "schema_migrations")))
        versions.append((await cur.fetchone() or [[]])[0])
    if versions[0] != versions[1]:
        raise NotSwappable(f"migrations differ: live {versions[0]}, shadow {versions[1]}; "
                           "migrate the live schema, then replay again")
    cur = await conn.execute(
        "SELECT DISTINCT v.relname FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid"
        " JOIN pg_class v ON v.oid = r.ev_class JOIN pg_class t ON t.oid = d.refobjid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = %s AND t.relname = ANY(%s) AND v.oid <> t.oid",
        (live, list(names)))
    views = [name for (name,) in await cur.fetchall()]
    if views:
        raise NotSwappable(f"views {views} depend on the live tables and would keep pointing at "
                           "the old ones; drop them before the swap and recreate them after")


async def swap_schemas(
    conn: AsyncConnection[Any], live: str, shadow: str, retired: str, names: Sequence[str],
    topic: str,
) -> None:
    """Move the live tables to ``retired`` and the shadow tables into ``live`` (one transaction).

    Positions of *other* topics stored in the live table are carried over first, and so is the
    record of events the live projector found unstorable (the replay skipped the same ones).
    """
    await conn.execute(
        sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE topic <> %s").format(
            _t(shadow, POSITIONS), _t(live, POSITIONS)), (topic,))
    if UNSTORABLE in names:  # the live projector's record of what it could not store
        await conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT DO NOTHING").format(
                _t(shadow, UNSTORABLE), _t(live, UNSTORABLE)))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(retired)))
    for name in names:
        await copy_grants(conn, _t(live, name), _t(shadow, name))
        await conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
            _t(live, name), sql.Identifier(retired)))
        await conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
            _t(shadow, name), sql.Identifier(live)))


#: Table privileges GRANT accepts (``aclexplode`` names them the same way); anything else in an
#: ACL is refused rather than composed into SQL.
TABLE_PRIVILEGES = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN",
})
#: The privileges PostgreSQL grants on single columns.
COLUMN_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "REFERENCES"})

#: Every grant on a table and on its columns (``column`` is NULL for the table's own ACL), the
#: owner's implicit rights excluded.
_GRANTS = """
SELECT NULL::name, a.privilege_type, a.grantee = 0, coalesce(r.rolname, ''), a.is_grantable
  FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE c.oid = %(t)s::regclass AND a.grantee <> c.relowner
UNION ALL
SELECT att.attname, a.privilege_type, a.grantee = 0, coalesce(r.rolname, ''), a.is_grantable
  FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid,
       aclexplode(att.attacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE c.oid = %(t)s::regclass AND NOT att.attisdropped AND a.grantee <> c.relowner
"""


async def copy_grants(conn: AsyncConnection[Any], source: sql.Identifier,
                      target: sql.Identifier) -> None:
    """Give ``target`` the owner of ``source`` and every privilege others hold on it.

    The shadow tables are new: without this, a least-privilege API role that may SELECT the
    live tables (or some of their columns) would be refused on the swapped-in ones, and a
    replay run by another role than the owner would leave the tables owned by that role. When
    the replay's role may not give the tables to the owner, the swap fails and nothing moves.
    """
    owners = await conn.execute(
        "SELECT pg_get_userbyid(s.relowner), pg_get_userbyid(t.relowner)"
        " FROM pg_class s, pg_class t WHERE s.oid = %s::regclass AND t.oid = %s::regclass",
        (source.as_string(conn), target.as_string(conn)))
    row = await owners.fetchone()
    assert row is not None  # both tables exist: the swap just listed them
    if row[0] != row[1]:
        await conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            target, sql.Identifier(row[0])))
    cur = await conn.execute(_GRANTS, {"t": source.as_string(conn)})
    for column, privilege, public, role, grantable in await cur.fetchall():
        allowed = TABLE_PRIVILEGES if column is None else COLUMN_PRIVILEGES
        if privilege not in allowed:
            raise NotSwappable(f"unknown privilege {privilege!r} on {source.as_string(conn)}")
        await conn.execute(sql.SQL("GRANT {}{} ON {} TO {}{}").format(
            sql.SQL(privilege),
            sql.SQL("") if column is None else sql.SQL(" ({})").format(sql.Identifier(column)),
            target, sql.SQL("PUBLIC") if public else sql.Identifier(role),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))


async def swap_users(
    conn: AsyncConnection[Any], live: str, shadow: str, users: Sequence[str],
    names: Iterable[str],
) -> None:
    """Replace only the named users' rows in every read model (positions stay): the sessions'
    tables row by row, each rollup as it knows how (org-wide sums are recomputed)."""
    present = set(names)
    for table in (EVENTS, SESSIONS):
        await replace_users(conn, table, live, shadow, users)
    for rollup in ROLLUPS:
        if all(t.name in present for t in rollup.tables):
            await rollup.swap_users(conn, live, shadow, users)


async def drop_schema(conn: AsyncConnection[Any], schema: str) -> None:
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
