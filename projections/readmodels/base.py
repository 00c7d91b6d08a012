"""What a read model is, for the code that loops over them (:mod:`.` is the registry).

A :class:`Table` names one table: its columns in order, their PostgreSQL types (binary COPY
needs them), its key, and whether its rows belong to one user (``focus replay --users`` swaps
such tables row by row; the others whole).

A :class:`Rollup` is a read model defined as a sum over ``focus_sessions`` rows: each session
contributes to some keys, so a change of one row from ``old`` to ``new`` moves the rollup by
``contribution(new) - contribution(old)``. One class owns everything the projector, the replay,
the diff and ``focus verify`` need of it:

- ``change`` (live: the pure delta of one row's change, accumulated over a batch) and ``apply``
  (its SQL: add a batch's deltas to the stored rows, inside the batch's transaction);
- ``add``/``merge``/``records`` (replay: sums built in memory by the bulk workers,
  staged by binary COPY), ``load_staged`` (the staged partial sums added up in SQL into the
  first table) and ``finish_bulk`` for what is derived in SQL after the load;
- ``expected`` (verify: the tables recomputed from every session row, to compare with what is
  stored), and ``swap_users`` (a ``--users`` replay's swap).

Pure parts take no connection; the SQL parts take a cursor inside the caller's transaction and
compose identifiers with :mod:`psycopg.sql` only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from psycopg import AsyncConnection, sql

from focus_sessions.projections.fold import SessionRow


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    #: The primary key: the first ``len(key)`` columns, in this order.
    key: tuple[str, ...]
    #: Rows belong to one user (``user_id`` column): ``--users`` replays swap them row by row.
    per_user: bool = True

    def __post_init__(self) -> None:
        assert len(self.columns) == len(self.types)
        assert self.columns[: len(self.key)] == self.key

    def at(self, schema: str) -> sql.Identifier:
        return sql.Identifier(schema, self.name)

    def column_list(self) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, self.columns))

    def copy_into(self, schema: str) -> sql.Composed:
        """Binary COPY of whole rows into this table of ``schema``."""
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            self.at(schema), self.column_list())


#: A rollup's sums in memory, by key (a batch's deltas, or a replay's totals).
Sums = dict[Any, Any]


class Rollup(ABC):
    """A read model that is a sum of per-session contributions (see the module's text)."""

    #: Short name: the key of its sums in a plan and in a replay's state.
    name: ClassVar[str]
    #: Its tables; the first holds the sums by key. Tables after it are derived from the first
    #: in SQL (kept live by ``apply``, rebuilt by ``finish_bulk``).
    tables: ClassVar[tuple[Table, ...]]
    #: Columns of the first table that combine by maximum; every other non-key column is a sum.
    greatest: ClassVar[tuple[str, ...]] = ()

    # -- live --------------------------------------------------------------------------------

    @abstractmethod
    def change(self, sums: Sums, old: SessionRow | None, new: SessionRow | None) -> None:
        """Accumulate into ``sums`` how one session's row changing from ``old`` to ``new``
        moves this rollup (either may be ``None``: no row)."""

    @abstractmethod
    async def apply(self, cur: Any, schema: str, sums: Sums) -> None:
        """Add a batch's ``sums`` to the stored rows of ``schema`` (the caller's transaction);
        rows whose sums fall to nothing are deleted, as a recomputation would not have them."""

    # -- replay ------------------------------------------------------------------------------

    def add(self, sums: Sums, row: SessionRow) -> None:
        """Add one session's whole contribution (a replay derives each session once)."""
        self.change(sums, None, row)

    @abstractmethod
    def merge(self, into: Sums, other: Sums) -> None:
        """Add the sums of another worker."""

    @abstractmethod
    def records(self, sums: Sums) -> Iterator[tuple[Any, ...]]:
        """Rows of the first table, in its column order, sorted by key."""

    async def load_staged(self, cur: Any, schema: str, staged: sql.Identifier) -> None:
        """Add up partial sums staged in ``staged`` (rows shaped like the first table, any
        number per key) into the first table of ``schema``, which holds none of those keys."""
        table = self.tables[0]
        keys = sql.SQL(", ").join(map(sql.Identifier, table.key))
        combined = sql.SQL(", ").join(
            sql.SQL("{}({})").format(sql.SQL("max" if c in self.greatest else "sum"),
                                     sql.Identifier(c))
            for c in table.columns[len(table.key):])
        await cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {}, {} FROM {} GROUP BY {}").format(
            table.at(schema), table.column_list(), keys, combined, staged, keys))

    async def finish_bulk(self, cur: Any, schema: str) -> None:  # noqa: B027 (optional hook)
        """After every worker loaded its rows: derive the other tables in SQL (none here)."""

    # -- verify ------------------------------------------------------------------------------

    def expected(self, rows: Iterable[SessionRow]) -> dict[str, list[tuple[Any, ...]]]:
        """Every table of this rollup recomputed from ``rows`` (all sessions), by table name."""
        sums: Sums = {}
        for row in rows:
            self.add(sums, row)
        return {self.tables[0].name: list(self.records(sums))}

    # -- a --users replay's swap -------------------------------------------------------------

    async def swap_users(self, conn: AsyncConnection[Any], live: str, shadow: str,
                         users: Sequence[str]) -> None:
        """Replace the named users' rows of ``live`` with the shadow's."""
        for table in self.tables:
            await replace_users(conn, table, live, shadow, users)


async def replace_users(conn: AsyncConnection[Any], table: Table, live: str, shadow: str,
                        users: Sequence[str]) -> None:
    """Delete the users' rows of ``live.table`` and insert the shadow's (a per-user table)."""
    assert table.per_user
    await conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = ANY(%s)").format(
        table.at(live)), (list(users),))
    await conn.execute(sql.SQL("INSERT INTO {} ({cols}) SELECT {cols} FROM {}").format(
        table.at(live), table.at(shadow), cols=table.column_list()))


def add_into(into: dict[Any, Any], changes: Mapping[Any, Any]) -> None:
    """``into[k] += v`` for every change (values with ``+`` and truthiness: zero is dropped)."""
    for key, change in changes.items():
        total = into[key] + change if key in into else change
        if total:
            into[key] = total
        else:
            into.pop(key, None)
