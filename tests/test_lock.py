"""The lock files (make lock) match requirements*.txt, with hashes; .ci/check_lock.py says when they do not."""

import shutil
import subprocess
import sys

from tests.conftest import ROOT

FILES = ("requirements.txt", "requirements-dev.txt", "requirements.lock", "requirements-dev.lock")


def check(root) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci/check_lock.py"), str(root)], capture_output=True, text=True, timeout=30
    )


def copy(tmp_path):
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_committed_locks_are_fresh():
    result = check(ROOT)
    assert result.returncode == 0, result.stderr


def test_a_pin_changed_without_make_lock_is_stale(tmp_path):
    root = copy(tmp_path)
    text = (root / "requirements.txt").read_text()
    (root / "requirements.txt").write_text(text.replace("httpx==0.28.1", "httpx==0.28.2"))
    result = check(root)
    assert result.returncode == 1
    assert "requirements.txt pins httpx==0.28.2, requirements.lock has 0.28.1" in result.stderr
    assert "run `make lock`" in result.stderr


def test_a_new_requirement_and_a_lock_without_hashes_are_stale(tmp_path):
    root = copy(tmp_path)
    with open(root / "requirements-dev.txt", "a") as file:
        file.write("left-pad==1.0.0  # new\n")
    lock = root / "requirements.lock"
    lock.write_text("\n".join(line for line in lock.read_text().splitlines() if "--hash" not in line))
    result = check(root)
    assert result.returncode == 1
    assert "requirements-dev.txt pins left-pad==1.0.0, requirements-dev.lock has nothing" in result.stderr
    assert "requirements.lock: django has no hash" in result.stderr
