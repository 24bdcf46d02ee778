"""ruff's lint and format check over the code, as `make lint` runs them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINTED = ["lib", "tests", "benchmarks", "experiments"]


def _ruff() -> str:
    # The pinned one of this environment (ruff in the lock files), else one on the PATH.
    beside = Path(sys.executable).parent / "ruff"
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (it is in requirements/*.lock: `make install`)")
    return found


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    out = subprocess.run([_ruff(), *command, *LINTED], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_sees_a_problem(tmp_path):
    # The check can fail: an unused import and unformatted code are reported.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx=[1,\n 2]\n")
    assert (
        subprocess.run([_ruff(), "check", "--isolated", "--select", "F401", str(bad)], capture_output=True).returncode
        != 0
    )
    assert subprocess.run([_ruff(), "format", "--isolated", "--check", str(bad)], capture_output=True).returncode != 0
