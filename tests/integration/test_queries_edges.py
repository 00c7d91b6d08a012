"""The API's read queries (``focus_sessions.projections.queries.ReadQueries``) at their edges,
against a
migrated PostgreSQL database filled through the real fold and repository."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import pytest

from focus_sessions.contracts.events import Event
from focus_sessions.migrate import migrate
from focus_sessions.producers import events as ev
from focus_sessions.projections.batch import Located, Plan, plan
from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.queries import (
    Cursor,
    DayBucket,
    Freshness,
    Position,
    ReadQueries,
    SessionPage,
    UserTotals,
)
from focus_sessions.projections.repository import Advance, ProjectionRepository

TOPIC = "focus.session.events"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
Conn = psycopg.AsyncConnection


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def session(
    user: str, start: datetime, *, end_after: float | None = 25, completed: bool = True,
    interruptions: int = 0, time_zone: str | None = "Europe/Paris", planned: int = 25,
    session_id: UUID | None = None,
) -> list[Event]:
    """One session's events: a start, ``interruptions`` interruptions, an end after
    ``end_after`` minutes (none if ``None``)."""
    sid = session_id or uuid4()
    events: list[Event] = [ev.started(user, start, session_id=sid, time_zone=time_zone,
                                      duration_minutes=planned)]
    events += [ev.interrupted(user, sid, start + timedelta(minutes=1 + n), reason="phone")
               for n in range(interruptions)]
    if end_after is not None:
        events.append(ev.ended(user, sid, start + timedelta(minutes=end_after),
                               completed=completed))
    return events


async def project(
    conn: Conn, events: Sequence[Event], *, partition: int = 0, topic: str = TOPIC,
    schema: str = "public",
) -> Plan:
    """Project ``events`` as the next records of ``topic[partition]``, as the projector does:
    fold with the stored histories, then one transaction that also moves the position."""
    repo = ProjectionRepository(schema)
    async with conn.transaction():
        expected = (await repo.ensure_positions(conn, topic, [partition]))[partition]
        prior = await repo.load_histories(conn, list({e.data.session_id for e in events}))
        batch = [Located(e, partition, expected + n) for n, e in enumerate(events)]
        planned = plan(prior, batch)
        newest = max(e.time for e in events)
        await repo.write(conn, topic, planned, [
            Advance(partition, expected, expected + len(events), newest)])
    return planned


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[Conn]:
    migrate(fresh_database)
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as c:
        yield c


@pytest.fixture
def reads() -> ReadQueries:
    return ReadQueries(TOPIC)


async def all_pages(reads: ReadQueries, conn: Conn, user: str, limit: int) -> list[SessionPage]:
    """Walk the pages as an API client does: the cursor goes out as text and comes back."""
    pages = [await reads.sessions(conn, user, limit, None)]
    while pages[-1].next_cursor is not None:
        token = pages[-1].next_cursor.encode()
        pages.append(await reads.sessions(conn, user, limit, Cursor.decode(token)))
        assert len(pages) < 50, "the cursor does not advance"
    return pages


# --- nothing projected yet ------------------------------------------------------------------


async def test_an_empty_projection_reads_as_nothing_and_no_freshness(
    conn: Conn, reads: ReadQueries
) -> None:
    nothing = Freshness(projected_through=None, positions=[])
    assert await reads.sessions(conn, "nobody", 10, None) == SessionPage([], None, nothing)
    assert await reads.session(conn, uuid4()) == (None, nothing)
    assert await reads.totals(conn, "nobody") == (
        UserTotals(0, 0, 0, Decimal(0), 0, 0, None), nothing)
    assert await reads.latest_time_zone(conn, "nobody") is None
    assert await reads.next_offset(conn, 0) == -1
    assert await reads.days(conn, "nobody", date(2026, 3, 1), date(2026, 3, 2), "UTC") == [
        DayBucket(date(2026, 3, 1), 0, 0, 0, Decimal(0), 0),
        DayBucket(date(2026, 3, 2), 0, 0, 0, Decimal(0), 0),
    ]


# --- pages of sessions ------------------------------------------------------------------------


async def test_pages_walk_a_users_sessions_newest_first_without_gaps_or_repeats(
    conn: Conn, reads: ReadQueries
) -> None:
    ada = [session("ada", at(hours=h)) for h in range(5)]
    grace = [session("grace", at(hours=h, minutes=30)) for h in range(3)]  # interleaved
    await project(conn, [e for s in ada + grace for e in s])

    pages = await all_pages(reads, conn, "ada", limit=2)
    assert [len(p.sessions) for p in pages] == [2, 2, 1]
    newest_first = [s[0].data.session_id for s in reversed(ada)]
    assert [r.session_id for p in pages for r in p.sessions] == newest_first
    assert {r.user_id for p in pages for r in p.sessions} == {"ada"}
    # each cursor points at the last session of its page
    for page in pages[:-1]:
        last = page.sessions[-1]
        assert page.next_cursor == Cursor(last.started_at, last.session_id)


async def test_a_page_that_holds_the_last_session_has_no_next_cursor(
    conn: Conn, reads: ReadQueries
) -> None:
    await project(conn, [e for h in range(4) for e in session("ada", at(hours=h))])
    exact = await reads.sessions(conn, "ada", 4, None)
    assert len(exact.sessions) == 4
    assert exact.next_cursor is None
    pages = await all_pages(reads, conn, "ada", limit=2)
    assert [len(p.sessions) for p in pages] == [2, 2]
    assert pages[-1].next_cursor is None


async def test_sessions_that_start_at_the_same_instant_are_paged_by_session_id(
    conn: Conn, reads: ReadQueries
) -> None:
    ids = [uuid4() for _ in range(4)]
    await project(conn, [e for sid in ids for e in session("ada", T0, session_id=sid)])
    pages = await all_pages(reads, conn, "ada", limit=1)
    assert [r.session_id for p in pages for r in p.sessions] == sorted(ids, reverse=True)


async def test_a_cursor_past_the_oldest_session_gives_an_empty_last_page(
    conn: Conn, reads: ReadQueries
) -> None:
    events = session("ada", T0)
    await project(conn, events)
    before_everything = Cursor(T0 - timedelta(days=1), uuid4())
    page = await reads.sessions(conn, "ada", 10, before_everything)
    assert (page.sessions, page.next_cursor) == ([], None)
    newest = max(e.time for e in events)
    assert page.freshness == Freshness(newest, [Position(0, len(events), newest)])


@pytest.mark.parametrize(
    "token",
    [
        "",
        "%%%not-base64%%%",
        base64.urlsafe_b64encode(b"\xff\xfe|\x80").decode(),  # not UTF-8
        base64.urlsafe_b64encode(b"2026-03-02T09:00:00+00:00").decode(),  # no session id
        base64.urlsafe_b64encode(f"{T0.isoformat()}|{uuid4()}|extra".encode()).decode(),
        base64.urlsafe_b64encode(f"{T0.isoformat()}|not-a-uuid".encode()).decode(),
        base64.urlsafe_b64encode(f"yesterday|{uuid4()}".encode()).decode(),
        Cursor(T0.replace(tzinfo=None), uuid4()).encode(),  # a naive time is not ours
    ],
    ids=["empty", "not-base64", "not-utf8", "one-field", "three-fields", "bad-uuid",
         "bad-time", "naive-time"],
)
def test_a_cursor_this_api_did_not_produce_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match=r"^not a cursor returned by this API$"):
        Cursor.decode(token)


def test_a_cursor_survives_its_text_form_with_any_offset_and_microseconds() -> None:
    started = datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=5.5)))
    cursor = Cursor(started, uuid4())
    token = cursor.encode()
    assert "=" not in token and "/" not in token and "+" not in token  # safe in a query string
    assert Cursor.decode(token) == cursor


# --- one session, freshness -------------------------------------------------------------------


async def test_a_session_reads_back_as_the_very_row_the_fold_wrote(
    conn: Conn, reads: ReadQueries
) -> None:
    events = session("ada", T0, end_after=20, completed=False, interruptions=2)
    planned = await project(conn, events)
    [row] = planned.rows

    found, freshness = await reads.session(conn, row.session_id)
    assert found == row
    assert isinstance(found, SessionRow)
    assert freshness == Freshness(max(e.time for e in events),
                                  [Position(0, len(events), max(e.time for e in events))])


async def test_freshness_covers_every_partition_of_this_topic_only(
    conn: Conn, reads: ReadQueries
) -> None:
    early, late = session("ada", at(hours=0)), session("bob", at(hours=5))
    await project(conn, early, partition=3)
    await project(conn, late, partition=1)
    await project(conn, session("eve", at(hours=9)), partition=0, topic="another.topic")
    # a partition the projector has been assigned but has read nothing from yet
    await ProjectionRepository().ensure_positions(conn, TOPIC, [4])

    _, freshness = await reads.session(conn, uuid4())
    assert freshness.positions == [
        Position(1, len(late), max(e.time for e in late)),
        Position(3, len(early), max(e.time for e in early)),
        Position(4, 0, None),
    ]
    assert freshness.projected_through == max(e.time for e in late)  # not another.topic's
    assert await reads.next_offset(conn, 3) == len(early)
    assert await reads.next_offset(conn, 4) == 0
    assert await reads.next_offset(conn, 2) == -1


# --- totals, days, time zone ------------------------------------------------------------------


async def test_totals_are_the_users_sums_and_zeros_for_a_stranger(
    conn: Conn, reads: ReadQueries
) -> None:
    await project(conn, [
        *session("ada", at(hours=0), end_after=25, completed=True, interruptions=1, planned=25),
        *session("ada", at(hours=2), end_after=10, completed=False, planned=50),
        *session("ada", at(hours=4), end_after=None, planned=15),  # still running
        *session("grace", at(hours=6), end_after=25),
    ])
    totals, freshness = await reads.totals(conn, "ada")
    assert totals == UserTotals(
        sessions_started=3, sessions_ended=2, sessions_completed=1,
        total_focus_seconds=Decimal((25 + 10) * 60), total_planned_minutes=25 + 50 + 15,
        total_interruptions=1, last_session_at=at(hours=4),
    )
    assert freshness.positions[0].partition == 0
    stranger, same_freshness = await reads.totals(conn, "nobody")
    assert stranger == UserTotals(0, 0, 0, Decimal(0), 0, 0, None)
    assert same_freshness == freshness


async def test_days_bucket_sessions_by_their_local_start_date(
    conn: Conn, reads: ReadQueries
) -> None:
    late_evening = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 00:30 on 2 March in Paris
    await project(conn, [
        *session("ada", late_evening, end_after=25, completed=True, interruptions=1),
        *session("ada", datetime(2026, 3, 2, 10, 0, tzinfo=UTC), end_after=10, completed=False),
        *session("ada", datetime(2026, 3, 4, 8, 0, tzinfo=UTC), end_after=None),
        *session("grace", datetime(2026, 3, 2, 12, 0, tzinfo=UTC)),
    ])
    lo, hi = date(2026, 3, 1), date(2026, 3, 4)

    paris = await reads.days(conn, "ada", lo, hi, "Europe/Paris")
    assert paris == [
        DayBucket(date(2026, 3, 1), 0, 0, 0, Decimal(0), 0),
        DayBucket(date(2026, 3, 2), 2, 2, 1, Decimal(35 * 60), 1),
        DayBucket(date(2026, 3, 3), 0, 0, 0, Decimal(0), 0),
        DayBucket(date(2026, 3, 4), 1, 0, 0, Decimal(0), 0),  # running: started, not ended
    ]
    utc = await reads.days(conn, "ada", lo, hi, "UTC")
    assert [(b.day, b.sessions_started) for b in utc] == [
        (date(2026, 3, 1), 1), (date(2026, 3, 2), 1), (date(2026, 3, 3), 0),
        (date(2026, 3, 4), 1)]


async def test_days_follow_daylight_saving_changes(conn: Conn, reads: ReadQueries) -> None:
    # Paris moves to summer time on 29 March 2026: that day has 23 hours.
    await project(conn, [
        *session("ada", datetime(2026, 3, 28, 23, 30, tzinfo=UTC)),  # 00:30 CET, 29 March
        *session("ada", datetime(2026, 3, 29, 22, 30, tzinfo=UTC)),  # 00:30 CEST, 30 March
    ])
    days = await reads.days(conn, "ada", date(2026, 3, 28), date(2026, 3, 30), "Europe/Paris")
    assert [(b.day, b.sessions_started) for b in days] == [
        (date(2026, 3, 28), 0), (date(2026, 3, 29), 1), (date(2026, 3, 30), 1)]


async def test_a_single_day_range_has_one_bucket_and_a_reversed_range_none(
    conn: Conn, reads: ReadQueries
) -> None:
    await project(conn, session("ada", T0))
    one = await reads.days(conn, "ada", T0.date(), T0.date(), "UTC")
    assert [(b.day, b.sessions_started, b.sessions_ended) for b in one] == [(T0.date(), 1, 1)]
    assert await reads.days(conn, "ada", T0.date(), T0.date() - timedelta(days=1), "UTC") == []


async def test_the_latest_time_zone_is_the_newest_session_that_named_one(
    conn: Conn, reads: ReadQueries
) -> None:
    await project(conn, [
        *session("ada", at(hours=0), time_zone="Asia/Tokyo"),
        *session("ada", at(hours=1), time_zone="America/New_York"),
        *session("ada", at(hours=2), time_zone=None),  # newest, but names no zone
        *session("grace", at(hours=3), time_zone="Europe/Lisbon"),
    ])
    assert await reads.latest_time_zone(conn, "ada") == "America/New_York"
    await project(conn, session("bob", at(hours=4), time_zone=None))
    assert await reads.latest_time_zone(conn, "bob") is None


# --- another schema ---------------------------------------------------------------------------


async def test_reads_use_the_tables_of_their_own_schema(fresh_database: str) -> None:
    migrate(fresh_database)
    migrate(fresh_database, schema="shadow")
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as c:
        [row] = (await project(c, session("ada", T0), schema="shadow")).rows
        shadow, public = ReadQueries(TOPIC, schema="shadow"), ReadQueries(TOPIC)

        assert (await shadow.session(c, row.session_id))[0] == row
        assert (await shadow.totals(c, "ada"))[0].sessions_started == 1
        assert await public.session(c, row.session_id) == (None, Freshness(None, []))
        assert (await public.totals(c, "ada"))[0].sessions_started == 0
