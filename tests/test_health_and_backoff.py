"""The health endpoint and the start-up backoff, in process."""

import asyncio

import httpx
import pytest

from temporal_worker.backoff import DependencyUnavailable, wait_until_ready
from temporal_worker.health import HealthServer


async def failing_check() -> dict:
    raise ConnectionError("connection refused")


async def passing_check() -> dict:
    return {"address": "here"}


async def slow_check() -> dict:
    await asyncio.sleep(60)
    return {}


def fetch(checks: dict, path: str = "/healthz") -> httpx.Response:
    async def run():
        server = HealthServer(host="127.0.0.1", port=0, checks=checks, info={"task_queues": ["q"]})
        await server.start()
        try:
            async with httpx.AsyncClient() as http:
                return await http.get(f"http://127.0.0.1:{server.port}{path}", timeout=10)
        finally:
            await server.close()

    return asyncio.run(run())


def test_health_is_ok_when_every_check_passes():
    response = fetch({"temporal": passing_check, "mongo": passing_check})
    assert response.status_code == 200
    assert response.json() == {
        "task_queues": ["q"],
        "temporal": {"ok": True, "address": "here"},
        "mongo": {"ok": True, "address": "here"},
        "status": "ok",
    }


def test_health_is_503_and_names_the_failing_dependency():
    response = fetch({"temporal": passing_check, "mongo": failing_check})
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["temporal"]["ok"]
    assert body["mongo"] == {"ok": False, "error": "connection refused"}


def test_a_hanging_check_times_out_instead_of_hanging_the_endpoint():
    response = fetch({"temporal": slow_check})
    assert response.status_code == 503 and response.json()["temporal"]["ok"] is False


def test_unknown_path_is_404():
    assert fetch({"temporal": passing_check}, "/metrics").status_code == 404


def test_backoff_retries_until_the_dependency_answers():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "connected"

    result = asyncio.run(wait_until_ready(flaky, what="Thing", address="a:1", timeout=10, first_delay=0.01))
    assert result == "connected" and len(calls) == 3


def test_backoff_gives_up_with_a_message_naming_the_dependency():
    async def down():
        raise ConnectionError("refused")

    with pytest.raises(DependencyUnavailable, match=r"Thing at a:1 is unreachable after 0s and \d+ attempts: refused"):
        asyncio.run(wait_until_ready(down, what="Thing", address="a:1", timeout=0.2, first_delay=0.05))
