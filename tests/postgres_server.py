"""PostgreSQL for the test suite: a throwaway cluster on a free port.

``make test`` sets ``WORLDGEN_TEST_DATABASE=postgresql`` (production's database) and installs Debian's
``postgresql`` package for its binaries; ``make test-fast`` and a bare ``pytest`` use SQLite.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from localstack import servers

USER = "worldgen"


def binaries() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("WORLDGEN_TEST_DATABASE=postgresql needs PostgreSQL: apt-get install postgresql")


class PostgresServer:
    """``initdb`` and ``postgres`` in a temporary directory, trust auth on 127.0.0.1 only. As root they run as
    the ``postgres`` user (PostgreSQL refuses root)."""

    def __init__(self, log_path: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="worldgen-postgres-"))
        data = self.directory / "data"
        user = "postgres" if os.geteuid() == 0 else None
        if user:
            shutil.chown(self.directory, user)
        bin_dir = binaries()
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            user=user,
        )
        self.port = servers.free_port()
        # Durability is not needed for a test database: no fsync, no full-page writes. Connections are logged
        # (tests count them).
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"]
        settings.append("log_connections=on")
        args = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1", "-k", ""]
        self.process = servers.start(
            "postgresql", [*args, *(a for s in settings for a in ("-c", s))], log_path=log_path, user=user
        )
        self._wait_until_ready()

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if not self.process.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.process.log_tail()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: it ends open sessions (SIGTERM waits for them: 15 s here).
        self.process.stop(timeout=10, sig=signal.SIGINT)
        shutil.rmtree(self.directory, ignore_errors=True)
