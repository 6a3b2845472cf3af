"""Start, wait for and stop the local servers. Used by the demo and the tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from generation import search_attributes

VENV_BIN = Path(sys.executable).parent


class StackError(Exception):
    """A local server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0, sig: int | None = None) -> int:
        """``sig`` (default SIGTERM) to the process group; SIGKILL whatever is left after ``timeout``."""
        self.signal(signal.SIGTERM if sig is None else sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)


def start(
    name: str,
    args: list[str],
    *,
    log_path: Path,
    env: dict | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ManagedProcess:
    """Start ``args`` in its own process group (as ``user`` if given), output written to ``log_path``
    (truncated)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user,
        )
    return ManagedProcess(name, popen, log_path)


def wait_for_port(process: ManagedProcess, port: int, *, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise StackError(f"{process.name} did not open port {port} within {timeout:.0f}s:\n{process.log_tail()}")


def wait_for_mongo(process: ManagedProcess, port: int, *, timeout: float = 60.0) -> None:
    """Until the MongoDB-wire server answers a ping (an open port alone is not an answering server)."""
    import pymongo

    wait_for_port(process, port, timeout=timeout)
    client = pymongo.MongoClient(mongo_uri(port), serverSelectionTimeoutMS=2000, connect=False)
    deadline, error = time.monotonic() + timeout, ""
    try:
        while time.monotonic() < deadline and process.alive():
            try:
                client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError as exc:
                error = str(exc).splitlines()[0]
                time.sleep(0.5)
    finally:
        client.close()
    raise StackError(
        f"{process.name} on port {port} did not answer a ping within {timeout:.0f}s ({error}):\n{process.log_tail()}"
    )


def temporal_dev_server_args(*, port: int, ui_port: int | None, db_file: Path | None = None) -> list[str]:
    """``temporal server start-dev``: in memory unless ``db_file`` is given; no UI if ``ui_port`` is None."""
    args = [
        str(VENV_BIN / "temporal"),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warn",
        # Task-queue fairness: activities carry a per-world fairness key.
        "--dynamic-config-value",
        "matching.enableFairness=true",
    ]
    # worldgen's search attributes (WorldId, ...): the local server has them as production must.
    for name, kind in search_attributes.DECLARED.items():
        args += ["--search-attribute", f"{name}={kind}"]
    args += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    if db_file is not None:
        args += [
            "--db-filename",
            str(db_file),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
    return args


def secantus_args(*, port: int, storage: Path | None) -> list[str]:
    """SecantusDB, a MongoDB-wire server; in memory if ``storage`` is None."""
    return [
        str(VENV_BIN / "secantusd-py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        ":memory:" if storage is None else str(storage),
        "--log-level",
        "WARNING",
    ]


def mongo_uri(port: int) -> str:
    # retryWrites=false: SecantusDB's retryable-write bookkeeping slows long runs.
    return f"mongodb://127.0.0.1:{port}/?retryWrites=false"
