"""Refinement of a RELION particle stack: ``cryo-orient refine PARTICLES.star --reference MAP --out DIR``.

The STAR file gives the starting orientations (``rlnAngleRot/Tilt/Psi``, e.g. from
``cryo-orient orient``) and, where present, the starting origins; the reference map (resampled
to the stack's pixel size and box, as in :mod:`cryo_orient.workflow.orient`) is the first round's
search reference for both halves, low-passed. Then :func:`cryo_orient.orientation.refine.refine`
iterates local pose searches and gold-standard half-map reconstructions.

The images are used as the STAR file names them, with RELION's contrast (particles denser than
the solvent bright at low resolution, as ``cryo-orient orient`` writes its ``particles.mrcs``),
CTF-modulated: the CTF of each particle's STAR row enters the matching and the reconstruction.

Outputs in ``DIR`` (:func:`write_refinement`, each file written atomically): ``particles.star``
(the input's rows and columns, with refined ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/YAngst`` and
``rlnRandomSubset`` 1 / 2; image names relative to ``DIR``), ``map.mrc`` (all particles),
``half1.mrc``, ``half2.mrc``, ``fsc.csv`` (the half maps' FSC) and ``refine.json`` (settings,
per-round log, resolution, time).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import load_volume, read_particles, write_volume
from cryo_orient.data.dataset import Dataset
from cryo_orient.data.relion import write_particles
from cryo_orient.geometry import volumes
from cryo_orient.orientation.refine import RefineConfig, RefinementResult, refine
from cryo_orient.tomography.ctf import CTFParams
from cryo_orient.tomography.fsc import FSCResult
from cryo_orient.validation import InputError

__all__ = [
    "OUTPUTS",
    "RefineConfig",
    "fsc_table",
    "load_reference",
    "log_lines",
    "refine_particles",
    "relative_image_names",
    "stack_ctf",
    "write_refinement",
]

#: The files :func:`write_refinement` writes, by role.
OUTPUTS = {
    "star": "particles.star",
    "map": "map.mrc",
    "half1": "half1.mrc",
    "half2": "half2.mrc",
    "fsc": "fsc.csv",
    "record": "refine.json",
}


def fsc_table(curve: FSCResult) -> str:
    """The FSC curve as CSV text (frequency in 1/Å, correlation, voxels per shell)."""
    rows = ["frequency_per_angstrom,fsc,voxels"] + [
        f"{f:.6g},{c:.6g},{n}" for f, c, n in zip(curve.frequency, curve.correlation, curve.counts)
    ]
    return "\n".join(rows) + "\n"


def log_lines(result: RefinementResult) -> list[str]:
    """One line per round of the refinement's log."""
    lines = []
    for row in result.log:
        res = f"{row['resolution']:.2f} Å{'' if row['crossed'] else ' (Nyquist)'}"
        if row["iteration"] == 0:
            lines.append(f"  refine: start, half maps at {res}")
            continue
        lines.append(
            f"  refine {row['iteration']}: {res}, cutoff {row['cutoff']:.2f} Nyquist, step {row['angular_step']:.2f}°, "
            f"{100 * row['moved_fraction']:.0f}% moved, shifts changed {row['rms_shift_change']:.2f} px RMS, "
            f"score {row['median_score']:.3f}, "
            + (f"{100 * row['global_fraction']:.0f}% from the global search, " if "global_fraction" in row else "")
            + f"{row['seconds']:.0f} s"
        )
    lines.append(f"  refine: {result.stop_reason} after {len(result.log) - 1} rounds, {result.seconds:.0f} s")
    return lines


def load_reference(path, stack: Dataset, reference_angpix=None) -> tuple[np.ndarray, float]:
    """A cubic MRC map resampled to the stack's pixel size and box, and its own voxel size (Å)."""
    with warnings.catch_warnings():  # a header without a voxel size is an error here, below
        warnings.simplefilter("ignore", UserWarning)
        volume, _ = load_volume(path)
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        voxel = float(mrc.voxel_size.x)
    if reference_angpix is not None:
        voxel = float(reference_angpix)
    if len(set(volume.shape)) != 1:
        raise InputError(
            f"the reference {path} is {volume.shape[2]} x {volume.shape[1]} x {volume.shape[0]} voxels; "
            "give a cubic map (pad it to a cube, e.g. with relion_image_handler --new_box)"
        )
    if not voxel or voxel <= 0:
        raise InputError(f"the reference {path} has no voxel size in its header; give it with --reference-angpix")
    return volumes.resample_volume(volume, voxel, stack.pixel_size, stack.image_size), float(voxel)


def relative_image_names(stack: Dataset, out_dir: Path) -> list[str]:
    """The stack's ``rlnImageName`` values with the stack paths relative to ``out_dir``."""
    names = []
    for index, path in stack.metadata["star"].image_names():
        names.append(f"{index + 1:06d}@{Path(os.path.relpath(path, Path(out_dir).resolve())).as_posix()}")
    return names


