"""Is a projector making progress? A verdict from its heartbeat, in Burrow's words (pure).

Lag alone is not health: a projector that reads lag 0 may simply have stopped looking (Marten's
daemon once reported healthy while its agent was dead). So the verdict reads the loop's
heartbeat, the gauges the projector refreshes at every batch and every idle second
(:mod:`focus_sessions.consumers.metrics`):

* **STOP**: no poll of the broker for ``window`` seconds. The loop is stopped, hung or stuck
  in one batch (retrying an outage); whatever lag it last saw, nothing would notice new events.
* **STALL**: polling, but lag above 0 and no progress for ``window`` seconds, where progress is
  a committed batch or a moment with no lag (so the clock starts when lag appears, not at the
  last commit of an idle hour).
* **OK**: anything else; an idle projector with no lag polls every ``FOCUS_BATCH_WAIT_MS`` and
  stays OK however long nothing arrives.

``window`` is ``FOCUS_PROJECTOR_HEALTH_WINDOW_S``; it should exceed the longest backoff
(``FOCUS_RETRY_MAX_SECONDS``) that is still acceptable, and a batch's transaction time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    STALL = "stall"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one projector process last reported (Unix times)."""

    polled_at: float
    progress_at: float
    lag: int
    worker: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    detail: str
    worker: str = ""

    @property
    def healthy(self) -> bool:
        return self.status is Status.OK


def judge(beat: Heartbeat, now: float, window: float) -> Verdict:
    """One projector's verdict at ``now`` (see the module's docstring)."""
    silent = now - beat.polled_at
    if silent > window:
        return Verdict(Status.STOP, f"no poll for {silent:.1f} s (window {window:g} s); "
                       f"lag was {beat.lag}", beat.worker)
    stuck = now - beat.progress_at
    if beat.lag > 0 and stuck > window:
        return Verdict(Status.STALL, f"lag {beat.lag} and no commit for {stuck:.1f} s "
                       f"(window {window:g} s)", beat.worker)
    return Verdict(Status.OK, f"lag {beat.lag}", beat.worker)


def judge_all(beats: Iterable[Heartbeat], now: float, window: float, started_at: float
              ) -> list[Verdict]:
    """Every process's verdict; with no heartbeat at all, STOP once ``window`` has passed
    since ``started_at`` (the projector never came up), OK before."""
    verdicts = [judge(beat, now, window) for beat in beats]
    if verdicts:
        return verdicts
    if now - started_at > window:
        return [Verdict(Status.STOP, f"no heartbeat {now - started_at:.1f} s after start")]
    return [Verdict(Status.OK, "starting")]
