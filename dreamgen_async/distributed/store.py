"""The job-record store: one interface (:class:`JobStore`), a Redis implementation.

Keys (``ns`` is the namespace, ``dreamgen`` by default):

- ``{ns}:job:{prompt_id}`` — a hash, the :class:`~.records.JobRecord` (expires ``ttl`` s
  after its last write);
- ``{ns}:blob:{sha256}`` — a content-addressed blob: an input image, or an output's bytes
  (written once, ``SET NX``; expires ``ttl`` s after it was written);
- ``{ns}:worker:{id}`` — a worker's heartbeat (expires ``lease`` s after its last beat);
- ``{ns}:caps:{id}`` — what a live worker's servers offer (JSON: each server's
  ``/object_info`` as a blob digest, and each server's status), written with its heartbeat
  and expiring with it;
- ``{ns}:acks`` — the channel a producer answers a worker's ``before_post`` call on;
- ``{ns}:cancel`` — the channel a producer's cancel goes out on (the prompt_id);
- ``{ns}:events:{producer}`` — the channel a producer's jobs' events come back on.

Sizes: a Redis string holds at most 512 MB; a blob over ``max_blob`` (256 MiB by default)
is refused with :class:`~dreamgen_async.errors.StorageError` rather than sent.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from dreamgen_async.distributed.records import JobRecord
from dreamgen_async.errors import ConnectError, StorageError

__all__ = ["DEFAULT_TTL", "JobStore", "RedisJobStore", "broker_error"]

DEFAULT_TTL = 24 * 3600
MAX_BLOB = 256 * 1024 * 1024


#: KEYS[1] the record; ARGV[1] the claiming worker, ARGV[2] the heartbeat key prefix.
#: Returns the new attempt count, or 0: no record, settled, cancelled, or held by a live
#: other worker. (Fields are JSON, as :meth:`JobRecord.to_fields` writes them.)
_CLAIM = """
local raw = redis.call('HMGET', KEYS[1], 'state', 'cancel', 'worker', 'attempts')
if not raw[1] then return 0 end
local state = cjson.decode(raw[1])
if state == 'done' or state == 'failed' or state == 'cancelled' then return 0 end
if raw[2] and cjson.decode(raw[2]) == true then return 0 end
local holder = raw[3] and cjson.decode(raw[3]) or cjson.null
if holder ~= cjson.null and holder ~= ARGV[1]
   and redis.call('EXISTS', ARGV[2] .. holder) == 1 then
  return 0
