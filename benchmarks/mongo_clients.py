"""Benchmark (issue 14): the worker's Mongo access, sync PyMongo in threads against ``AsyncMongoClient``.

``python -m benchmarks.mongo_clients [--activities 2000] [--concurrency 50] [--rounds 2] [--json FILE]``

Starts SecantusDB in memory and runs the same workload with each client, alternating, ``--rounds`` times:
``--activities`` activity-shaped units, ``--concurrency`` at once, each making the Mongo calls a post's
activity makes (an existence check, a profile read, a task record, a ledger update, the content write).

- ``sync-threads``: what the worker does today. A shared ``MongoClient``, and every call goes through
  ``asyncio.to_thread`` on a pool as large as the connection pool.
- ``async``: one ``AsyncMongoClient`` with the same pool size, awaited on the event loop.

Reports activities/s, and the client process's CPU per activity. That CPU is the figure that carries over
to a real ``mongod``: SecantusDB's own CPU per operation, about 2 ms, is far above a real server's.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pymongo import AsyncMongoClient, MongoClient, ReturnDocument

from benchmarks.generation import cpu_seconds
from localstack import servers

POOL = 20


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mongo_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each client, alternating")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def seed(db, characters: int) -> None:
    db.characters.insert_many([{"_id": f"c{i}", "handle": f"@c{i}", "bio": "x" * 400} for i in range(characters)])


async def sync_threads(uri: str, opts: argparse.Namespace, tag: str) -> None:
    client = MongoClient(uri, maxPoolSize=POOL)
    db = client.bench
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(POOL))

    async def activity(n: int) -> None:
        key = f"{tag}-{n}"
        await asyncio.to_thread(db.posts.find_one, {"_id": key}, {"_id": 1})
        await asyncio.to_thread(db.characters.find_one, {"_id": f"c{n % 50}"})
        await asyncio.to_thread(db.tasks.update_one, {"_id": key}, {"$set": {"status": "running"}}, True)
        await asyncio.to_thread(
            db.ledger.find_one_and_update,
            {"_id": tag},
            {"$inc": {"tokens": 10}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        await asyncio.to_thread(db.posts.update_one, {"_id": key}, {"$set": {"caption": "c" * 200}}, True)

    await _run(activity, opts)
    client.close()


async def async_client(uri: str, opts: argparse.Namespace, tag: str) -> None:
    client: AsyncMongoClient = AsyncMongoClient(uri, maxPoolSize=POOL)
    db = client.bench

    async def activity(n: int) -> None:
        key = f"{tag}-{n}"
        await db.posts.find_one({"_id": key}, {"_id": 1})
        await db.characters.find_one({"_id": f"c{n % 50}"})
        await db.tasks.update_one({"_id": key}, {"$set": {"status": "running"}}, True)
        await db.ledger.find_one_and_update(
            {"_id": tag}, {"$inc": {"tokens": 10}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        await db.posts.update_one({"_id": key}, {"$set": {"caption": "c" * 200}}, True)

    await _run(activity, opts)
    await client.close()


async def _run(activity, opts: argparse.Namespace) -> None:
    gate = asyncio.Semaphore(opts.concurrency)

    async def bounded(n: int) -> None:
        async with gate:
            await activity(n)

    await asyncio.gather(*(bounded(n) for n in range(opts.activities)))


CLIENTS = {"sync-threads": sync_threads, "async": async_client}


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    port = servers.free_port()
    logs = Path(tempfile.mkdtemp(prefix="worldgen-bench-mongo-"))
    server = servers.start("SecantusDB", servers.secantus_args(port=port, storage=None), log_path=logs / "mongo.log")
    try:
        servers.wait_for_port(server, port)
        uri = servers.mongo_uri(port)
        with MongoClient(uri) as setup:
            seed(setup.bench, 50)
        runs: dict[str, list[dict]] = {name: [] for name in CLIENTS}
        for round_ in range(opts.rounds):
            for name, workload in CLIENTS.items():
                client_cpu, server_cpu = time.process_time(), cpu_seconds(server.popen.pid)
                started = time.monotonic()
                asyncio.run(workload(uri, opts, f"{name}-{round_}"))
                wall = time.monotonic() - started
                runs[name].append(
                    {
                        "wall_s": round(wall, 2),
                        "activities_per_s": round(opts.activities / wall, 1),
                        "client_cpu_ms_per_activity": round(
                            1000 * (time.process_time() - client_cpu) / opts.activities, 3
                        ),
                        "server_cpu_ms_per_activity": round(
                            1000 * (cpu_seconds(server.popen.pid) - server_cpu) / opts.activities, 3
                        ),
                    }
                )
    finally:
        server.stop()
    report = {
        "machine": f"{os.cpu_count()} cores",
        "options": {k: str(v) for k, v in vars(opts).items()},
        "pool": POOL,
        "mongo_calls_per_activity": 5,
        "clients": {
            name: {
                "runs": figures,
                **{
                    key: statistics.median(run[key] for run in figures)
                    for key in ("activities_per_s", "client_cpu_ms_per_activity", "server_cpu_ms_per_activity")
                },
            }
            for name, figures in runs.items()
        },
    }
    print(json.dumps(report, indent=2))
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
