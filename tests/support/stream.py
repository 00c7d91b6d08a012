"""A reproducible, realistic event stream for the chaos tests (seeded, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

from focus_sessions.contracts.events import CloudEvent
from focus_sessions.producers import events as ev

EPOCH = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def stream(events: int, users: int = 200, seed: int = 7) -> Iterator[CloudEvent]:
    """About ``events`` events, ~4 per session; some sessions arrive shuffled, some twice."""
    rng = random.Random(seed)

    def uid() -> UUID:
        return UUID(int=rng.getrandbits(128), version=4)

    produced = 0
    n = 0
    while produced < events:
        n += 1
        user = f"user-{rng.randrange(users)}"
        t0 = EPOCH + timedelta(minutes=n * 7 + rng.random())
        start = ev.started(user, t0, session_id=uid(), event_id=uid(),
                           duration_minutes=rng.choice((25, 25, 25, 15, 50)))
        sid = start.data.session_id
        session: list[CloudEvent] = [start]
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            session.append(ev.interrupted(user, sid, t0 + timedelta(minutes=rng.uniform(0, 20)),
                                          event_id=uid()))
        if rng.random() < 0.9:
            end_at = t0 + timedelta(minutes=rng.uniform(5, 30))
            completed = rng.random() < 0.75
            if rng.random() < 0.5:
                session.append(ev.ended_v1(user, sid, end_at, completed=completed,
                                           event_id=uid()))
            else:
                session.append(ev.ended(user, sid, end_at, completed=completed, event_id=uid(),
                                        focus_quality=rng.randint(1, 5)))
        if rng.random() < 0.1:
            rng.shuffle(session)  # the end may come first: held until the start arrives
        if rng.random() < 0.05:
            session.append(rng.choice(session))  # a producer retry: same event id again
        produced += len(session)
        yield from session
