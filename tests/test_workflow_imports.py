"""generation/ imports nothing from Django: its workflow modules are re-imported by the Temporal
sandbox, where settings are not available. Every module of the package is checked, plus the
benchmark's baseline workflows."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.fast

GENERATION_MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "generation").rglob("*.py")
    if path.name != "__init__.py" and "protos" not in path.parts
)


@pytest.mark.parametrize("module", [*GENERATION_MODULES, "benchmarks.baseline"])
def test_module_imports_nothing_from_django(module):
    code = (
        f"import sys, {module}\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} pulled in: {result.stdout}"


def test_every_generation_module_is_checked():
    assert {"generation.workflows", "generation.activities", "generation.store", "generation.llm"} <= set(
        GENERATION_MODULES
    )
