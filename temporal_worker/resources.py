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

from clients import mongo
from generation import media

log = logging.getLogger(__name__)


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
            media_channel=media.open_channel(
                settings.MEDIA_GRPC_TARGET, tls=settings.MEDIA_GRPC_TLS, ca_file=settings.MEDIA_GRPC_CA_FILE
            ),
        )
        log.info(
            "shared clients opened",
            extra={
                "mongo_pool": settings.MONGO_MAX_POOL_SIZE,
                "llm": settings.LLM_BASE_URL,
                "media": settings.MEDIA_GRPC_TARGET,
                "media_tls": settings.MEDIA_GRPC_TLS,
            },
        )
        return clients

    async def aclose(self) -> None:
        await self.llm_http.aclose()
        await self.media_channel.close()
        mongo.close_client()
        log.info("shared clients closed")
