"""Where the broker and the database are.

Explicit settings (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``) always win. Without them, a
command uses the embedded stack that ``focus dev`` is running: ``focus dev`` writes the
addresses of its broker and PostgreSQL to ``FOCUS_DATA_DIR/dev.json`` and removes the file when it
stops. Without either, the command stops with a message that says what to set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

from focus_sessions.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)
STATE_FILE = "dev.json"


class ServersNotConfigured(RuntimeError):
    pass


def state_path(settings: CommonSettings) -> Path:
    return settings.focus_data_dir / STATE_FILE


def write_state(settings: CommonSettings, bootstrap: str, database_url: str) -> Path:
    """Record the embedded stack's addresses for other ``focus`` commands (``focus dev``)."""
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kafka_bootstrap_servers": bootstrap,
                                "database_url": database_url, "pid": os.getpid()}))
    return path


def clear_state(settings: CommonSettings) -> None:
    state_path(settings).unlink(missing_ok=True)


def _running_dev_stack(settings: CommonSettings) -> dict[str, str] | None:
    path = state_path(settings)
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)  # is the `focus dev` that wrote it still alive?
        return {k: str(state[k]) for k in ("kafka_bootstrap_servers", "database_url")}
    except (OSError, ValueError, KeyError, TypeError):  # gone, unreadable or not ours
        return None


BOTH = ("kafka_bootstrap_servers", "database_url")


def resolved(settings: S, needs: tuple[str, ...] = BOTH) -> S:
    """Settings with the servers in ``needs`` set, from the environment or a running
    ``focus dev``."""
    if all(getattr(settings, k) for k in needs):
        return settings
    stack = _running_dev_stack(settings) or {}
    updates = {k: getattr(settings, k) or stack.get(k) for k in needs}
    missing = [k.upper() for k, v in updates.items() if not v]
    if missing:
        raise ServersNotConfigured(
            f"{' and '.join(missing)} not set, and no `focus dev` stack is running under "
            f"{settings.focus_data_dir}/. Start one with `focus dev` (embedded broker and "
            "PostgreSQL), or export the variables to use your own servers, e.g. "
            "KAFKA_BOOTSTRAP_SERVERS=localhost:9092 "
            "DATABASE_URL=postgresql://postgres@localhost:5432/focus"
        )
    return settings.model_copy(update=updates)


def database_url(settings: CommonSettings) -> str:
    """The database only (``focus migrate`` and friends need no broker)."""
    url = resolved(settings, needs=("database_url",)).database_url
    assert url is not None
    return url
