"""The taskiq broker the producer and the workers share: a Redis stream, acknowledged delivery.

A job's message is acknowledged after its task returns (taskiq's ``WHEN_SAVED``, and no
result backend: results travel in the job record). A worker killed mid-job leaves its
messages unacknowledged; after ``takeover`` seconds another worker claims them
(``XAUTOCLAIM``). taskiq-redis's stream broker claims only after reading new messages; this
one also claims when the stream is idle, so a dead worker's jobs are taken over even when
nothing new arrives.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from taskiq import AckableMessage
from taskiq_redis import RedisStreamBroker

__all__ = ["DEFAULT_TAKEOVER", "TASK_NAME", "JobBroker", "make_broker"]

#: The one task a worker runs: a job of a producer.
TASK_NAME = "dreamgen.run"
#: Seconds after which a dead worker's jobs are taken over by another worker.
DEFAULT_TAKEOVER = 60.0


class JobBroker(RedisStreamBroker):
    """taskiq-redis's stream broker, claiming idle messages also when no new one arrives."""

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        async with Redis(connection_pool=self.connection_pool) as conn:
            while True:
                fetched: Any = await conn.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    {self.queue_name: ">"},
                    block=self.block,
                    noack=False,
                    count=self.count,
                )
                for stream, messages in fetched or ():
                    for msg_id, msg in messages:
                        yield AckableMessage(
                            data=msg[b"data"], ack=self._ack_generator(msg_id, stream)
                        )
                claimed: Any = await conn.xautoclaim(
                    name=self.queue_name,
                    groupname=self.consumer_group_name,
                    consumername=self.consumer_name,
                    min_idle_time=self.idle_timeout,
                    count=self.unacknowledged_batch_size,
                )
                for msg_id, msg in claimed[1]:
                    if msg is None:  # deleted from the stream meanwhile
                        continue
                    yield AckableMessage(
                        data=msg[b"data"], ack=self._ack_generator(msg_id, self.queue_name)
                    )


def make_broker(
    url: str,
    *,
    queue: str = "dreamgen:jobs",
    takeover: float = DEFAULT_TAKEOVER,
    consumer: str | None = None,
) -> JobBroker:
    """The broker on ``url`` (``redis://HOST:PORT/DB``); ``takeover``: see the module."""
    return JobBroker(
        url,
        queue_name=queue,
        consumer_group_name="dreamgen-workers",
        consumer_name=consumer,
        consumer_id="0",
        xread_block=min(1000, max(100, int(takeover * 250))),
        idle_timeout=int(takeover * 1000),
    )
