"""What the routes share: the services built by the app factory, and the JSON response helper."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from focus.api.cache import AnalyticsCache
from producers.http import KafkaWriter, Published
from projections.queries import ReadQueries

_FIRST_POLL_S = 0.005
_MAX_POLL_S = 0.05


@dataclass(slots=True)
class Services:
    pool: AsyncConnectionPool[Any]
    queries: ReadQueries
    writer: KafkaWriter
    source: str
    wait_seconds: float
    cache: AnalyticsCache

    async def projected(self, published: Published) -> bool:
        """Wait (bounded by ``wait_seconds``) until the projector has applied ``published``."""
        deadline = time.monotonic() + self.wait_seconds
        delay = _FIRST_POLL_S
        while True:
            async with self.pool.connection() as conn:
                if await self.queries.next_offset(conn, published.partition) > published.offset:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_POLL_S)


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in a worker thread, on every request
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


def json_response(model: BaseModel, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """Serialise with pydantic-core directly (no second validation pass in FastAPI)."""
    return Response(model.model_dump_json(by_alias=True), status_code, headers,
                    media_type="application/json")