end
local attempts = (raw[4] and tonumber(raw[4]) or 0) + 1
redis.call('HSET', KEYS[1], 'worker', cjson.encode(ARGV[1]), 'attempts', tostring(attempts))
return attempts
"""


def broker_error(url: str, exc: BaseException) -> ConnectError:
    """The one-line error for a broker that cannot be reached."""
    return ConnectError(f"cannot reach the broker at {url}: {exc}")


class JobStore(Protocol):
    """Where distributed jobs' records live (the batch journal's item fields and more)."""

    async def create(self, record: JobRecord) -> bool:
        """Write ``record`` unless one exists for its prompt_id; whether it was written."""
        ...

    async def get(self, prompt_id: str) -> JobRecord | None:
        """The record, or ``None``."""
        ...

    async def update(self, prompt_id: str, **changes: Any) -> JobRecord:
        """Change fields of an existing record; returns it as written."""
        ...

    async def claim(self, prompt_id: str, worker: str) -> JobRecord | None:
        """Make ``worker`` the record's holder, unless a live other worker holds it.

        Returns the record as claimed, or ``None`` (held elsewhere, settled, cancelled, or
        no record).
        """
        ...


class RedisJobStore:
    """:class:`JobStore` on Redis, plus the blobs, heartbeats and channels jobs need."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "dreamgen",
        ttl: int = DEFAULT_TTL,
        max_blob: int = MAX_BLOB,
        max_connections: int = 32,
    ) -> None:
        self.url = url
        self.ns = namespace
        self.ttl = ttl
        self.max_blob = max_blob
        # A bounded pool that makes callers wait for a connection (hundreds of jobs in
        # flight share it), rather than one that fails with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        # Heartbeats and channels on their own connections: never queued behind jobs.
        self.control: aioredis.Redis = aioredis.Redis.from_url(url)
        self._claim = self.redis.register_script(_CLAIM)

    async def open(self) -> None:
        """Check that Redis answers.

        Raises:
            ConnectError: it does not (one line: the URL and the reason).
        """
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            await self.aclose()
            raise broker_error(self.url, exc) from exc

    async def aclose(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        await self.control.aclose()

    # ------------------------------------------------------------------ records

    def _job(self, prompt_id: str) -> str:
        return f"{self.ns}:job:{prompt_id}"

    async def create(self, record: JobRecord) -> bool:
        key = self._job(record.prompt_id)
        fields = record.to_fields()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "prompt_id", fields["prompt_id"])
            pipe.expire(key, self.ttl)
            created, _ = await pipe.execute()
        if created:
            await self.redis.hset(key, mapping=dict[Any, Any](fields))
        return bool(created)

    async def get(self, prompt_id: str) -> JobRecord | None:
        raw: Mapping[Any, Any] = await self.redis.hgetall(self._job(prompt_id))
        if not raw:
            return None
        return JobRecord.from_fields({_text(k): _text(v) for k, v in raw.items()})

    async def update(self, prompt_id: str, **changes: Any) -> JobRecord:
        record = await self.get(prompt_id)
        if record is None:
            record = JobRecord(prompt_id, created=time.time())
        record = replace(record, **changes)
        fields = record.to_fields()
        key = self._job(prompt_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: fields[k] for k in (*changes, "prompt_id")})
            pipe.expire(key, self.ttl)
            await pipe.execute()
        return record

    async def claim(self, prompt_id: str, worker: str) -> JobRecord | None:
        # One script, so the check and the write are atomic and hold no connection between.
        attempts = await self._claim(
            keys=[self._job(prompt_id)], args=[worker, f"{self.ns}:worker:"]
        )
        if not attempts:
            return None
        record = await self.get(prompt_id)
        return None if record is None else replace(record, worker=worker, attempts=int(attempts))

    # ------------------------------------------------------------------ blobs

    async def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 (once); returns the digest."""
        if len(data) > self.max_blob:
            raise StorageError(
                f"{len(data)} bytes is over the broker's blob limit ({self.max_blob} bytes)",
                path=self.url,
            )
        digest = hashlib.sha256(data).hexdigest()
        key = f"{self.ns}:blob:{digest}"
        if not await self.redis.set(key, data, ex=self.ttl, nx=True):
            await self.redis.expire(key, self.ttl)
        return digest

    async def has_blob(self, digest: str) -> bool:
        return bool(await self.redis.exists(f"{self.ns}:blob:{digest}"))

    async def get_blob(self, digest: str) -> bytes:
        data = await self.redis.get(f"{self.ns}:blob:{digest}")
        if not isinstance(data, bytes):
            raise StorageError(f"blob {digest[:16]} expired from the broker", path=self.url)
        return data

    # ------------------------------------------------------------------ workers

    async def beat(self, worker: str, lease: float) -> None:
        """``worker`` is alive for ``lease`` more seconds."""
        await self.control.set(f"{self.ns}:worker:{worker}", str(time.time()), px=int(lease * 1000))

    async def retire(self, worker: str) -> None:
        await self.control.delete(f"{self.ns}:worker:{worker}", f"{self.ns}:caps:{worker}")

    async def put_caps(self, worker: str, caps: Mapping[str, Any], lease: float) -> None:
        """What ``worker``'s servers offer, for ``lease`` seconds (renewed with its beat)."""
        await self.control.set(f"{self.ns}:caps:{worker}", json.dumps(caps), px=int(lease * 1000))

    async def caps(self) -> list[dict[str, Any]]:
        """What each live worker published with :meth:`put_caps`."""
        keys = [key async for key in self.control.scan_iter(match=f"{self.ns}:caps:*", count=100)]
        if not keys:
            return []
        values = await self.control.mget(keys)
        return [json.loads(value) for value in values if value is not None]

    async def worker_alive(self, worker: str) -> bool:
        return bool(await self.control.exists(f"{self.ns}:worker:{worker}"))

    async def workers(self) -> int:
        """How many workers are alive."""
        count = 0
        async for _ in self.control.scan_iter(match=f"{self.ns}:worker:*", count=100):
            count += 1
        return count

    # ------------------------------------------------------------------ channels

    @property
    def cancel_channel(self) -> str:
        return f"{self.ns}:cancel"

    @property
    def ack_channel(self) -> str:
        """Where a producer answers a worker's ``before_post`` call."""
        return f"{self.ns}:acks"

    def events_channel(self, producer: str) -> str:
        return f"{self.ns}:events:{producer}"

    async def publish(self, channel: str, message: Mapping[str, Any] | str) -> int:
        """Send ``message``; how many subscribers received it."""
        text = message if isinstance(message, str) else json.dumps(message)
        receivers: int = await self.control.publish(channel, text)
        return receivers

    def pubsub(self) -> PubSub:
        """A subscriber on its own connection."""
        return self.control.pubsub()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
