"""A small HTTP health endpoint for the worker: ``GET /healthz``.

Answers 200 when every check passes and 503 otherwise, with a JSON body
naming each dependency. Runs on the worker's own event loop.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[dict]]
CHECK_TIMEOUT_SECONDS = 3.0


class HealthServer:
    def __init__(self, *, host: str, port: int, checks: dict[str, Check], info: dict) -> None:
        self.host, self.port = host, port
        self.checks, self.info = checks, info
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint listening", extra={"url": f"http://{self.host}:{self.port}/healthz"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def report(self) -> tuple[bool, dict]:
        results = await asyncio.gather(*(self._run(check) for check in self.checks.values()))
        body = dict(self.info)
        body.update(zip(self.checks, results, strict=True))
        healthy = all(result["ok"] for result in results)
        body["status"] = "ok" if healthy else "unhealthy"
        return healthy, body

    @staticmethod
    async def _run(check: Check) -> dict:
        try:
            return {"ok": True, **await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)}
        except Exception as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers carry nothing we need
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1] in ("/healthz", "/"):
                healthy, body = await self.report()
                status = "200 OK" if healthy else "503 Service Unavailable"
            else:
                status, body = "404 Not Found", {"error": "try GET /healthz"}
            payload = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
