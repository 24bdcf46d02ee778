"""Run ``aspire_orientations.py`` in ASPIRE's venv from the main one, cached by its inputs.

``experiments/compare.py`` calls :func:`cached_orientations` once per dataset. The result is
stored as ``<cache_dir>/aspire-<dataset>-<key>.npz``, where the key hashes the dataset's cache key
(its content), the image indices, the ASPIRE settings, the interpreter and the script's code; a
re-run with the same inputs reads it back without starting ASPIRE. Standard library and numpy
only (no cryo_orient), like the rest of this folder.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "aspire_orientations.py"
#: What the stored result depends on besides its inputs: the script (it imports nothing else of
#: ours; the conversion to our convention is applied after loading, so it is not part of the key).
CODE = (SCRIPT,)


def cache_path(cache_dir, dataset_path, dataset_key: str, indices, settings: dict, python: str) -> Path:
    """Where the result of these inputs is (or will be) stored."""
    code = hashlib.sha256(b"".join(p.read_bytes() for p in CODE)).hexdigest()
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    payload = {
        "dataset": dataset_key,
        "indices": hashlib.sha256(indices.tobytes()).hexdigest(),
        "settings": settings,
        "code": code,
        "python": str(python),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"aspire-{Path(dataset_path).stem}-{key}.npz"


def cached_orientations(python, dataset_path, dataset_key: str, indices, settings: dict, cache_dir, log=print) -> dict:
    """ASPIRE's rotations (its convention) of the images ``indices``, computed once.

    ``settings``: ``n_theta``, ``n_rad``, ``max_shift``, ``downsample`` (the script's options).
    Returns ``rotations``, ``seconds`` (and per stage), ``aspire_version``, ``parameters``, ``path``.
    """
    path = cache_path(cache_dir, dataset_path, dataset_key, indices, settings, python)
    if not path.is_file():
        if not Path(python).is_file():
            raise FileNotFoundError(
                f"{python} not found: `make compare` installs ASPIRE into .venv-compare (requirements/compare.lock)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        index_file = path.with_name(path.stem + "-indices.npz")
        np.savez(index_file, indices=np.asarray(indices, dtype=np.int64))
        cmd = [
            str(python),
            str(SCRIPT),
            "--dataset",
            str(dataset_path),
            "--indices",
            str(index_file),
            "--out",
            str(path),
        ]
        for name in ("n_theta", "n_rad", "max_shift", "downsample"):
            cmd += [f"--{name.replace('_', '-')}", str(settings[name])]
        log(" ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        finally:
            index_file.unlink(missing_ok=True)
        for line in done.stdout.splitlines():
            log(line)
        if done.returncode != 0:
            raise RuntimeError(f"the ASPIRE script failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    with np.load(path) as f:
        return {
            "rotations": f["rotations"],
            "seconds": float(f["seconds"]),
            "seconds_clmatrix": float(f["seconds_clmatrix"]),
            "seconds_voting": float(f["seconds_voting"]),
            "seconds_rotations": float(f["seconds_rotations"]),
            "aspire_version": str(f["aspire_version"]),
            "parameters": json.loads(str(f["parameters"])),
            "path": path,
        }
