"""Refinement speed: per round and to its stop, against a brute-force global search over the same final grid.

    PYTHONPATH=lib python benchmarks/refine_speed.py [--sizes 58 116] [--n 1650] [--out FILE.json]

For each image size, ``--n`` projections of 5j0n (the registry's map resampled to the size, as the
cpu profile's 116 px and figure 9's 58 px) at uniform orientations, with white noise at
``--snr-db``, are simulated in the run; :func:`cryo_orient.orientation.refine.refine` starts 10°
off (every orientation rotated by exactly that, :func:`cryo_orient.geometry.rotations.perturb`)
with the true map as the first round's reference, and runs to its stop (or ``--max-iterations``).
Recorded: seconds per round and in all, rounds, the median error after each round.

The baseline, in the same run and with the same matching code: a brute-force global search
evaluates every image at every orientation of a grid of the refinement's finest step over all
of SO(3) (about ``8π² / s³`` orientations for a step of ``s`` radians: SO(3)'s volume in the
angle metric over a cell's), each with the same shift grid. Its cost per image and orientation
is measured here by :func:`cryo_orient.orientation.refine.search_poses` with one level around
``--bf-orientations`` random orientations (27 candidates each: a global search on a random grid
of ``27 ×`` that many orientations) on ``--bf-images`` images; the full search's time is that cost
times the grid's size times the images, an extrapolation that is linear in both (stated so in
the record). It is an upper estimate: each image's candidates are projected apart, where a real
brute force would project each grid orientation once for all images. Ratio: that time over the
refinement's time to its stop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import load
from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation.refine import RefineConfig, refine, search_poses
from cryo_orient.simulation.noise import add_noise, noise_variance_for_snr
from cryo_orient.tomography.projection import project
from refine import padded  # benchmarks/refine.py: the map on a detector box, centred as the simulator does


def simulate(volume, size, n, snr_db, rng):
    q = rotations.uniform_so3(n, rng=rng)
    clean = project(volume, q, size, "nufft")
    variance = noise_variance_for_snr(float(clean.var()), snr_db=snr_db)
    return add_noise(clean, variance, rng=rng), q


def one_size(volume, voxel, size, args):
    rng = np.random.default_rng(args.seed)
    # The map on the cpu profile's 116³ detector box, then on a size³ grid with the pixel size
    # scaled so that the particle fills it as at 116 px.
    pixel = voxel * 116 / size
    small = volumes.resample_volume(padded(volume, 116), voxel, pixel, size)
    images, truth = simulate(small, size, args.n, args.snr_db, rng)
    start = rotations.perturb(truth, args.perturb, rng=rng)
    config = RefineConfig.from_dict({"max_iterations": args.max_iterations})
    rounds, tick = [], [time.perf_counter()]

    def follow(iteration, q, s):
        now = time.perf_counter()
        error = float(np.degrees(np.median(rotations.distance(truth, q))))
        rounds.append({"iteration": iteration, "median_error_deg": error, "wall_seconds": now - tick[0]})
        print(f"  {size} px round {iteration}: median error {error:.3f}°, {now - tick[0]:.1f} s", flush=True)
        tick[0] = now

    began = time.perf_counter()
    result = refine(images, start, config=config, pixel_size=pixel, reference=small, callback=follow)
    total = time.perf_counter() - began
    if len(result.log) < 2:
        raise SystemExit("refine ran no round; give --max-iterations 1 or more")
    finest = min(row["angular_step"] for row in result.log[1:])
    reach = int(np.ceil(config.shift_range / config.shift_step))
    shift_points = int(np.sum(np.hypot(*np.mgrid[-reach : reach + 1, -reach : reach + 1]) <= reach))

    # Brute force with the same code: one level of 27 candidates around random orientations.
    sample = images[: args.bf_images]
    centres = rotations.uniform_so3(args.bf_orientations, rng=rng)
    began_bf = time.perf_counter()
    for c in centres:
        search_poses(
            small,
            sample,
            np.repeat(c[None], len(sample), axis=0),
            step=finest,
            levels=1,
            shift_range=config.shift_range,
            shift_step=config.shift_step,
            cutoff=config.lowpass_max,
        )
    bf_seconds = time.perf_counter() - began_bf
    per_evaluation = bf_seconds / (len(sample) * 27 * len(centres))
    grid = 8 * np.pi**2 / np.radians(finest) ** 3
    brute = per_evaluation * grid * args.n
    return {
        "image_size": size,
        "pixel_size": pixel,
        "n_images": args.n,
        "snr_db": args.snr_db,
        "start_error_deg": args.perturb,
        "rounds": rounds,
        "iterations": len(result.log) - 1,
        "stop_reason": result.stop_reason,
        "seconds_to_stop": total,
        "seconds_per_round": [row["seconds"] for row in result.log[1:]],
        "final_median_error_deg": rounds[-1]["median_error_deg"] if rounds else None,
        "finest_step_deg": finest,
        "final_grid_orientations": grid,
        "shift_grid_points_first_level": shift_points,
        "brute_force": {
            "images_measured": len(sample),
            "orientations_measured": 27 * len(centres),
            "seconds_measured": bf_seconds,
            "seconds_per_image_orientation": per_evaluation,
            "extrapolated_seconds": brute,
            "extrapolated": "linear in the grid's orientations and the images",
        },
        "brute_force_over_refinement": brute / total,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[58, 116])
    parser.add_argument("--n", type=int, default=1650)
    parser.add_argument("--snr-db", type=float, default=-10.0)
    parser.add_argument("--perturb", type=float, default=10.0, help="degrees")
    parser.add_argument("--max-iterations", type=int, default=8)
    parser.add_argument("--bf-images", type=int, default=32)
    parser.add_argument("--bf-orientations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON record to write")
    args = parser.parse_args(argv)
    volume, voxel = load("5j0n", progress=False)
    results = []
    for size in args.sizes:
        row = one_size(volume, voxel, size, args)
        results.append(row)
        print(
            f"refine {size} px, {args.n} images: {row['iterations']} rounds ({row['stop_reason']}), "
            f"{row['seconds_to_stop']:.0f} s to stop ({', '.join(f'{s:.0f}' for s in row['seconds_per_round'])} s "
            f"per round), median error {row['final_median_error_deg']:.2f}°; brute force over the "
            f"{row['final_grid_orientations']:.3g}-orientation grid of {row['finest_step_deg']:g}°: "
            f"{row['brute_force']['extrapolated_seconds']:.3g} s (extrapolated), ratio "
            f"{row['brute_force_over_refinement']:.3g}",
            flush=True,
        )
    record = {
        "command": " ".join([os.path.basename(sys.argv[0])] + list(argv if argv is not None else sys.argv[1:])),
        "load_average": os.getloadavg(),
        "results": results,
        "provenance": provenance(),
    }
    if args.out:
        save_text(json.dumps(jsonable(record), indent=2) + "\n", args.out)


if __name__ == "__main__":
    main()
