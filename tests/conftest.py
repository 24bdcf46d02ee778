"""Shared test setup: the `gpu` marker skips itself on machines without a usable CUDA GPU."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config, items):
    if _gpu_present():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found by nvidia-smi)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_mirror() -> Path:
    """The local mirror of the public input files ($DATA_MIRROR, else ../shared/data)."""
    path = Path(os.environ.get("DATA_MIRROR", REPO.parent / "shared" / "data"))
    if not (path / "5j0n.mrc").is_file():
        pytest.skip(f"no data mirror with 5j0n.mrc at {path}; set DATA_MIRROR")
    return path
