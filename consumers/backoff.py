"""Exponential backoff with full jitter (the AWS architecture blog's recommendation)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.2
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        return (rng or random).uniform(ceiling / 2, ceiling)
