"""Stage a batch's rows in a temporary table by binary COPY, for one set-based upsert after.

Array parameters cost psycopg Python work per element; a temporary copy of the target table
(per connection, emptied at commit) takes the rows at COPY speed instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql


async def stage(
    cur: Any, like: sql.Identifier, name: str, columns: Sequence[str], types: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Load ``rows`` into the temporary table ``name``, shaped like ``like``."""
    await cur.execute(sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ).format(sql.Identifier(name), like))
    async with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, columns)),
    )) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)
