"""Many machines: ``dreamgen worker`` processes on taskiq + Redis (the ``distributed`` extra).

- :class:`RemoteBackend` — the producer's side: ``DreamGenerator(RemoteBackend(url), ...)``.
- :class:`Worker` — a worker process's side: one pool, jobs from the broker
  (``dreamgen worker --broker redis://HOST:PORT/DB --server URL ...``).
- :class:`RedisJobStore` / :class:`JobStore` — the job records (written before the POST).

Needs ``pip install 'dreamgen_async[distributed]'`` (taskiq, taskiq-redis).
"""

from dreamgen_async.distributed.records import JobRecord, NoWorkerError, RemoteJobError
from dreamgen_async.distributed.remote import RemoteBackend, RemoteJob
from dreamgen_async.distributed.store import JobStore, RedisJobStore
from dreamgen_async.distributed.worker import Worker

__all__ = [
    "JobRecord",
    "JobStore",
    "NoWorkerError",
    "RedisJobStore",
    "RemoteBackend",
    "RemoteJob",
    "RemoteJobError",
    "Worker",
]
