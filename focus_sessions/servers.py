"""Where the broker, the database and the development token secret are: one answer for every
``focus`` command.

Explicit settings (``--bootstrap-servers``, ``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``,
``FOCUS_JWT_SECRET``) always win. Without them, a command uses the stack that ``focus dev`` is
running: ``focus dev`` writes the addresses of its broker and PostgreSQL, the pids of what it
runs and the path of its token secret to ``FOCUS_DATA_DIR/dev.json`` (mode 0600) and removes
the file when it stops. The secret itself lives in ``FOCUS_DATA_DIR/dev-jwt-secret`` (0600),
made by the first ``focus dev`` and kept, so tokens stay valid across restarts. With neither,
a command stops with a message that says what to set; there is no ``localhost:9092`` guess,
which once published thousands of events into an unrelated broker.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from focus_sessions.settings import CommonSettings

S = TypeVar("S", bound=CommonSettings)
STATE_FILE = "dev.json"
SECRET_FILE = "dev-jwt-secret"  # noqa: S105 - the file's name, not a secret
BOTH = ("kafka_bootstrap_servers", "database_url")


class ServersNotConfigured(RuntimeError):
    pass


@dataclass(frozen=True)
class DevState:
    """What a running ``focus dev`` wrote to ``dev.json``."""

    kafka_bootstrap_servers: str
    database_url: str
    pid: int
    path: Path
    broker: str | None = None  # "tansu", "apache", or None: servers of one's own
    jwt_secret_file: Path | None = None
    pids: Mapping[str, int] = field(default_factory=dict)

    def jwt_secret(self) -> str | None:
        """The secret the stack's API verifies tokens with, when ``focus dev`` made it."""
        if self.jwt_secret_file is None:
            return None
        try:
            return self.jwt_secret_file.read_text().strip() or None
        except OSError:
            return None


def state_path(settings: CommonSettings) -> Path:
    return settings.focus_data_dir / STATE_FILE


def write_state(settings: CommonSettings, bootstrap: str, database_url: str, *,
                broker: str | None = None, jwt_secret_file: Path | None = None,
                pids: Mapping[str, int] | None = None) -> Path:
    """Record the running stack for other ``focus`` commands (``focus dev``, again after each
    restart of one of its pieces). Written whole and renamed, so a reader never sees half."""
    path = state_path(settings)
    state: dict[str, object] = {"kafka_bootstrap_servers": bootstrap,
                                "database_url": database_url, "pid": os.getpid()}
    if broker is not None:
        state["broker"] = broker
    if jwt_secret_file is not None:
        state["jwt_secret_file"] = str(jwt_secret_file.resolve())
    if pids:
        state["pids"] = dict(pids)
    _write_private(path, json.dumps(state, indent=2) + "\n")
    return path


def clear_state(settings: CommonSettings) -> None:
    state_path(settings).unlink(missing_ok=True)


def running_dev_stack(settings: CommonSettings) -> DevState | None:
    """The stack of a ``focus dev`` that is still alive, else None (no file, a file left by a
    ``focus dev`` that died, or one that is unreadable or not ours)."""
    path = state_path(settings)
    try:
        state = json.loads(path.read_text())
        pid = int(state["pid"])
        os.kill(pid, 0)  # is the `focus dev` that wrote it still alive?
        secret_file = state.get("jwt_secret_file")
        return DevState(
            str(state["kafka_bootstrap_servers"]), str(state["database_url"]), pid, path,
            broker=state.get("broker"),
            jwt_secret_file=Path(secret_file) if secret_file else None,
            pids={str(k): int(v) for k, v in (state.get("pids") or {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def resolved(settings: S, needs: tuple[str, ...] = BOTH) -> S:
    """Settings with the servers in ``needs`` set, from the environment or a running
    ``focus dev``."""
    if all(getattr(settings, k) for k in needs):
        return settings
    stack = running_dev_stack(settings)
    found = ({"kafka_bootstrap_servers": stack.kafka_bootstrap_servers,
              "database_url": stack.database_url} if stack else {})
    updates = {k: getattr(settings, k) or found.get(k) for k in needs}
    missing = [k.upper() for k, v in updates.items() if not v]
    if missing:
        raise _not_configured(settings, missing)
    return settings.model_copy(update=updates)


def _not_configured(settings: CommonSettings, missing: list[str]) -> ServersNotConfigured:
    return ServersNotConfigured(
        f"{' and '.join(missing)} not set, and no `focus dev` stack is running under "
        f"{settings.focus_data_dir}/. Start one with `focus dev` (embedded broker and "
        "PostgreSQL), or export the variables to use your own servers, e.g. "
        "KAFKA_BOOTSTRAP_SERVERS=localhost:9092 "
        "DATABASE_URL=postgresql://postgres@localhost:5432/focus"
    )


def database_url(settings: CommonSettings) -> str:
    """The database only (``focus migrate`` and friends need no broker)."""
    url = resolved(settings, needs=("database_url",)).database_url
    assert url is not None
    return url


def broker(settings: CommonSettings, option: str | None = None) -> tuple[str, str]:
    """The bootstrap servers a command uses and where they came from, in words: ``option``
    (``--bootstrap-servers``), else ``KAFKA_BOOTSTRAP_SERVERS``, else a running ``focus dev``."""
    if option:
        return option, "--bootstrap-servers"
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS"
    stack = running_dev_stack(settings)
    if stack is None:
        raise _not_configured(settings, ["KAFKA_BOOTSTRAP_SERVERS"])
    kind = f"{stack.broker} of " if stack.broker else ""
    return stack.kafka_bootstrap_servers, (
        f"{kind}the running `focus dev`, pid {stack.pid}, {stack.path}")


def broker_line(bootstrap: str, origin: str) -> str:
    """The one stderr line each command prints about its broker."""
    return f"focus: broker {bootstrap} (from {origin})"


def dev_environment(settings: CommonSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables that a running ``focus dev`` supplies and ``environ`` lacks.

    Only the token secret travels this way: the API's settings read it from the environment,
    and ``focus token`` must sign with the secret that the running API verifies with. The
    servers are resolved by :func:`resolved` and :func:`broker` instead.
    """
    if environ.get("FOCUS_JWT_SECRET"):
        return {}
    stack = running_dev_stack(settings)
    secret = stack.jwt_secret() if stack else None
    return {"FOCUS_JWT_SECRET": secret} if secret else {}


def ensure_dev_secret(data_dir: Path) -> tuple[str, Path]:
    """The development token secret under ``data_dir`` (mode 0600), made on first use."""
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if len(secret) < 32:
        secret = secrets.token_urlsafe(48)
        _write_private(path, secret + "\n")
    else:
        path.chmod(0o600)  # whatever happened to it since, only its owner may read it
    return secret, path


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(scratch, path)
