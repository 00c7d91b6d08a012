"""Benchmarks: commands that print figures (see README, "Benchmarks")."""

from __future__ import annotations

import json
import time


def python_speed() -> str:
    """How fast this machine runs Python right now, to compare figures across runs: the same
    machine's speed has varied by 1.7x between sessions (a shared VM)."""
    began = time.process_time()
    for _ in range(10_000_000):
        pass
    loop = time.process_time() - began
    event = json.dumps({"id": "482abfe8-1dfd-44e5-bf35-53a6b043c9aa", "data": {"n": 25}} | {
        f"field{i}": "x" * 30 for i in range(10)}).encode()
    began = time.process_time()
    for _ in range(100_000):
        json.loads(event)
    parse = (time.process_time() - began) * 10
    return (f"Python speed: empty 10M-iteration loop {loop:.3f} s, json.loads of a "
            f"{len(event)}-byte object {parse:.2f} us")
