"""Exponential backoff with equal jitter: every wait is at least half of its ceiling.

Retry ``n`` waits a uniform time in ``[c/2, c]``, where ``c = min(cap, base * 2**(n-1))``.
Equal jitter, not full jitter (``uniform(0, c)``, which spreads retries the most): the callers
are a handful of projector replicas and API listeners waiting for PostgreSQL or the broker to
come back, not hundreds of clients contending for one row, so a floor that keeps them from
retrying a server that is still away within milliseconds matters more than the widest spread;
and a late retry never comes sooner than an early one did, so logs show the wait growing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.2
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): uniform in
        ``[ceiling/2, ceiling]``, the ceiling doubling from ``base`` up to ``cap``."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        return (rng or random).uniform(ceiling / 2, ceiling)
