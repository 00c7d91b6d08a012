"""The pure half of `focus dlq`: letters read back from what the projector writes, filters,
and the redrive plan (ledger, resume after a crash, loop guard, --max, pacing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from focus_sessions.consumers.dlq import dead_letter
from focus_sessions.consumers.dlq_letters import (
    REDRIVE_COUNT,
    Letter,
    letter_filter,
    parse_letter,
    parse_place,
    parse_time,
)
from focus_sessions.consumers.redrive_plan import (
    Prior,
    Sent,
    Skip,
    chunk_size,
    pause,
    plan_redrive,
)
from focus_sessions.contracts.codec import encode
from focus_sessions.producers import events as ev
from tests.unit.histories import T0

TOPIC = "focus.session.events"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def letter(offset: int = 0, *, reason: str = "unknown-type", user: str = "ada",
           value: bytes | None = None, at: datetime = NOW, topic: str = TOPIC,
           max_original: int = 512 * 1024, extra: list[tuple[str, bytes]] | None = None
           ) -> Letter:
    """A letter as the projector writes it (consumers/dlq.py), read back as `focus dlq` does."""
    if value is None:
        value = encode(ev.started(user, T0))
    made = dead_letter(reason=reason, detail="why", topic=topic, partition=2, offset=offset,
                       key=user.encode(), value=value, max_original=max_original)
    return parse_letter(0, offset, int(at.timestamp() * 1000), made.value,
                        made.headers + (extra or []))


def test_a_letter_names_its_reason_origin_user_session_and_event() -> None:
    event = ev.started("ada", T0)
    got = letter(7, value=encode(event))
    assert (got.reason, got.origin, got.user_id) == ("unknown-type", f"{TOPIC}[2]@7", "ada")
    assert (got.session_id, got.event_id) == (str(event.data.session_id), str(event.id))
    assert got.event_type == "focus.session.started.v1"
    assert got.key() == b"ada"
    assert (got.omitted, got.redrive_count, got.dead_lettered_at) == (frozenset(), 0, NOW)


def test_bytes_that_are_not_json_leave_the_user_to_the_original_key() -> None:
    got = letter(value=b"\xff not json", reason="malformed-json", user="bob")
    assert (got.user_id, got.session_id, got.event_id) == ("bob", None, None)


def test_a_letter_whose_original_was_too_large_says_so() -> None:
    got = letter(value=b"x" * 100, max_original=10)
    assert got.omitted == {"value"}
    assert (got.value, got.original_size) == (b"", 100)


def test_filters_by_reason_user_session_place_and_time() -> None:
    a = letter(1, reason="unknown-type", user="ada", at=NOW - timedelta(hours=3))
    b = letter(2, reason="contradiction", user="bob", at=NOW - timedelta(minutes=10))
    both = [a, b]

    def picked(**options: object) -> list[int]:
        wanted = letter_filter(now=NOW, **options)
        return [x.offset for x in both if wanted.matches(x)]

    assert picked() == [1, 2]
    assert picked(reasons=["contradiction"]) == [2]
    assert picked(reasons=["unknown-type,contradiction"]) == [1, 2]
    assert picked(users=["ada"]) == [1]
    assert picked(sessions=[b.session_id.upper()]) == [2]
    assert picked(places=["0:2"]) == [2]
    assert picked(since="1h") == [2]
    assert picked(until="1h") == [1]
    assert picked(since=(NOW - timedelta(hours=4)).isoformat(), until="2h") == [1]


def test_times_are_iso_or_an_age_and_a_bad_one_says_what_is_expected() -> None:
    assert parse_time("2026-03-02T09:00", NOW) == datetime(2026, 3, 2, 9, tzinfo=UTC)
    assert parse_time("2026-03-02T09:00+01:00", NOW).hour == 9
    assert parse_time("90s", NOW) == NOW - timedelta(seconds=90)
    assert parse_time("7d", NOW) == NOW - timedelta(days=7)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_time("yesterday", NOW)
    assert parse_place("3:41") == (3, 41)
    assert parse_place("41") == (0, 41)
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_place("a:b")


def test_every_letter_is_sent_once_with_count_one_and_the_histogram_counts_reasons() -> None:
    letters = [letter(0), letter(1), letter(2, reason="contradiction")]
    plan = plan_redrive(letters, Prior(), events_topic=TOPIC)
    assert [(s.letter.offset, s.count, s.again) for s in plan.sends] == [
        (0, 1, False), (1, 1, False), (2, 1, False)]
    assert plan.reasons == {"unknown-type": 2, "contradiction": 1}
    assert plan.skipped == {}


def test_a_second_redrive_of_the_same_letters_sends_nothing() -> None:
    letters = [letter(0), letter(1)]
    first = plan_redrive(letters, Prior(), events_topic=TOPIC)
    ledger = Prior({s.letter.place: Sent(1, "sent", s.count) for s in first.sends},
                   {s.letter.original_sha256: s.count for s in first.sends})
    again = plan_redrive(letters, ledger, events_topic=TOPIC)
    assert again.sends == []
    assert again.skip_counts() == {Skip.ALREADY_SENT: 2}


def test_after_a_crash_only_the_chunk_in_flight_goes_again_with_its_count() -> None:
    # run 1 confirmed letter 0, wrote letter 1 `sending`, and died before letter 2
    letters = [letter(0), letter(1), letter(2)]
    ledger = Prior({(0, 0): Sent(1, "sent", 1), (0, 1): Sent(1, "sending", 1)},
                   {letters[0].original_sha256: 1, letters[1].original_sha256: 1})
    plan = plan_redrive(letters, ledger, events_topic=TOPIC)
    assert [(s.letter.offset, s.count, s.again) for s in plan.sends] == [(1, 1, True),
                                                                       (2, 1, False)]
    assert plan.skip_counts() == {Skip.ALREADY_SENT: 1}


def test_bytes_that_keep_coming_back_stop_after_max_redrives() -> None:
    # the same contradicting event, dead-lettered again after each redrive: a new letter with
    # the same bytes each time
    value = encode(ev.started("ada", T0))
    counts: dict[str, int] = {}
    sent: dict[tuple[int, int], Sent] = {}
    offsets: list[int] = []
    for offset in range(5):
        offsets.append(offset)
        plan = plan_redrive([letter(o, reason="contradiction", value=value) for o in offsets],
                            Prior(sent, counts), events_topic=TOPIC, max_redrives=3)
        for s in plan.sends:
            sent[s.letter.place] = Sent(offset, "sent", s.count)
            counts[s.letter.original_sha256] = max(counts.get(s.letter.original_sha256, 0),
                                                   s.count)
        if offset < 3:
            assert [s.count for s in plan.sends] == [offset + 1]
        else:
            assert plan.sends == []  # the letter of the 3rd redrive stays, and later runs too
            assert plan.skip_counts() == {Skip.LOOP_GUARD: offset - 2, Skip.ALREADY_SENT: 3}


def test_a_count_header_on_the_letter_counts_for_the_loop_guard() -> None:
    tired = letter(extra=[(REDRIVE_COUNT, b"3")])
    plan = plan_redrive([tired], Prior(), events_topic=TOPIC, max_redrives=3)
    assert plan.skip_counts() == {Skip.LOOP_GUARD: 1}
    assert plan_redrive([tired], Prior(), events_topic=TOPIC, max_redrives=4).sends[0].count == 4


def test_letters_without_their_bytes_or_from_another_topic_are_skipped_saying_why() -> None:
    plan = plan_redrive([letter(0, value=b"x" * 100, max_original=10),
                         letter(1, value=b"", reason="empty"),
                         letter(2, topic="other.events"),
                         letter(3)], Prior(), events_topic=TOPIC)
    assert [s.letter.offset for s in plan.sends] == [3]
    assert plan.skip_counts() == {Skip.OMITTED: 1, Skip.EMPTY: 1, Skip.OTHER_TOPIC: 1}


def test_max_sends_the_first_letters_and_counts_the_rest() -> None:
    plan = plan_redrive([letter(o) for o in range(5)], Prior(), events_topic=TOPIC,
                        max_letters=2)
    assert [s.letter.offset for s in plan.sends] == [0, 1]
    assert plan.skip_counts() == {Skip.OVER_MAX: 3}
    assert plan.matched == 5


def test_the_rate_cap_paces_sends_and_sizes_chunks() -> None:
    assert pause(10, 1.0, rate=5) == pytest.approx(1.0)  # 10 letters take 2 s at 5/s
    assert pause(10, 3.0, rate=5) == 0.0
    assert pause(10_000, 0.0, rate=None) == 0.0
    assert (chunk_size(None), chunk_size(2), chunk_size(100), chunk_size(1e6)) == (200, 1, 25,
                                                                                  200)
