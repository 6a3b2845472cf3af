"""Fails when a lock file is stale against the requirements files it was compiled from (``make lock``).

Checks, with the standard library only (CI runs it before anything is installed):
- every ``name==version`` pin of requirements.txt is in requirements.lock and requirements-dev.lock, and
  every pin of requirements-dev.txt in requirements-dev.lock, at the same version;
- every locked package carries hashes (``pip install --require-hashes`` needs them);
- the runtime lock is the dev lock's subset, at the same versions (production installs what was tested).
"""

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            found[normalize(match[1])] = match[2]
    return found


def locked(path: Path) -> tuple[dict[str, str], list[str]]:
    """A lock's versions, and the packages that have no hash."""
    versions: dict[str, str] = {}
    unhashed = []
    entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    for entry in entries:
        match = PIN.match(entry)
        if match:
            versions[normalize(match[1])] = match[2]
            if "--hash=sha256:" not in entry:
                unhashed.append(match[1])
    return versions, unhashed


def problems(root: Path) -> list[str]:
    found, locks = [], {}
    for lock_name in ("requirements.lock", "requirements-dev.lock"):
        path = root / lock_name
        locks[lock_name], unhashed = locked(path) if path.exists() else ({}, [])
        if not locks[lock_name]:
            found.append(f"{lock_name} is missing or empty")
        found += [f"{lock_name}: {name} has no hash" for name in unhashed]
    runtime, dev = locks["requirements.lock"], locks["requirements-dev.lock"]
    wanted = [("requirements.txt", "requirements.lock"), ("requirements.txt", "requirements-dev.lock")]
    wanted.append(("requirements-dev.txt", "requirements-dev.lock"))
    for source, lock_name in wanted:
        for name, version in pins(root / source).items():
            if locks[lock_name].get(name) != version:
                have = locks[lock_name].get(name, "nothing")
                found.append(f"{source} pins {name}=={version}, {lock_name} has {have}")
    for name, version in runtime.items():
        if dev.get(name) != version:
            found.append(f"requirements.lock has {name}=={version}, requirements-dev.lock {dev.get(name, 'nothing')}")
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    stale = problems(root)
    for problem in stale:
        print(f"lock: {problem}", file=sys.stderr)
    if stale:
        print("lock: the lock files are stale; run `make lock` and commit them", file=sys.stderr)
        sys.exit(1)
    print("lock: requirements.lock and requirements-dev.lock match the requirements files")