def write_refinement(out_dir, stack: Dataset, result: RefinementResult, *, record=None, image_names=None) -> dict:
    """Write a refinement's STAR file, maps, FSC and record into ``out_dir`` (:data:`OUTPUTS`).

    Parameters
    ----------
    out_dir : path
        Created if needed.
    stack : Dataset
        The particle stack refined (from :func:`cryo_orient.data.read_particles`): its STAR
        table is written back with the refined poses.
    result : RefinementResult
    record : dict, optional
        More entries for ``refine.json``.
    image_names : list of str, optional
        ``rlnImageName`` values (default: the stack's images, relative to ``out_dir``).

    Returns
    -------
    dict
        Role -> path of every file written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {role: out_dir / name for role, name in OUTPUTS.items()}
    write_particles(
        paths["star"],
        stack.metadata["star"],
        quaternions=result.quaternions,
        shifts=result.shifts,
        image_names=image_names if image_names is not None else relative_image_names(stack, out_dir),
        image_size=stack.image_size,
        columns={"rlnRandomSubset": result.subsets.astype(int)},
    )
    pixel = stack.pixel_size or 1.0
    write_volume(paths["map"], result.volume.astype(np.float32), pixel)
    for h, role in enumerate(("half1", "half2")):
        write_volume(paths[role], result.half_maps[h].astype(np.float32), pixel)
    save_text(fsc_table(result.fsc), paths["fsc"])
    summary = {
        "n_particles": int(len(result.quaternions)),
        "half_set_sizes": [int(np.sum(result.subsets == h)) for h in (1, 2)],
        "resolution_0.143": result.resolution,
        "resolution_0.5": result.fsc.resolution(0.5)[0],
        "stop_reason": result.stop_reason,
        "iterations": result.log,
        "seconds": round(result.seconds, 2),
        "median_score": float(np.median(result.scores)),
        "rms_shift_px": float(np.sqrt(np.mean(np.sum(result.shifts**2, axis=1)))),
        "outputs": {k: str(v) for k, v in paths.items()},
        "provenance": provenance(),
    }
    save_text(json.dumps(jsonable({**(record or {}), **summary}), indent=2, sort_keys=True) + "\n", paths["record"])
    return paths


def stack_ctf(stack: Dataset) -> CTFParams | None:
    """The stack's CTF parameters, one set per particle (None without a CTF)."""
    return CTFParams.from_columns(stack.ctf, stack.n) if stack.ctf else None


def refine_particles(
    particles,
    reference,
    out_dir,
    *,
    config=None,
    angpix=None,
    reference_angpix=None,
    progress=True,
    log=print,
) -> dict:
    """Refine the orientations and origins of a RELION particle stack against a reference map.

    Parameters
    ----------
    particles : path
        A RELION 3.0 - 5 particle STAR file with ``rlnAngleRot/Tilt/Psi`` (origins optional).
    reference : path
        An MRC map of the particle in the frame of the angles (resampled to the stack).
    out_dir : path
        Where the outputs go (:data:`OUTPUTS`).
    config : RefineConfig or dict, optional
    angpix, reference_angpix : float, optional
        Pixel sizes in Å in place of the STAR file's and the map header's.
    progress : bool
    log : callable
        Receives the lines said.

    Returns
    -------
    dict
        ``result`` (the :class:`~cryo_orient.orientation.refine.RefinementResult`) and ``paths``.
    """
    start = time.perf_counter()
    config = config if isinstance(config, RefineConfig) else RefineConfig.from_dict(dict(config or {}))
    stack = read_particles(particles, angpix=angpix)
    if stack.quaternions is None:
        raise InputError(
            f"{particles} has no rlnAngleRot, rlnAngleTilt, rlnAnglePsi columns, and refinement starts from "
            "given orientations; run `cryo-orient orient` first or give a STAR file with angles"
        )
    if stack.n < 2:
        raise InputError(f"{particles} holds {stack.n} particle; two half sets need at least 2")
    config.check_images(stack.n)
    volume, reference_voxel = load_reference(reference, stack, reference_angpix)
    log(
        f"refine: {stack.n} particles of {stack.image_size} px at {stack.pixel_size:g} Å"
        f"{', with CTF' if stack.ctf else ', no CTF'}; reference {reference} ({reference_voxel:g} Å)"
    )
    result = refine(
        stack.images("raw"),
        stack.quaternions,
        stack.shifts,
        config=config,
        ctf=stack_ctf(stack),
        pixel_size=stack.pixel_size,
        reference=volume,
        progress=progress,
    )
    for line in log_lines(result):
        log(line)
    record = {
        "particles": str(particles),
        "reference": str(reference),
        "pixel_size": stack.pixel_size,
        "image_size": stack.image_size,
        "reference_voxel_size": reference_voxel,
        "ctf": bool(stack.ctf),
        "config": config.to_dict(),
        "total_seconds": round(time.perf_counter() - start, 2),
    }
    paths = write_refinement(out_dir, stack, result, record=record)
    log(f"  wrote {', '.join(str(p) for p in paths.values())}")
    return {"result": result, "paths": paths}
