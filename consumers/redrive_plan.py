"""What a redrive sends, and why it leaves the rest (pure: the ledger's answers come in as
values).

A letter is sent back once: the ledger remembers its place in the dead-letter topic. A letter
whose bytes have already gone round ``max_redrives`` times is held back by the loop guard: a
redriven event refused again comes back as a *new* letter with the same bytes (same SHA-256),
and the ledger counts the redrives of those bytes, since a projector copies no headers of the
record it refuses into the letter (a ``focus.redrive.count`` header on the letter counts too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from focus_sessions.consumers.dlq_letters import Letter


class Skip(StrEnum):
    """Why a letter that matched the filter is not sent (said to the operator as is)."""

    ALREADY_SENT = "already redriven (the ledger has it)"
    OTHER_TOPIC = "from another events topic"
    OMITTED = "original bytes not in the letter (too large): republish from its origin"
    EMPTY = "the original had no value"
    LOOP_GUARD = "redriven --max-redrives times already"
    OVER_MAX = "over --max"


@dataclass(frozen=True, slots=True)
class Sent:
    """What the ledger knows of one letter: the run that sent it, and its state there
    (``sending``: written before publishing, so possibly never published)."""

    run_id: int
    state: str
    redrive_count: int


@dataclass(frozen=True, slots=True)
class Prior:
    """The ledger of one dead-letter topic before a run."""

    #: By the letter's ``(partition, offset)``.
    letters: Mapping[tuple[int, int], Sent] = field(default_factory=dict)
    #: The highest redrive count sent so far for each original SHA-256.
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Send:
    letter: Letter
    #: The ``focus.redrive.count`` header it goes with: 1 on the first redrive of its bytes.
    count: int
    #: True when a run that crashed wrote it ``sending``: it may have been published once.
    again: bool = False


@dataclass(slots=True)
class RedrivePlan:
    sends: list[Send] = field(default_factory=list)
    skipped: dict[Skip, list[Letter]] = field(default_factory=dict)
    #: Every letter that matched the filter, by reason (``--dry-run``'s histogram).
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def matched(self) -> int:
        return sum(self.reasons.values())

    def skip_counts(self) -> dict[Skip, int]:
        return {why: len(letters) for why, letters in self.skipped.items() if letters}


def plan_redrive(letters: Iterable[Letter], prior: Prior, *, events_topic: str,
                 max_redrives: int = 3, max_letters: int | None = None) -> RedrivePlan:
    """The letters to send, in the order of the dead-letter topic, and those skipped by why.

    A letter its run wrote ``sending`` and never confirmed (the run crashed) is sent again with
    the same count: it may already have been published, which an event's id makes harmless.
    """
    out = RedrivePlan()
    for letter in letters:
        out.reasons[letter.reason] += 1
        why, send = _decide(letter, prior, events_topic, max_redrives)
        if send is not None and max_letters is not None and len(out.sends) >= max_letters:
            why, send = Skip.OVER_MAX, None
        if send is not None:
            out.sends.append(send)
        else:
            assert why is not None
            out.skipped.setdefault(why, []).append(letter)
    return out


def _decide(letter: Letter, prior: Prior, events_topic: str, max_redrives: int
            ) -> tuple[Skip | None, Send | None]:
    known = prior.letters.get(letter.place)
    if known is not None and known.state == "sent":
        return Skip.ALREADY_SENT, None
    if letter.original_topic and letter.original_topic != events_topic:
        return Skip.OTHER_TOPIC, None
    if "value" in letter.omitted:
        return Skip.OMITTED, None
    if not letter.value:
        return Skip.EMPTY, None
    if known is not None:  # written `sending` by a run that crashed: the same attempt again
        return None, Send(letter, known.redrive_count, again=True)
    done = max(letter.redrive_count, prior.counts.get(letter.original_sha256, 0))
    if done >= max_redrives:
        return Skip.LOOP_GUARD, None
    return None, Send(letter, done + 1)


def chunk_size(rate: float | None) -> int:
    """Letters written to the ledger and published together: about a quarter second's worth
    under ``--rate``, else 200. A crash repeats at most one chunk."""
    if rate is None:
        return 200
    return max(1, min(200, int(rate / 4)))


def pause(sent: int, elapsed: float, rate: float | None) -> float:
    """Seconds to wait before sending more, so that ``sent`` letters in ``elapsed`` seconds
    stay under ``rate`` per second."""
    if rate is None:
        return 0.0
    return max(0.0, sent / rate - elapsed)
