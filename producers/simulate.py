"""A reproducible stream of realistic focus-session events, as ready-to-send ``(key, value)``.

Pure: no clock, no network, no global random state. The same ``(users, sessions, seed, profile)``
gives byte-identical events, ids included (they come from the seeded generator, not uuid4).
Each user has a time zone, a preferred Pomodoro length, an interruption rate and a habit of
abandoning sessions; their sessions follow each other through local working days. The stream
goes round by round (every user's first session, then every user's second, ...), so time moves
forward roughly together across users while each user's own events stay in order.

Values are byte-for-byte what :func:`focus_sessions.contracts.codec.encode` writes for the same
event; they are
formatted directly (not through pydantic) because this feeds million-event benchmarks; every
field of each type is written, and ``tests/unit/test_one_contract.py`` fails when the contract
gains one that is not.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from focus_sessions.contracts.events import ENDED_V1, ENDED_V2, INTERRUPTED_V1, STARTED_V1

SOURCE = "urn:focus-sessions:simulator"
#: (IANA zone, share of users)
TIME_ZONES = (
    ("America/New_York", 0.20), ("America/Los_Angeles", 0.12), ("America/Sao_Paulo", 0.06),
    ("Europe/London", 0.12), ("Europe/Berlin", 0.18), ("Asia/Kolkata", 0.12),
    ("Asia/Tokyo", 0.08), ("Australia/Sydney", 0.06), ("UTC", 0.06),
)
REASONS = ("phone call", "colleague", "email", "chat message", "meeting", "doorbell", None)
_DAY_START, _DAY_END = 8 * 3600, 20 * 3600  # local working hours


@dataclass(frozen=True)
class Profile:
    """The population's habits (defaults: the documented "realistic" mix, ~4 events/session)."""

    planned_minutes: tuple[tuple[int, float], ...] = ((25, 0.75), (15, 0.12), (50, 0.13))
    abandon_share: float = 0.20  # mean over users; each user draws their own
    cancel_share: float = 0.02  # ended within seconds: outcome "cancelled"
    open_share: float = 0.02  # never ended (app closed), so no end event
    interruptions_per_hour: float = 5.0  # mean over users; each user draws their own
    ended_v1_share: float = 0.0  # share of ends sent as focus.session.ended.v1
    time_zone_share: float = 0.9  # users whose timer reports their IANA zone
    step_share: float = 0.3  # sessions tied to a micro step
    report_share: float = 0.7  # timers that count interruptions themselves
    quality_share: float = 0.5  # v2 ends where the user rated their focus
    start: datetime = field(default_factory=lambda: datetime(2025, 3, 3, tzinfo=UTC))
    source: str = SOURCE


@dataclass(slots=True)
class _User:
    key: bytes
    user_id: str
    zone: str | None
    offset: int  # seconds east of UTC at the profile's start
    planned: int
    abandon: float
    rate: float  # interruptions per second of focus
    reports: bool
    cursor: int  # epoch seconds: the earliest start of the next session
    done: int = 0


