"""A real TCP proxy for tests: forwards bytes both ways and can hold back the replies (server to
client) for a while, so a call reaches the server but its answer comes too late."""

import asyncio
import threading

from localstack import servers


class SlowReplyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.port = servers.free_port()
        self.reply_delay = 0.0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port), self.loop
        ).result(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _connection(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        await asyncio.gather(
            self._pump(client_reader, server_writer, replies=False),
            self._pump(server_reader, client_writer, replies=True),
            return_exceptions=True,
        )

    async def _pump(self, reader, writer, *, replies: bool) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.reply_delay:
                    await asyncio.sleep(self.reply_delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
