"""The process-wide PyMongo client.

Created once in ``GenerationConfig.ready()`` with ``connect=False``: nothing
touches the network until the first operation. Each process (and each forked
child: PyMongo detects the fork and starts fresh pools) opens at most
``MONGO_MAX_POOL_SIZE`` connections, plus the driver's monitoring sockets.
"""

import threading

from django.conf import settings
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from clients import tracing


class PoolStats(monitoring.ConnectionPoolListener):
    """Counts the client's pooled connections, for health output and tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self.peak_open = 0
        self.created = 0

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        with self._lock:
            self.created += 1
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        with self._lock:
            self.open -= 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"open": self.open, "peak_open": self.peak_open, "created": self.created}

    # The listener interface requires the rest; they carry nothing we count.
    def pool_created(self, event): ...
    def pool_ready(self, event): ...
    def pool_cleared(self, event): ...
    def pool_closed(self, event): ...
    def connection_ready(self, event): ...
    def connection_check_out_started(self, event): ...
    def connection_check_out_failed(self, event): ...
    def connection_checked_out(self, event): ...
    def connection_checked_in(self, event): ...


_client: MongoClient | None = None
pool_stats = PoolStats()


def init_client() -> MongoClient:
    """Create the shared client (idempotent)."""
    global _client
    if _client is None:
        _client = MongoClient(
            settings.MONGO_URI,
            connect=False,
            maxPoolSize=settings.MONGO_MAX_POOL_SIZE,
            serverSelectionTimeoutMS=settings.MONGO_SERVER_SELECTION_TIMEOUT_MS,
            appname="worldgen",
            event_listeners=[pool_stats, *tracing.mongo_listeners()],
        )
    return _client


def get_client() -> MongoClient:
    return init_client()


def get_db() -> Database:
    return get_client()[settings.MONGO_DB]


def close_client() -> None:
    global _client
    if _client is not None:
        _client.close()
        _client = None
