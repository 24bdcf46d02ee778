"""How compact a volume explains two projections of a real protein at another relative angle.

Issue 17 (one estimator for proteins never seen in training). Two projections of an unknown volume
share only their common line (:mod:`cryo_orient.simulation.ambiguity`): for any relative angle φ'
about it, a non-negative volume reproduces both images. A Siamese estimator maps an image pair to
one distance, so on an unseen protein only a prior over volumes can choose among the φ'. This
measures how much the weakest prior, "a particle is compact", can: for pairs of clean projections
of each registered protein at a relative angle φ (random orientation of the protein, the second
view rotated by φ about an axis in the first view's plane), the volume of
:func:`~cryo_orient.simulation.ambiguity.pair_impostor` for each φ', checked by projecting it back
(relative error of both images), and its size: the diameter of the ball about the centre holding
98 % of its mass (:func:`~cryo_orient.simulation.onthefly.particle_diameter`) over the protein's.
The true volume explains the pair at φ with a ratio of 1; an impostor near 1 at φ' ≠ φ means
compactness cannot tell φ' from φ. The impostors are one construction, so their ratios bound from
above the most compact volume that reproduces the pair as closely (1-4 % here) at φ'.

    python experiments/generalization/pair_ambiguity.py [--maps 5j0n 70s-ribosome] [--pairs 8] \
        [--out benchmarks/results/pair-ambiguity-DATE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy import ndimage

from cryo_orient import artifacts
from cryo_orient.artifacts import provenance
from cryo_orient.geometry import rotations
from cryo_orient.simulation.ambiguity import pair_impostor, rotation_about_y
from cryo_orient.simulation.onthefly import MapLibrary, particle_diameter
from cryo_orient.tomography.projection import project

TRUE_DEG = (30, 60, 90, 120, 150)  # the pairs' relative angles
IMPOSTOR_DEG = (45, 60, 90, 120, 135)  # the impostors' (nearer 0 or 180° they outgrow a 3× box)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="+", default=["5j0n", "70s-ribosome"], help="registered maps or MRC files")
    parser.add_argument("--pairs", type=int, default=8, help="random orientations of the protein per angle")
    parser.add_argument("--size", type=int, default=48, help="image side (px); the particle spans half of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON record to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    library = MapLibrary(args.maps)
    size, box = args.size, 3 * args.size  # the support grows as 1 / sin φ' (45°: 112 voxels at 48 px)
    rng = np.random.default_rng(args.seed)
    record = {"settings": vars(args) | {"true_deg": TRUE_DEG, "impostor_deg": IMPOSTOR_DEG, "box": box}, "maps": {}}
    for index, entry in enumerate(library.maps):
        pixel = entry.diameter / (0.5 * size)
        # Non-negative (the construction divides by each row's mass, which a map's negative
        # densities can cancel) and smoothed by one voxel (the impostor interpolates the rows
        # linearly along tilted rays, exact only for images smooth at the pixel scale).
        volume = np.clip(library.volume_at(index, pixel, size).astype(np.float64), 0.0, None)
        volume = ndimage.gaussian_filter(volume, 1.0)
        diameter = particle_diameter(volume, pixel)
        ratio = np.full((len(TRUE_DEG), len(IMPOSTOR_DEG), args.pairs), np.nan)
        error = np.full_like(ratio, np.nan)
        for k in range(args.pairs):
            g = rotations.uniform_so3(1, rng)[0]  # the protein's orientation in the first view
            for i, phi in enumerate(TRUE_DEG):
                q = np.stack([g, rotations.multiply(rotation_about_y(np.radians(phi)), g)])
                images = project(volume, q, size)
                for j, phi_new in enumerate(IMPOSTOR_DEG):
                    impostor = pair_impostor(images[0], images[1], np.radians(phi_new), box)
                    q_new = np.stack([rotation_about_y(0.0), rotation_about_y(np.radians(phi_new))])
                    crop = slice(box // 2 - size // 2, box // 2 - size // 2 + size)
                    again = project(impostor, q_new, box)[:, crop, crop]
                    error[i, j, k] = np.linalg.norm(again - images) / np.linalg.norm(images)
                    ratio[i, j, k] = particle_diameter(np.clip(impostor, 0, None), pixel) / diameter
        median = np.median(ratio, axis=2)
        record["maps"][entry.name] = {
            "pixel_size": pixel,
            "diameter_angstrom": diameter,
            "diameter_ratio_median": median.round(3).tolist(),
            "diameter_ratio_max": ratio.max(axis=2).round(3).tolist(),
            "reprojection_error_max": np.max(error, axis=2).round(4).tolist(),
        }
        print(f"\n{entry.name}: particle diameter {diameter:.0f} Å (98 % of the mass), {args.pairs} pairs per angle")
        print("| true φ \\ φ' | " + " | ".join(f"{a}°" for a in IMPOSTOR_DEG) + " |")
        print("|---" * (len(IMPOSTOR_DEG) + 1) + "|")
        for i, phi in enumerate(TRUE_DEG):
            print(f"| {phi}° | " + " | ".join(f"{median[i, j]:.2f}" for j in range(len(IMPOSTOR_DEG))) + " |")
        worst = np.max(error, axis=(0, 2))
        print(
            "largest reprojection error (relative, both images) per φ': "
            + ", ".join(f"{a}° {e:.3f}" for a, e in zip(IMPOSTOR_DEG, worst))
        )
    record["seconds"] = time.perf_counter() - started
    record["provenance"] = provenance()
    if args.out:
        artifacts.save_text(json.dumps(record, indent=1) + "\n", args.out)
        print(f"record: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
