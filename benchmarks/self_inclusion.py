"""How much of a refinement's error from the true orientations is each image agreeing with itself.

    PYTHONPATH=lib DATA_MIRROR=... python benchmarks/self_inclusion.py [--n 600] [--folds 4] [--start-error 0]

Refinement (:func:`cryo_orient.orientation.refine.refine`) searches each image against the half
map of its own half set, which by default (``search_folds`` 1, as RELION) contains that very image
at its current pose. This script runs ``refine`` (local searches coarse to fine, FSC-weighted half
maps, the FSC 0.143 low-pass; no shifts) twice on the same images from the same start: with
``search_folds`` 1, and with each half split into ``--folds`` parts, each part searched against
the map of the rest of its half (still gold standard: nothing crosses the halves). It prints the
median error (after the best rigid alignment) and the half maps' FSC 0.143 resolution after every
round, and the error of the best poses against the true, noise-free map. The start is the true
orientations, or each rotated by ``--start-error`` degrees about a random axis. The map is the
mirror's ASPIRE 70S map resampled to 32 px; the images are its projections at uniform
orientations with white noise at SNR 1/4 (noise std twice the images').
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.geometry.volumes import resample_volume
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.orientation.refine import RefineConfig, refine, search_poses
from cryo_orient.tomography.projection import project

BOX = 32


def rounds(
    images, start, truth, pixel, *, folds: int, n_rounds: int, marginalise: bool = False
) -> tuple[list[float], list[float], float]:
    """Median errors (degrees) and half-map resolutions (Å) of the start and after each round of
    ``refine`` with ``search_folds=folds`` (and ``marginalise``), and its seconds."""
    # moved_tolerance 0: every round runs (the comparison is per round, not to convergence).
    config = RefineConfig(
        shift_range=0.0,
        reconstruction_iterations=15,
        max_iterations=n_rounds,
        moved_tolerance=0.0,
        search_folds=folds,
        marginalise=marginalise,
    )
    errors = []
    tick = time.perf_counter()
    result = refine(
        images,
        start,
        config=config,
        pixel_size=pixel,
        callback=lambda it, q, s: errors.append(align_rigid(truth, q).median_error_deg),
    )
    return errors, [entry["resolution"] for entry in result.log], time.perf_counter() - tick


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="images")
    parser.add_argument("--folds", type=int, default=4, help="parts of each half (the second arm)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--start-error", type=float, default=0.0, help="degrees from the truth (0: the truth)")
    parser.add_argument("--marginalise", action="store_true", help="both arms marginalise over pose posteriors")
    args = parser.parse_args(argv)
    mirror = Path(os.environ.get("DATA_MIRROR", "../shared/data"))
    path = mirror / "aspire-70s-ctf" / "map48.mrc"
    if not path.is_file():
        print(f"error: {path} is missing; set DATA_MIRROR to the data mirror", file=sys.stderr)
        return 2
    pixel = 5.0 * 48 / BOX
    volume = resample_volume(mrcfile.read(path).astype(np.float64), 5.0, pixel, BOX)
    rng = np.random.default_rng(3)
    truth = rotations.uniform_so3(args.n, rng=rng)
    clean = project(volume, truth, BOX, "nufft")
    images = clean + rng.normal(scale=2 * clean.std(), size=clean.shape)
    best, _, _ = search_poses(volume, images, truth, step=1.0, levels=4, shift_range=0.0)
    print(f"best poses against the true map: median error {align_rigid(truth, best).median_error_deg:.2f}°")
    start = truth
    if args.start_error > 0:
        axis = rng.normal(size=(args.n, 3))
        start = rotations.multiply(rotations.axis_angle(axis, np.full(args.n, np.radians(args.start_error))), truth)
    print(f"start: median error {align_rigid(truth, start).median_error_deg:.2f}°")
    for folds in (1, args.folds):
        errors, resolutions, seconds = rounds(
            images, start, truth, pixel, folds=folds, n_rounds=args.rounds, marginalise=args.marginalise
        )
        label = "own image in the map (search_folds 1)" if folds == 1 else f"own fold left out (search_folds {folds})"
        print(f"{label}{', marginalised' if args.marginalise else ''}, {seconds:.0f} s:")
        print("  median error per round " + ", ".join(f"{e:.2f}°" for e in errors))
        print("  half maps' FSC 0.143 " + ", ".join(f"{r:.1f}" for r in resolutions) + " Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
