"""Writing experiment outputs: atomically, with a JSON record of what made them.

Every figure or table target writes its files into ``figures/<profile>/`` and a record
``<target>.json`` beside them holding the parameters (config and seed) it ran with, the numbers
it plotted, the files it wrote, and provenance. Files are written under a temporary name and
renamed, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cryo_orient import __version__


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary file gets the usual permissions (``0o666`` less the umask), not ``mkstemp``'s
    owner-only ones, so outputs are readable like any other file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _atomic_write(path, write) -> Path:
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".")
    options = {"dpi": 150, "bbox_inches": "tight"} | kwargs
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **options))


def save_text(text: str, path) -> Path:
    """Write a text file (CSV, Markdown) atomically."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def jsonable(value):
    """Plain JSON types from nested mappings, sequences, NumPy arrays and scalars, and paths."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def git_commit() -> str:
    """The commit the package was run from, with "-dirty" for uncommitted code changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        # Committed outputs (figures/) are rewritten by the very runs that record this: they
        # do not make the code that produced them dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)figures"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_record(out_dir, target: str, *, outputs, parameters: dict, results: dict | None = None) -> Path:
    """Write ``<out_dir>/<target>.json``: the outputs, parameters, results and provenance."""
    outputs = [Path(o).name for o in outputs]
    missing = [o for o in outputs if not (Path(out_dir) / o).is_file()]
    if missing:
        raise FileNotFoundError(f"{target}: outputs {missing} were not written to {out_dir}")
    record = {
        "target": target,
        "outputs": outputs,
        "parameters": jsonable(parameters),
        "results": jsonable(results or {}),
        "provenance": {
            "package_version": __version__,
            "git_commit": git_commit(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return save_text(text, Path(out_dir) / f"{target}.json")


def cached_json(directory, key: dict, compute, *, version: int = 1) -> dict:
    """Memoise ``compute()`` (which returns a JSON-able dict) under a hash of ``key``.

    Long experiments run many independent computations (one recovery per noise level, say);
    caching each one under a key of its inputs lets an interrupted run resume where it stopped
    and a re-run skip what is done, while any change of input recomputes. ``version`` is part of
    the key: bump it when the computation itself changes.
    """
    text = json.dumps(jsonable({"key": key, "version": version}), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = Path(directory) / f"{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["value"]
        except (json.JSONDecodeError, KeyError):
            pass  # a corrupt cache entry is recomputed, never trusted
    value = jsonable(compute())
    save_text(json.dumps({"key": json.loads(text), "value": value}, allow_nan=True) + "\n", path)
    return value
