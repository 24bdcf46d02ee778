"""RELION's auto-refine as the anchor a refinement is measured against.

:func:`auto_refine` runs RELION 3.1's ``relion_refine_mpi --auto_refine --split_random_halves``
(Debian's ``relion`` package) on a particle STAR file and reads back what it wrote: the refined
orientations and origins (in this package's conventions, through
:func:`cryo_orient.data.relion.read_particle_table`), the final resolution of its gold-standard
half maps, the resolution of every iteration and the wall time. Two modes:

``"global"``
    RELION's usual run from a reference alone: exhaustive searches on the HEALPix grid of
    ``healpix_order`` (order 2: 15°) until the sampling reaches ``auto_local_healpix_order``, then
    local searches. The STAR file's angles are ignored.
``"local"``
    Local searches from the STAR file's angles from the first iteration on (``--sigma_ang``, a
    Gaussian prior of that width around each particle's given angles, searched over ±3σ), at the
    sampling of ``healpix_order`` (order 3: 7.5°): RELION refining the same start as ours.

RELION expects normalised particles (background of mean 0 and standard deviation 1, RELION's
contrast), as :func:`cryo_orient.simulation.noise.normalize_background` writes them; its image
names are relative to the folder it runs in, which is the STAR file's folder here.

A run is cached: ``relion.json`` in ``out_dir`` records the command and the sha256 of its inputs
(the STAR file, the reference and every stack the STAR file names); a later call with the same
command and inputs and a complete output reads it instead of running again. RELION's log goes to
``relion.log`` as it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import starfile

from cryo_orient.artifacts import file_lock, jsonable, save_text
from cryo_orient.data.mrc import content_digest
from cryo_orient.data.relion import read_particle_table
from cryo_orient.validation import InputError, RunError, UnavailableError, choice

__all__ = ["MODES", "RelionRefinement", "auto_refine", "auto_refine_command"]

MODES = ("global", "local")
_PROGRAM = "relion_refine_mpi"
_RECORD = "relion.json"


@dataclasses.dataclass(frozen=True)
class RelionRefinement:
    """What one RELION auto-refine wrote, read back.

    Attributes
    ----------
    quaternions : ndarray, shape (n, 4)
        Refined orientations (scalar-last, this package's projection convention).
    shifts : ndarray, shape (n, 2)
        Refined ``(dy, dx)`` in pixels (the negated ``rlnOriginX/YAngst`` over the pixel size).
    resolution : float
        Å: the final resolution RELION reports (the half maps' FSC 0.143, without masking).
    iterations : list of dict
        ``{"iteration", "resolution"}`` per iteration (``rlnCurrentResolution`` of its model).
    seconds : float
        Wall time of the run (of the run that made the cached result, when read from the cache).
    map, half1, half2, data : Path
        The final map, the unfiltered half maps and the final particle STAR file.
    command : list of str
    """

    quaternions: np.ndarray
    shifts: np.ndarray
    resolution: float
    iterations: list
    seconds: float
    map: Path
    half1: Path
    half2: Path
    data: Path
    command: list


def auto_refine_command(
    star,
    reference,
    out_dir,
    *,
    mode="global",
    particle_diameter,
    initial_lowpass,
    healpix_order=None,
    auto_local_healpix_order=4,
    sigma_ang=None,
    offset_range=6.0,
    offset_step=1.0,
    ctf=True,
    mpi=3,
    threads=1,
    random_seed=0,
    extra=(),
) -> list[str]:
    """The ``mpirun ... relion_refine_mpi`` command line of :func:`auto_refine` (see there)."""
    mode = choice(mode, "mode", MODES)
    if int(mpi) < 3:
        raise InputError(
            f"RELION's gold-standard refinement needs at least 3 MPI processes (a leader and one per half), "
            f"got mpi={mpi}; give mpi=3"
        )
    if mode == "local" and not (sigma_ang and sigma_ang > 0):
        raise InputError("a local RELION refinement needs sigma_ang (degrees), e.g. a third of the start's error")
    if healpix_order is None:
        healpix_order = 2 if mode == "global" else 3
    if mode == "local":
        auto_local_healpix_order = min(auto_local_healpix_order, healpix_order)
    command = ["mpirun", "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    command += ["-n", str(int(mpi)), _PROGRAM]
    command += ["--o", str(Path(out_dir) / "run"), "--i", str(star), "--ref", str(reference)]
    command += ["--auto_refine", "--split_random_halves", "--firstiter_cc", "--ini_high", f"{initial_lowpass:g}"]
    command += ["--particle_diameter", f"{particle_diameter:g}", "--flatten_solvent", "--zero_mask"]
    command += ["--healpix_order", str(int(healpix_order))]
    command += ["--auto_local_healpix_order", str(int(auto_local_healpix_order))]
    command += ["--offset_range", f"{offset_range:g}", "--offset_step", f"{offset_step:g}", "--oversampling", "1"]
    command += ["--sym", "C1", "--low_resol_join_halves", "40", "--norm", "--scale", "--pad", "2"]
    command += ["--dont_combine_weights_via_disc", "--pool", "30", "--j", str(int(threads))]
    # RELION seeds its half-set split and sampling from the clock unless given a seed.
    command += ["--random_seed", str(int(random_seed))]
    if ctf:
        command.append("--ctf")
    if mode == "local":
        command += ["--sigma_ang", f"{sigma_ang:g}"]
    return command + [str(e) for e in extra]


def _resolution(model_star: Path) -> float:
    general = starfile.read(model_star, always_dict=True)["model_general"]  # one row: a dict (or a frame)
    value = general["rlnCurrentResolution"]
    return float(value.iloc[0] if hasattr(value, "iloc") else value)


def _iterations(out_dir: Path) -> list[dict]:
    """The resolution of every iteration RELION ran (its iteration 0, the start, has none)."""
    rows = []
    for path in sorted(out_dir.glob("run_it[0-9][0-9][0-9]_half1_model.star")):
        iteration = int(re.search(r"_it(\d+)_", path.name).group(1))
        resolution = _resolution(path)
        if iteration > 0 and np.isfinite(resolution):
            rows.append({"iteration": iteration, "resolution": resolution})
    return rows


def _sha256(path: Path) -> str:
    """sha256 of a file's content; of an MRC file's shape, voxel size and data only
    (:func:`cryo_orient.data.mrc.content_digest`: a rewritten identical stack must still match)."""
    if path.suffix in (".mrc", ".mrcs"):
        return content_digest(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _input_digests(star: Path, reference: Path, table) -> dict:
    """sha256 of every file the run reads, by path (the cache key beside the command)."""
    stacks = sorted({path for _, path in table.image_names()})
    return {str(path): _sha256(path) for path in [star, reference, *stacks]}


def _read(out_dir: Path, record: dict) -> RelionRefinement:
    table = read_particle_table(out_dir / "run_data.star")
    keys = [_image_key(name) for name in table.particles["rlnImageName"]]
    if keys != record["image_keys"]:
        # Should RELION write its particles in another order (3.1.3 keeps the input's), put them back.
        position = {key: k for k, key in enumerate(keys)}
        missing = [key for key in record["image_keys"] if key not in position]
        if missing:
            raise RunError(
                f"{out_dir / 'run_data.star'} lacks {len(missing)} of the input's particles, e.g. {missing[0]}"
            )
        order = np.array([position[key] for key in record["image_keys"]])
        table = table.subset(order)
    return RelionRefinement(
        quaternions=table.quaternions(),
        shifts=table.shifts(),
        resolution=_resolution(out_dir / "run_model.star"),
        iterations=_iterations(out_dir),
        seconds=float(record["seconds"]),
        map=out_dir / "run_class001.mrc",
        half1=out_dir / "run_half1_class001_unfil.mrc",
        half2=out_dir / "run_half2_class001_unfil.mrc",
        data=out_dir / "run_data.star",
        command=list(record["command"]),
    )


def _image_key(name: str) -> str:
    index, _, stack = str(name).partition("@")
    return f"{int(index)}@{Path(stack).name}"


def _complete(out_dir: Path) -> bool:
    return all((out_dir / name).is_file() for name in ("run_data.star", "run_model.star", "run_class001.mrc"))


def auto_refine(star, reference, out_dir, *, log=print, **settings) -> RelionRefinement:
    """Run RELION's gold-standard auto-refine on a particle STAR file, or read its cached result.

    Parameters
    ----------
    star : path
        A RELION 3.1 particle STAR file of normalised particles (RELION's contrast); in ``"local"``
        mode its angles are the start. RELION resolves its image names from the folder it runs
        in: this STAR file's folder.
    reference : path
        The initial reference map (MRC, on the stack's pixel size and box).
    out_dir : path
        Where RELION writes (``run_*``) and ``relion.json`` goes.
    log : callable
    **settings
        :func:`auto_refine_command`'s: ``mode`` ("global" or "local"), ``particle_diameter`` (Å,
        the mask), ``initial_lowpass`` (Å, ``--ini_high``), ``healpix_order``,
        ``auto_local_healpix_order``, ``sigma_ang`` (degrees, local mode), ``offset_range`` and
        ``offset_step`` (pixels), ``ctf``, ``mpi`` (processes: one leader and ``mpi - 1``
        workers), ``threads`` (per worker), ``random_seed`` (``--random_seed``, default 0: without
        one RELION seeds from the clock and no two runs agree), ``extra`` (more arguments).

    Returns
    -------
    RelionRefinement
    """
    star, reference = Path(star).resolve(), Path(reference).resolve()
    out_dir = Path(out_dir).resolve()
    for path, what in ((star, "particle STAR file"), (reference, "reference map")):
        if not path.is_file():
            raise InputError(f"the {what} {path} does not exist")
    command = auto_refine_command(star.name, reference, out_dir, **settings)
    table = read_particle_table(star)
    keys = [_image_key(name) for name in table.particles["rlnImageName"]]
    inputs = _input_digests(star, reference, table)
    record_path = out_dir / _RECORD
    with file_lock(record_path):  # one run per folder at a time
        if record_path.is_file() and _complete(out_dir):
            record = json.loads(record_path.read_text())
            if record.get("command") == command and record.get("image_keys") == keys and record.get("inputs") == inputs:
                log(f"relion: cached run in {out_dir} ({record['seconds']:.0f} s when it ran)")
                return _read(out_dir, record)
        for program in ("mpirun", _PROGRAM):
            if shutil.which(program) is None:
                raise UnavailableError(
                    f"{program} is not installed; install RELION and OpenMPI "
                    "(Debian: apt-get install relion openmpi-bin)"
                )
        record_path.unlink(missing_ok=True)  # the record goes only with a run that completed
        for old in out_dir.glob("run_*"):  # an interrupted or different run: start afresh
            old.unlink()
        log(f"relion: {' '.join(command)} (log: {out_dir / 'relion.log'})")
        start = time.perf_counter()
        with open(out_dir / "relion.log", "w") as out:
            done = subprocess.run(command, cwd=star.parent, stdout=out, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
        return _finish(out_dir, record_path, done.returncode, command, keys, inputs, seconds, log)


def _finish(out_dir, record_path, returncode, command, keys, inputs, seconds, log) -> RelionRefinement:
    if returncode != 0 or not _complete(out_dir):
        tail = (out_dir / "relion.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RunError(
            f"RELION's auto-refine failed (exit {returncode}); {out_dir / 'relion.log'} ends: {' | '.join(tail)}"
        )
    record = {"command": command, "seconds": round(seconds, 2), "image_keys": keys, "inputs": inputs}
    save_text(json.dumps(jsonable(record)) + "\n", record_path)
    result = _read(out_dir, record)
    log(f"relion: {len(result.iterations)} iterations, final resolution {result.resolution:.2f} Å, {seconds:.0f} s")
    return result
