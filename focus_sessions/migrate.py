"""Apply the versioned SQL in ``migrations/`` once, in order, under an advisory lock.

Two starters (say, two projector replicas booting at once) serialise on the lock; the second
finds everything applied. Each file runs in its own transaction together with its history row,
so a failed migration leaves no trace. Applied files must not change: a checksum mismatch stops
start-up instead of silently diverging from the files in the repository.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

#: Arbitrary but fixed: the key of the advisory lock all migrators take.
LOCK_KEY = 0x466F637573  # "Focus"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def available() -> list[Migration]:
    """Every migration shipped in the ``migrations`` package, ordered by version."""
    found = []
    for entry in resources.files("focus_sessions.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def migrate(url: str, schema: str = "public") -> list[Migration]:
    """Bring the database at ``url`` up to date; return the migrations applied now."""
    applied_now: list[Migration] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            history = sql.Identifier(schema, "schema_migrations")
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (version INT PRIMARY KEY, name TEXT NOT NULL,"
                    " checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                ).format(history)
            )
            done: dict[int, str] = dict(
                conn.execute(sql.SQL("SELECT version, checksum FROM {}").format(history)).fetchall()
            )
            for migration in available():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name}.sql changed "
                            "after it was applied; add a new migration instead of editing it"
                        )
                    continue
                with conn.transaction():
                    conn.execute(
                        sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
                    )
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)")
                        .format(history),
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now
