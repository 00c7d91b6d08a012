"""What the projector relies on from its repository, written once (:class:`RepositoryContract`)
and run against the in-memory store here and against PostgreSQL in
``tests/integration/test_repository_contract.py``: the fakes that drive the projector's unit
tests stand for the real tables only as far as this contract says.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Protocol
from uuid import UUID, uuid4

import psycopg
import pytest

from focus_sessions.contracts.codec import upcast
from focus_sessions.contracts.events import Event
from focus_sessions.producers import events as ev
from focus_sessions.projections.batch import Located, Plan, plan, session_ids
from focus_sessions.projections.fold import derive, fact
from focus_sessions.projections.repository import Advance, Fenced, Unstorable
from tests.support.fakes import MemoryRepository, MemoryStore, Snapshot
from tests.unit.histories import T0, minutes, pomodoro

TOPIC = "events"


class Backend(Protocol):
    """A repository and the tables behind it."""

    repository: Any

    async def connect(self) -> Any: ...

    async def snapshot(self) -> Snapshot: ...


@contextlib.asynccontextmanager
async def transaction(backend: Backend, *, force_rollback: bool = False) -> AsyncIterator[Any]:
    async with await backend.connect() as conn, conn.transaction(force_rollback=force_rollback):
        yield conn


async def apply(backend: Backend, events: Sequence[Event], advances: Sequence[Advance] = (),
                *, first_offset: int = 0, insert_new: bool = True,
                unstorable: Sequence[Unstorable] = (), force_rollback: bool = False) -> Plan:
    """One batch as the projector applies it: load the histories, fold, write."""
    batch = [Located(e, 0, first_offset + n) for n, e in enumerate(events)]
    async with transaction(backend, force_rollback=force_rollback) as conn:
        prior = await backend.repository.load_histories(conn, session_ids(batch))
        result = plan(prior, batch)
        await backend.repository.write(conn, TOPIC, result, advances, insert_new=insert_new,
                                       unstorable=unstorable)
    return result


def sid(events: Sequence[Event]) -> UUID:
    return events[0].data.session_id


class RepositoryContract:
    """Run by a subclass that provides the ``backend`` fixture (a fresh, empty store)."""

    async def test_missing_positions_start_at_zero_and_stored_ones_are_kept(
        self, backend: Backend
    ) -> None:
        async with transaction(backend) as conn:
            assert await backend.repository.ensure_positions(conn, TOPIC, [0, 1]) == {0: 0, 1: 0}
        await apply(backend, [], [Advance(1, 0, 7, T0)])
        async with transaction(backend) as conn:
            assert await backend.repository.ensure_positions(conn, TOPIC, [1, 2]) == {1: 7, 2: 0}
        assert (await backend.snapshot()).positions == {
            (TOPIC, 0): 0, (TOPIC, 1): 7, (TOPIC, 2): 0}

    async def test_an_advance_from_another_position_is_fenced_and_stores_nothing(
        self, backend: Backend
    ) -> None:
        async with transaction(backend) as conn:
            await backend.repository.ensure_positions(conn, TOPIC, [0])
        ada, bob = pomodoro("ada"), pomodoro("bob")
        await apply(backend, ada, [Advance(0, 0, 3, T0)])
        with pytest.raises(Fenced):  # a zombie still believes partition 0 is at offset 0
            await apply(backend, bob, [Advance(0, 0, 3, T0)], first_offset=3)

        stored = await backend.snapshot()
        assert stored.positions == {(TOPIC, 0): 3}
        assert set(stored.sessions) == {sid(ada)}
        assert set(stored.totals) == {"ada"}

    async def test_a_rolled_back_batch_leaves_nothing(self, backend: Backend) -> None:
        async with transaction(backend) as conn:
            await backend.repository.ensure_positions(conn, TOPIC, [0])
        await apply(backend, pomodoro("ada"), [Advance(0, 0, 3, T0)], force_rollback=True)

        stored = await backend.snapshot()
        assert stored.positions == {(TOPIC, 0): 0}
        assert (stored.events, stored.sessions, stored.totals, stored.weekly) == ({}, {}, {}, {})

    async def test_stored_events_come_back_as_the_histories_they_were_folded_from(
        self, backend: Backend
    ) -> None:
        ada = pomodoro("ada", interruptions_at=(3, 9), reported=4)
        bob = pomodoro("bob", end_at=None)
        s = uuid4()
        eve = [ev.started("eve", T0, session_id=s),  # and a v1 end, upcast as decoding does
               upcast(ev.ended_v1("eve", s, minutes(20), completed=False))]
        folded = await apply(backend, ada + bob + eve)
        async with transaction(backend) as conn:
            loaded = await backend.repository.load_histories(conn, [sid(ada), sid(bob), s])

        def described(events: Any) -> set[tuple[Any, ...]]:
            return {(e.id, e.source, e.time, fact(e)) for e in events}

        assert {k: described(h.events.values()) for k, h in loaded.items()} == {
            k: described(h.events.values()) for k, h in folded.histories.items()}
        stored = await backend.snapshot()
        assert stored.sessions == {k: derive(h).row for k, h in loaded.items()}

    async def test_a_start_arriving_late_applies_the_held_events(self, backend: Backend) -> None:
        start, interruption, end = pomodoro("ada")
        await apply(backend, [interruption, end])
        held = await backend.snapshot()
        assert {row[4] for row in held.events.values()} == {"held"}
        assert held.sessions == {}

        await apply(backend, [start], first_offset=2)
        stored = await backend.snapshot()
        assert {row[4] for row in stored.events.values()} == {"applied"}
        assert stored.sessions[start.data.session_id].interruption_events == 1
        assert stored.totals["ada"][:3] == (1, 1, 1)  # started, ended, completed

    async def test_totals_and_weeks_add_up_over_batches(self, backend: Backend) -> None:
        first, second = pomodoro("ada"), pomodoro("ada", end_at=10, completed=False)
        await apply(backend, first)
        await apply(backend, second, first_offset=3)
        # a later end of the first session: superseded, it changes nothing
        await apply(backend, [ev.ended("ada", sid(first), minutes(40))], first_offset=6)

        stored = await backend.snapshot()
        focus = sum((r.focus_seconds or 0 for r in stored.sessions.values()), start=0)
        assert focus == 35 * 60
        assert stored.totals["ada"] == (2, 2, 1, focus, 50, 2, T0)
        [(week, (ended, completed, seconds))] = stored.weekly.items()
        assert (week, ended, completed, seconds) == (("ada", T0.date()), 2, 1, focus)

    async def test_a_last_session_start_moved_earlier_is_recomputed(
        self, backend: Backend
    ) -> None:
        session = sid(pomodoro("ada"))
        await apply(backend, [ev.started("ada", T0, session_id=session)])
        # an earlier start of the same session: the row's start moves back
        earlier = T0 - timedelta(minutes=5)
        await apply(backend, [ev.started("ada", earlier, session_id=session)], first_offset=1)
        assert (await backend.snapshot()).totals["ada"][6] == earlier

    async def test_a_new_row_over_a_stored_one_is_refused_unless_upserted(
        self, backend: Backend
    ) -> None:
        session = sid(pomodoro("ada"))
        await apply(backend, [ev.started("ada", T0, session_id=session)])
        # a start the stored history does not hold, planned as if the session had no row
        other = [Located(ev.started("ada", T0, session_id=session, duration_minutes=50), 0, 1)]
        stray = plan({}, other)
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with transaction(backend) as conn:
                await backend.repository.write(conn, TOPIC, stray, ())
        async with transaction(backend) as conn:
            await backend.repository.write(conn, TOPIC, stray, (), insert_new=False)
        assert (await backend.snapshot()).sessions[session].duration_minutes == 50

    async def test_a_transaction_whose_write_failed_commits_nothing(
        self, backend: Backend
    ) -> None:
        session = sid(pomodoro("ada"))
        async with transaction(backend) as conn:
            await backend.repository.ensure_positions(conn, TOPIC, [0])
        await apply(backend, [ev.started("ada", T0, session_id=session)], [Advance(0, 0, 1, T0)])
        before = await backend.snapshot()
        stray = plan({}, [Located(ev.started("ada", T0, session_id=session), 0, 1)])
        async with transaction(backend) as conn:  # the error is caught inside the transaction
            with pytest.raises(psycopg.errors.UniqueViolation):
                await backend.repository.write(conn, TOPIC, stray, [Advance(0, 1, 2, T0)])
        assert await backend.snapshot() == before

    async def test_unstorable_events_are_recorded_once(self, backend: Backend) -> None:
        event = pomodoro("ada")[1]
        refused = Unstorable(2, 5, event.id, event.data.session_id, "DataError: no\x00pe")
        for _ in range(2):  # a batch retried records it again: kept once
            async with transaction(backend) as conn:
                await backend.repository.write(conn, TOPIC, Plan(), (), unstorable=[refused])

        async with transaction(backend) as conn:
            assert await backend.repository.unstorable_positions(conn, TOPIC) == {(2, 5)}
            assert await backend.repository.unstorable_positions(conn, "other") == set()
        assert (await backend.snapshot()).unstorable == {
            (TOPIC, 2, 5): (event.id, event.data.session_id, "DataError: nope")}


class MemoryBackend:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.repository = MemoryRepository()

    async def connect(self) -> Any:
        return await self.store.connect()

    async def snapshot(self) -> Snapshot:
        return self.store.snapshot()


class TestMemoryRepository(RepositoryContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()