class Simulation:
    """Iterate for ``(key, value)`` pairs; ``sessions_done`` and ``events`` grow as you go."""

    def __init__(self, users: int, sessions: int, seed: int, profile: Profile | None = None):
        if users < 1 or sessions < 0:
            raise ValueError("need at least one user and a non-negative number of sessions")
        self.users, self.sessions, self.seed = users, sessions, seed
        self.profile = profile or Profile()
        self.sessions_done = 0
        self.events = 0
        self._rng = random.Random(seed)  # noqa: S311
        self._days: dict[int, str] = {}
        p = self.profile
        self._source = json.dumps(p.source)
        self._reasons = [json.dumps(r) for r in REASONS]
        self._minutes = [m for m, _ in p.planned_minutes]
        self._minute_weights = [w for _, w in p.planned_minutes]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        # Every iteration starts from the seed again: iterating twice gives the same stream.
        self._rng = random.Random(self.seed)  # noqa: S311 - reproducible load, not secrets
        self.sessions_done = self.events = 0
        people = self._population()
        counts = _split(self.sessions, [self._rng.lognormvariate(0, 0.6) for _ in people])
        order = sorted(range(len(people)), key=lambda i: -counts[i])
        for round_ in range(max(counts, default=0)):
            for i in order:
                if counts[i] <= round_:
                    break
                yield from self._session(people[i])
                self.sessions_done += 1

    def _population(self) -> list[_User]:
        rng, p = self._rng, self.profile
        zones = [z for z, _ in TIME_ZONES]
        weights = [w for _, w in TIME_ZONES]
        midnight = int(p.start.timestamp()) // 86400 * 86400
        people = []
        for n in range(self.users):
            zone = rng.choices(zones, weights)[0]
            offset = ZoneInfo(zone).utcoffset(p.start.replace(tzinfo=None))
            seconds = int(offset.total_seconds()) if offset else 0
            people.append(_User(
                key=f"user-{n:06d}".encode(), user_id=f"user-{n:06d}",
                zone=zone if rng.random() < p.time_zone_share else None, offset=seconds,
                planned=rng.choices(self._minutes, self._minute_weights)[0],
                abandon=min(0.9, rng.betavariate(2, 2 / max(p.abandon_share, 1e-6) - 2)),
                rate=rng.gammavariate(2.0, p.interruptions_per_hour / 2.0) / 3600,
                reports=rng.random() < p.report_share,
                cursor=midnight - seconds + _DAY_START + rng.randrange(3 * 3600),
            ))
        return people

    def _session(self, user: _User) -> Iterator[tuple[bytes, bytes]]:
        rng, p = self._rng, self.profile
        start = self._next_start(user)
        planned = user.planned if rng.random() < 0.85 else rng.choices(
            self._minutes, self._minute_weights)[0]
        sid = self._uuid()
        subject = f'"subject":"{sid}","datacontenttype":"application/json","data":'
        common = f'{{"session_id":"{sid}","user_id":"{user.user_id}"'
        step = f'"{self._uuid()}"' if rng.random() < p.step_share else "null"
        zone = f'"{user.zone}"' if user.zone else "null"
        at = self._time(start)
        yield user.key, self._envelope(STARTED_V1, at, subject, (
            f'{common},"step_id":{step},"duration_minutes":{planned},"started_at":"{at}",'
            f'"time_zone":{zone}}}}}'))
        draw = rng.random()
        if draw < p.open_share:
            outcome, elapsed = "", int(planned * 60 * rng.uniform(0.2, 1.0))
        elif draw < p.open_share + p.cancel_share:
            outcome, elapsed = "cancelled", rng.randint(5, 90)
        elif rng.random() < user.abandon:
            outcome, elapsed = "abandoned", int(planned * 60 * rng.uniform(0.1, 0.9))
        else:
            outcome, elapsed = "completed", planned * 60 + rng.randint(0, 90)
        count = _poisson(rng, user.rate * elapsed) + (outcome == "abandoned" and rng.random() < 0.5)
        random_, span, reasons = rng.random, elapsed - 1, self._reasons
        for moment in sorted(start + 1 + int(random_() * span) for _ in range(count)):
            at = self._time(moment)
            reason = reasons[int(random_() * len(reasons))]
            yield user.key, self._envelope(INTERRUPTED_V1, at, subject, (
                f'{common},"interrupted_at":"{at}","reason":{reason}}}}}'))
        user.cursor = start + elapsed
        if outcome:
            yield user.key, self._ended(user, outcome, count, start + elapsed, subject, common)

    def _ended(self, user: _User, outcome: str, count: int, end: int, subject: str,
               common: str) -> bytes:
        rng, p = self._rng, self.profile
        at = self._time(end)
        reported = "null"
        if user.reports:  # a timer sometimes counts an interruption nobody reported
            reported = str(count + (rng.random() < 0.1))
        if rng.random() < p.ended_v1_share:
            completed = "true" if outcome == "completed" else "false"
            return self._envelope(ENDED_V1, at, subject, (
                f'{common},"ended_at":"{at}","completed":{completed},'
                f'"interruptions":{reported}}}}}'))
        quality = "null"
        if rng.random() < p.quality_share:
            quality = str(rng.choice((3, 4, 4, 5, 5)) if outcome == "completed" else
                          rng.choice((1, 2, 2, 3)))
        return self._envelope(ENDED_V2, at, subject, (
            f'{common},"ended_at":"{at}","outcome":"{outcome}",'
            f'"reported_interruptions":{reported},"focus_quality":{quality}}}}}'))

    def _envelope(self, type_: str, at: str, subject: str, data: str) -> bytes:
        self.events += 1
        return (f'{{"specversion":"1.0","id":"{self._uuid()}","source":{self._source},'
                f'"type":"{type_}","time":"{at}",{subject}{data}').encode()

    def _next_start(self, user: _User) -> int:
        """After a short break (a long one every fourth session); the next working day if the
        session would run past the evening, sometimes skipping a day."""
        rng = self._rng
        gap = 300 + rng.randrange(600) if user.done % 4 else 1200 + rng.randrange(900)
        if rng.random() < 0.15:
            gap += rng.randrange(3600, 3 * 3600)  # a meeting, lunch
        start = user.cursor + (gap if user.done else 0)
        user.done += 1
        local = start + user.offset
        if local % 86400 > _DAY_END - 3600:
            days = 1 + (rng.random() < 0.2)
            start = (local // 86400 + days) * 86400 + _DAY_START + rng.randrange(7200) - user.offset
        return start

    def _uuid(self) -> str:
        # version 4, RFC 4122 variant, from the seeded generator
        n = self._rng.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)
        h = "%032x" % (n | (0x4000 << 64) | (0x8000 << 48))
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _time(self, epoch: int) -> str:
        day, second = divmod(epoch, 86400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%d")
            self._days[day] = prefix
        hour, rest = divmod(second, 3600)
        return f"{prefix}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def generate(users: int, sessions: int, seed: int,
             profile: Profile | None = None) -> Iterator[tuple[bytes, bytes]]:
    """``sessions`` sessions spread over ``users`` users, as Kafka ``(key, value)`` pairs."""
    return iter(Simulation(users, sessions, seed, profile))


def _split(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders get the rest)."""
    scale = total / sum(weights)
    shares = [w * scale for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of interruptions per session."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k
