"""Whether producers are idempotent: ``FOCUS_KAFKA_IDEMPOTENCE`` = ``auto`` | ``on`` | ``off``.

An idempotent producer gets a producer id from the broker and numbers its batches, so a batch
retried after a lost answer is written once. Apache Kafka grants that; tansu, the embedded
development broker, lists ``InitProducerId`` among its API versions but answers it with an
unknown error, so an ``ApiVersions`` look-up cannot tell. ``auto`` (the default) therefore asks
the broker for a producer id, once per process and bootstrap address: granted, producers are
idempotent; refused, they are not (tansu is the documented exception), and a retry may then
write an event twice, which the projector drops by event id. No answer at all (the broker is
down) also means "not idempotent", with a warning, for the producers made in the next 30 s;
then the broker is asked again. ``on`` and ``off`` skip the question.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.transaction import InitProducerIdRequest

from focus_sessions.embedded import run_coroutine_sync
from focus_sessions.topics import _quiet_connect_errors

Idempotence = Literal["auto", "on", "off"]

log = logging.getLogger(__name__)

#: The broker's answer per bootstrap address: asking costs a connection, and the answer of a
#: given broker does not change while this process lives.
_granted: dict[str, bool] = {}
#: Until when an address that did not answer is not asked again (monotonic seconds).
_unanswered: dict[str, float] = {}
_ASK_AGAIN_AFTER = 30.0


async def broker_grants_idempotence(
    bootstrap_servers: str, timeout: float = 10.0  # noqa: ASYNC109 - bounds several requests
) -> bool | None:
    """Ask a broker for a producer id: ``True`` granted, ``False`` refused, ``None`` when no
    broker answered within ``timeout`` seconds. A retriable refusal (a fresh Apache Kafka
    answers ``COORDINATOR_LOAD_IN_PROGRESS`` for a moment) is asked again."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers,
                            request_timeout_ms=max(100, int(min(timeout, 5.0) * 1000)))
    try:
        async with asyncio.timeout(timeout):
            with _quiet_connect_errors():
                await client.bootstrap()
            while True:
                node = client.get_random_node()
                if node is None:
                    return None
                answer = await client.send(node, InitProducerIdRequest(
                    transactional_id=None,  # null: not transactional
                    transaction_timeout_ms=60_000,
                ))
                if not for_code(answer.error_code).retriable:
                    return int(answer.error_code) == 0
                await asyncio.sleep(0.1)
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        await client.close()


async def idempotent(
    bootstrap_servers: str, mode: Idempotence | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - passed on to the question
) -> bool:
    """Whether a producer for ``bootstrap_servers`` should be idempotent under ``mode``
    (default: the ``FOCUS_KAFKA_IDEMPOTENCE`` setting)."""
    if mode is None:
        from focus_sessions.settings import CommonSettings

        mode = CommonSettings().focus_kafka_idempotence
    if mode != "auto":
        return mode == "on"
    if bootstrap_servers in _granted:
        return _granted[bootstrap_servers]
    if time.monotonic() < _unanswered.get(bootstrap_servers, 0.0):
        return False  # asked a moment ago in vain: do not stall every new producer
    answer = await broker_grants_idempotence(bootstrap_servers, timeout)
    if answer is None:
        _unanswered[bootstrap_servers] = time.monotonic() + _ASK_AGAIN_AFTER
        log.warning(
            "No broker at %s answered whether it grants idempotent producers; producers made "
            "in the next %g s are not idempotent. Set FOCUS_KAFKA_IDEMPOTENCE=on to insist.",
            bootstrap_servers, _ASK_AGAIN_AFTER)
        return False
    _granted[bootstrap_servers] = answer
    log.info("broker at %s %s idempotent producers", bootstrap_servers,
             "grants" if answer else "refuses")
    return answer


def idempotent_sync(bootstrap_servers: str, mode: Idempotence | None = None) -> bool:
    """:func:`idempotent` for code that builds producers outside a coroutine. The question,
    when it is asked, takes one round trip (milliseconds) on a private loop, and at most 3 s
    when no broker answers: a caller on an event loop blocks it meanwhile, so such a caller
    should rather ``await idempotent(...)`` first and pass ``enable_idempotence``."""
    return run_coroutine_sync(idempotent(bootstrap_servers, mode, timeout=3.0))
