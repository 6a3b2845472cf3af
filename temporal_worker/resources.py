"""The worker's shared clients: opened once at start, closed on shutdown.

Activities receive these in ``__init__``; nothing opens a client or a
connection per activity or per workflow.
"""

import logging
from dataclasses import dataclass

import grpc
import httpx
from django.conf import settings
from pymongo import MongoClient

from generation import mongo

log = logging.getLogger(__name__)

GRPC_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass
class SharedClients:
    mongo: MongoClient
    llm_http: httpx.AsyncClient
    media_channel: grpc.aio.Channel

    @classmethod
    def open(cls, *, max_connections: int) -> "SharedClients":
        """Must run inside the worker's event loop (the gRPC channel binds to it)."""
        headers = {"Authorization": f"Bearer {settings.LLM_API_KEY}"} if settings.LLM_API_KEY else {}
        clients = cls(
            mongo=mongo.get_client(),
            llm_http=httpx.AsyncClient(
                base_url=settings.LLM_BASE_URL,
                headers=headers,
                timeout=httpx.Timeout(settings.LLM_TIMEOUT_SECONDS, connect=10.0),
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            ),
            media_channel=grpc.aio.insecure_channel(settings.MEDIA_GRPC_TARGET, options=GRPC_CHANNEL_OPTIONS),
        )
        log.info(
            "shared clients opened",
            extra={"mongo_pool": settings.MONGO_MAX_POOL_SIZE, "llm": settings.LLM_BASE_URL,
                   "media": settings.MEDIA_GRPC_TARGET},
        )
        return clients

    async def aclose(self) -> None:
        await self.llm_http.aclose()
        await self.media_channel.close()
        mongo.close_client()
        log.info("shared clients closed")
