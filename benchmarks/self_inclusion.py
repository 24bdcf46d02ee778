"""How much of a refinement's error from the true orientations is each image agreeing with itself.

    PYTHONPATH=lib DATA_MIRROR=... python benchmarks/self_inclusion.py [--n 600] [--folds 4]

Refinement (:func:`cryo_orient.orientation.refine.refine`) searches each image against the half
map of its own half set, which contains that very image at its current pose. This script runs
the same rounds (local search coarse to fine, FSC-weighted half maps, the FSC 0.143 low-pass; no
shifts) twice on the same images, started at the true orientations: once as ``refine`` does
(``--folds 1``: the image is in the map it is searched against; this arm reproduces ``refine``'s
numbers exactly) and once with each half split into ``--folds`` parts, each part searched against
the map of the rest of its half (still gold standard: nothing crosses the halves). It prints the
median error (after the best rigid alignment) after every round, and the error of the best poses
against the true, noise-free map. The map is the mirror's ASPIRE 70S map resampled to 32 px; the
images are its projections at uniform orientations with white noise at SNR 1/4 (noise std twice
the images').
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mrcfile
import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.geometry.volumes import resample_volume
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.orientation.refine import RefineConfig, _cutoff, half_sets, search_poses
from cryo_orient.tomography.fsc import fsc, fsc_filter
from cryo_orient.tomography.projection import project
from cryo_orient.tomography.reconstruct import reconstruct

BOX = 32


def rounds(images, start, truth, pixel, *, folds: int, n_rounds: int, seed: int = 0) -> list[float]:
    """Median errors (degrees) of the start and after each round, searching each image against
    the map of its half set without its own fold (``folds == 1``: with it, as ``refine``)."""
    config = RefineConfig(shift_range=0.0)
    n = len(images)
    halves = [np.flatnonzero(half_sets(n, seed) == h) for h in (1, 2)]
    fold = np.random.default_rng(seed + 1).integers(0, folds, n)
    q = start.copy()
    errors = [align_rigid(truth, q).median_error_deg]

    def half_map(index):
        return reconstruct(images[index], q[index], (BOX,) * 3, "nufft", iterations=15).volume

    for iteration in range(n_rounds):
        maps = [half_map(index) for index in halves]
        curve = fsc(maps[0], maps[1], pixel, mask="soft_sphere")
        cutoff = _cutoff(curve, config, pixel)  # refine's own rule, so that this arm stays refine
        new = q.copy()
        for h, index in enumerate(halves):
            for f in range(folds):
                searched = index[fold[index] == f]
                target = maps[h] if folds == 1 else half_map(index[fold[index] != f])
                new[searched], _, _ = search_poses(
                    fsc_filter(target, curve),
                    images[searched],
                    q[searched],
                    step=config.round_step(iteration),
                    levels=config.local_steps,
                    shift_range=0.0,
                    cutoff=cutoff,
                )
        q = new
        errors.append(align_rigid(truth, q).median_error_deg)
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="images")
    parser.add_argument("--folds", type=int, default=4, help="parts of each half (the second arm)")
    parser.add_argument("--rounds", type=int, default=8)
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
    for folds in (1, args.folds):
        errors = rounds(images, truth, truth, pixel, folds=folds, n_rounds=args.rounds)
        label = "own image in the map" if folds == 1 else f"own fold left out ({folds} folds a half)"
        print(f"{label}: median error per round " + ", ".join(f"{e:.2f}°" for e in errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
