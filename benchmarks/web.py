"""Benchmark: latency of the admin world list, the feed API and the viewer's world list over seeded (fake) worlds.

Starts SecantusDB in memory on a free port and a temporary SQLite database, migrates,
seeds ``--worlds`` worlds holding ``--posts`` posts (``worlds.seeding``), then times
``--requests`` in-process requests per endpoint with Django's test ``Client`` (full
middleware, a superuser's session; no HTTP server or network in between), after a few
warm-up requests. Prints p50/p95/max in ms per endpoint and writes ``--json``.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from localstack import servers

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 5


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=10_000)
    parser.add_argument("--posts", type=int, default=100_000, help="posts in all")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    parser.add_argument("--target-p95-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1, help="random seed (which worlds and pages are asked for)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def endpoints(world_ids: list[int], pages: int, viewer_pages: int, rng: random.Random) -> dict:
    """name -> function returning the next URL to ask for."""
    other_pages = [p for p in (2, pages // 2, pages) if p > 1] or [1]
    return {
        "admin world list, page 1": lambda: "/admin/worlds/world/",
        "admin world list, other pages": lambda: f"/admin/worlds/world/?p={rng.choice(other_pages)}",
        "feed API, first page": lambda: f"/api/worlds/{rng.choice(world_ids)}/posts/",
        "feed API, offset": lambda: f"/api/worlds/{rng.choice(world_ids)}/posts/?limit=5&offset=5",
        "viewer world list, any page": lambda: f"/worlds/?page={rng.randint(1, viewer_pages)}",
    }


def measure(client, next_url, requests: int) -> dict:
    for _ in range(WARMUP):
        _get(client, next_url())
    timings, cpu = [], []
    for _ in range(requests):
        url = next_url()
        started, started_cpu = time.perf_counter(), time.process_time()
        _get(client, url)
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    ordered = sorted(timings)
    return {
        "requests": requests,
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(ordered[-1], 1),
        # this process's CPU time (not SecantusDB's): less sensitive to other load on the machine
        "cpu_p50_ms": round(statistics.median(cpu), 1),
    }


def _get(client, url: str):
    response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
    return response


def run(opts: argparse.Namespace) -> dict:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from worlds.admin import WorldAdmin
    from worlds.models import World
    from worlds.seeding import seed_worlds
    from worlds.selectors import VIEWER_WORLDS_PER_PAGE

    call_command("migrate", verbosity=0)
    print(f"seeding FAKE content: {opts.worlds} worlds, {opts.posts} posts", flush=True)
    seeded = seed_worlds(
        worlds=opts.worlds,
        posts=opts.posts,
        progress=lambda r: print(f"  {r.worlds} worlds, {r.posts} posts ({r.seconds:.1f}s)", flush=True),
    )
    admin = User.objects.create_superuser("bench-admin", password=None)
    client = Client()
    client.force_login(admin)
    world_ids = list(World.objects.values_list("pk", flat=True))
    pages = -(-len(world_ids) // WorldAdmin.list_per_page)
    viewer_pages = -(-len(world_ids) // VIEWER_WORLDS_PER_PAGE)
    rng = random.Random(opts.seed)
    results = {}
    for name, next_url in endpoints(world_ids, pages, viewer_pages, rng).items():
        results[name] = measure(client, next_url, opts.requests)
        print(f"  {name}: {results[name]}", flush=True)
    return {
        "seeding": {
            "worlds": seeded.worlds,
            "posts": seeded.posts,
            "characters": seeded.characters,
            "seconds": round(seeded.seconds, 1),
        },
        "endpoints": results,
    }


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="worldgen-bench-web-"))
    port = servers.free_port()
    mongo = servers.start(
        "SecantusDB", servers.secantus_args(port=port, storage=None), log_path=workdir / "secantus.log", cwd=ROOT
    )
    try:
        servers.wait_for_port(mongo, port, timeout=90)
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "worldgen_site.settings",
                "DEBUG": "false",
                "LOG_LEVEL": "WARNING",
                "ALLOWED_HOSTS": "testserver",
                "MONGO_URI": servers.mongo_uri(port),
                "MONGO_DB": "worldgen_bench_web",
                "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            }
        )
        import django

        django.setup()
        figures = run(opts)
    finally:
        mongo.stop()
    load = os.getloadavg()
    report = {
        "machine": f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end",
        "options": {k: str(v) for k, v in vars(opts).items()},
        **figures,
    }
    print(_table(figures["endpoints"], opts.target_p95_ms))
    print(f"seeding: {figures['seeding']}; {report['machine']}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r["p95_ms"] < opts.target_p95_ms for r in figures["endpoints"].values()) else 1


def _table(results: dict, target: float) -> str:
    lines = [
        f"{'endpoint':<32}{'requests':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'cpu p50 ms':>12}"
        f"  p95 < {target:g} ms"
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<32}{r['requests']:>10}{r['p50_ms']:>10}{r['p95_ms']:>10}{r['max_ms']:>10}"
            f"{r['cpu_p50_ms']:>12}  "
            f"{'yes' if r['p95_ms'] < target else 'NO'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
