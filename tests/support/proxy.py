"""A tiny TCP proxy for outage tests: "PostgreSQL is unreachable for a few seconds".

The proxy runs its own event loop in a daemon thread, so sync tests, async tests and tests that
spawn subprocesses (which connect to ``127.0.0.1:<port>``) can all use it. ``pause()`` drops
every live connection and closes the listening socket, so new connections are *refused*, as if
the server were down; ``resume()`` listens again on the same port. No real server is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from focus_sessions.embedded import Service

_T = TypeVar("_T")

#: Either ``(host, port)`` for TCP or a unix socket path.
Target = tuple[str, int] | str


class TcpProxy(Service):
    """Forward ``127.0.0.1:<port>`` to ``target``; usable as a context manager."""

    def __init__(self, target: Target, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._paused = False

    @property
    def address(self) -> str:
        """``host:port`` clients should connect to."""
        return f"{self.host}:{self.port}"

    @property
    def paused(self) -> bool:
        return self._paused

    def start(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def pause(self) -> None:
        """Close every live connection and refuse new ones until :meth:`resume`."""
        self._call(self._pause())

    def resume(self) -> None:
        """Accept connections again, on the same port."""
        self._call(self._listen())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        self._paused = False

    async def _pause(self) -> None:
        self._paused = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._pause()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=2)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._paused:
            client.transport.abort()
            return
        self.connections_accepted += 1
        try:
            if isinstance(self.target, str):
                upstream_reader, upstream = await asyncio.open_unix_connection(self.target)
            else:
                upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            client.transport.abort()
            return
        if self._paused:  # paused while we were connecting upstream
            client.transport.abort()
            upstream.transport.abort()
            return
        self._writers.update((client, upstream))
        try:
            await asyncio.gather(_pump(client_reader, upstream), _pump(upstream_reader, client))
        finally:
            for writer in (client, upstream):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    # Half-close: the other direction may still be sending.
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
