"""Pure pieces of the API: settings checks, tokens and scopes, cursors, ids, analytics math."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import jwt
import pytest
from pydantic import BaseModel, ValidationError

from focus_sessions.api import models
from focus_sessions.api.auth import ANALYTICS, SELF, WRITE, Principal, TokenVerifier, mint_token
from focus_sessions.api.settings import DEV_JWT_SECRET, ApiSettings
from focus_sessions.producers.http import (
    FocusSessionCreate,
    FocusSessionUpdate,
    end_event,
    start_event,
)
from focus_sessions.projections.fold import SessionRow
from focus_sessions.projections.queries import (
    Cursor,
    DayBucket,
    Freshness,
    Position,
    UserTotals,
    WeekBucket,
)

GOOD = "s" * 48
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(("secret", "message"), [
    (None, "FOCUS_JWT_SECRET is not set"),
    ("changeme", "placeholder"),
    ("short-but-not-a-placeholder", "at least 32"),
])
def test_api_refuses_to_start_on_a_missing_placeholder_or_short_secret(
    secret: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FOCUS_JWT_SECRET", raising=False)
    monkeypatch.delenv("FOCUS_DEV_MODE", raising=False)
    with pytest.raises(ValidationError, match=message) as caught:
        ApiSettings(focus_jwt_secret=secret)
    assert "token_urlsafe" in str(caught.value)  # says how to make a good one


def test_dev_mode_accepts_no_secret_and_uses_the_dev_secret(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.delenv("FOCUS_JWT_SECRET", raising=False)
    assert ApiSettings(focus_dev_mode=True).jwt_secret == DEV_JWT_SECRET


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOCUS_JWT_SECRET", GOOD)
    monkeypatch.setenv("FOCUS_API_WAIT_MS", "750")
    settings = ApiSettings()
    assert settings.focus_api_wait_ms == 750
    assert settings.jwt_secret == GOOD


def test_pool_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ValidationError, match="FOCUS_API_POOL_MIN"):
        ApiSettings(focus_jwt_secret=GOOD, focus_api_pool_min=9, focus_api_pool_max=2)


def test_a_minted_token_verifies_to_its_subject_and_scopes() -> None:
    principal = TokenVerifier(GOOD, "focus-sessions").verify(mint_token(GOOD, "ann", [SELF]))
    assert principal == Principal("ann", frozenset({SELF}))
    assert principal.may_read("ann")
    assert principal.may_write("ann")
    assert not principal.may_read("bob")
    assert not principal.may_write("bob")


def test_scopes_grant_what_the_docs_say() -> None:
    service = Principal("timer", frozenset({WRITE}))
    analyst = Principal("team", frozenset({ANALYTICS}))
    assert service.may_write("anyone")
    assert not service.may_read("anyone")
    assert analyst.may_read("anyone")
    assert not analyst.may_write("anyone")


def test_minting_an_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        mint_token(GOOD, "ann", ["sessions:everything"])


def test_an_expired_token_is_refused_even_after_it_was_cached() -> None:
    verifier = TokenVerifier(GOOD, "focus-sessions")
    with pytest.raises(jwt.ExpiredSignatureError):
        verifier.verify(mint_token(GOOD, "ann", [SELF], ttl_seconds=-1))


def test_a_cursor_round_trips_and_garbage_is_refused() -> None:
    cursor = Cursor(T0, UUID(int=7))
    assert Cursor.decode(cursor.encode()) == cursor
    for garbage in ("", "!!", "eA", Cursor(T0.replace(tzinfo=None), UUID(int=1)).encode()):
        with pytest.raises(ValueError, match="not a cursor"):
            Cursor.decode(garbage)


def test_an_idempotency_key_derives_the_same_ids_every_time() -> None:
    body = FocusSessionCreate(user_id="ann")
    a = start_event(body, T0, "urn:test", key="k1")
    b = start_event(body, T0 + timedelta(seconds=3), "urn:test", key="k1")
    c = start_event(body, T0, "urn:test", key="k2")
    assert (a.id, a.data.session_id) == (b.id, b.data.session_id)
    assert a.data.session_id != c.data.session_id
    assert start_event(body, T0, "urn:test").id != start_event(body, T0, "urn:test").id


@pytest.mark.parametrize(("minutes", "completed"), [(24, False), (25, True), (40, True)])
def test_an_end_without_completed_counts_as_completed_once_the_plan_is_reached(
    minutes: int, completed: bool
) -> None:
    event = end_event(FocusSessionUpdate(), "ann", UUID(int=1), T0, 25,
                      T0 + timedelta(minutes=minutes), "urn:test")
    assert event.data.completed is completed
    assert event.data.ended_at == T0 + timedelta(minutes=minutes)


def test_analytics_are_derived_from_the_rollup_sums() -> None:
    totals = UserTotals(4, 3, 2, Decimal(3600), 100, 6, T0)
    out = models.analytics("ann", totals, Freshness(T0, [Position(0, 10, T0)]))
    assert out.completion_rate == pytest.approx(2 / 3, abs=1e-4)
    assert out.avg_duration_minutes == 20
    assert out.total_focus_minutes == 60
    assert out.interruptions_per_session == 1.5
    empty = models.analytics("ann", UserTotals(0, 0, 0, Decimal(0), 0, 0, None),
                             Freshness(None, []))
    assert empty.completion_rate is None
    assert empty.avg_duration_minutes is None
    assert empty.interruptions_per_session is None


def test_every_figure_is_rounded_once_to_four_places_half_up_from_the_exact_sums() -> None:
    # 3 sessions started and ended, 2 completed, 100 s of focus in all, 4 interruptions
    fresh = Freshness(None, [])
    totals = models.analytics("ann", UserTotals(3, 3, 2, Decimal(100), 75, 4, T0), fresh)
    week = models.week(WeekBucket(date(2025, 3, 3), 3, 2, Decimal(100)))
    # the same sums give the same figures in every route
    assert totals.completion_rate == week.completion_rate == 0.6667
    assert totals.total_focus_minutes == week.focus_minutes == 1.6667
    # 100 s / 3 sessions = 0.5555... min: from the exact sum, not 1.6667 / 3 = 0.55556...
    assert totals.avg_duration_minutes == week.avg_duration_minutes == 0.5556
    assert totals.interruptions_per_session == 1.3333
    # exactly half of the last place goes up, as PostgreSQL's round(numeric, 4) does:
    # 0.003 s = 0.00005 min; 0.009 s = 0.00015 min (half to even would give 0.0 and 0.0002)
    assert models.figure(Decimal("0.003"), 60) == 0.0001
    assert models.figure(Decimal("0.009"), 60) == 0.0002
    assert models.figure(1, 8) == 0.125  # exact figures stay exact
    day = models.daily("UTC", date(2025, 3, 1), date(2025, 3, 1),
                       [DayBucket(date(2025, 3, 1), 1, 1, 0, Decimal("0.003"), 0)])
    assert day.days[0].focus_minutes == 0.0001
    row = SessionRow(UUID(int=1), "ann", None, T0, T0, 25, False, 0, T0, Decimal("0.003"),
                     "abandoned", None, 0, None, None, UUID(int=2), UUID(int=3))
    assert models.session(row).focus_minutes == 0.0001


@pytest.mark.parametrize("model", [models.FocusSession, models.DayOut, models.AnalyticsOut,
                                   models.WeekOut])
def test_every_fractional_figure_documents_its_rounding(model: type[BaseModel]) -> None:
    floats = {name: field for name, field in model.model_fields.items()
              if field.annotation in (float, float | None)}
    assert floats  # each of these models has at least one
    for name, field in floats.items():
        assert models.ROUNDED in (field.description or ""), name
