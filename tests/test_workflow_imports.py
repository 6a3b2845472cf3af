"""Workflow modules must import nothing from Django (the sandbox re-imports them)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.fast

SANDBOXED_MODULES = ["generation.workflows", "generation.baseline", "generation.activities", "generation.contracts", "generation.llm",
                     "generation.media", "generation.store"]


@pytest.mark.parametrize("module", SANDBOXED_MODULES)
def test_module_imports_nothing_from_django(module):
    code = (
        f"import sys, {module}\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} pulled in: {result.stdout}"
