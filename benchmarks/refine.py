"""Refinement on a simulated dataset of the cpu profile: from the truth perturbed by some degrees.

    PYTHONPATH=lib python benchmarks/refine.py --dataset data/simulated/cpu/5j0n-full-so3.h5 \
        --n 1000 --perturb 10 --out benchmarks/results/refine-DATE.json

Takes the first ``--n`` images of the test split (clean ones for a noiseless dataset, the noisy
ones otherwise, the raw off-centre ones for a shifted dataset, starting from zero shifts), rotates
each true orientation by ``--perturb`` degrees about a random axis, and refines with
:func:`cryo_orient.orientation.refine.refine` against the true map (padded to the detector's
box) as the first round's low-passed reference (``--no-reference``: the half maps of the
starting poses instead). Prints and records the median orientation error after every round
(raw, and after the best global rotation, ``align_rigid``), the RMS shift error, the half maps'
resolution and the time per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import load, read_dataset
from cryo_orient.geometry import rotations
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.orientation.refine import RefineConfig, refine


def padded(volume, box):
    """``volume`` on a ``box``³ grid, its voxel ``n // 2`` at ``box // 2`` on every axis (the
    projection convention's centre, which the simulator used on the map's own grid)."""
    out = np.zeros((box,) * 3)
    lo = [box // 2 - n // 2 for n in volume.shape]
    out[tuple(slice(a, a + n) for a, n in zip(lo, volume.shape))] = volume
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--perturb", type=float, default=10.0, help="degrees")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RefineConfig setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON record to write")
    args = parser.parse_args(argv)

    dataset = read_dataset(args.dataset)
    part = dataset.split("test")
    index = np.arange(min(args.n, part.n))
    shifted = bool(np.any(part.shifts))
    kind = "raw" if shifted else ("clean" if part.noise_variance == 0 else "noisy")
    images = part.images(kind, index=index)
    truth = part.quaternions[index]
    true_shifts = part.shifts[index]
    rng = np.random.default_rng(args.seed)
    start = rotations.perturb(truth, args.perturb, rng)
    volume, _ = load(dataset.config["volume"], progress=False)
    reference = None if args.no_reference else padded(volume, part.image_size)
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = RefineConfig.from_dict(settings)
    rounds = []
    tick = [time.perf_counter()]

    def follow(iteration, q, s):
        now = time.perf_counter()
        row = {
            "iteration": iteration,
            "median_error_deg": float(np.degrees(np.median(rotations.distance(truth, q)))),
            "median_error_after_rotation_deg": float(align_rigid(truth, q).median_error_deg),
            "rms_shift_error_px": float(np.sqrt(np.mean(np.sum((s - true_shifts) ** 2, axis=1)))),
            "wall_seconds": now - tick[0],
        }
        tick[0] = now
        rounds.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"{args.dataset}: {len(index)} {kind} images of {part.image_size} px, start {args.perturb}° off "
        f"(median {np.degrees(np.median(rotations.distance(truth, start))):.2f}°), "
        f"shifts RMS {np.sqrt(np.mean(np.sum(true_shifts**2, axis=1))):.2f} px; {config}",
        flush=True,
    )
    result = refine(
        images,
        start,
        config=config,
        pixel_size=part.pixel_size,
        reference=reference,
        progress=False,
        callback=follow,
    )
    for row, log in zip(rounds, result.log[1:]):
        row.update({k: log[k] for k in ("resolution", "cutoff", "angular_step", "moved_fraction", "seconds")})
    record = {
        "command": "PYTHONPATH=lib python benchmarks/refine.py " + " ".join(argv or sys.argv[1:]),
        "dataset": args.dataset,
        "n_images": len(index),
        "image_kind": kind,
        "image_size": part.image_size,
        "pixel_size": part.pixel_size,
        "perturb_deg": args.perturb,
        "reference": not args.no_reference,
        "config": config.to_dict(),
        "start_log": result.log[0],
        "rounds": rounds,
        "final": {
            "median_error_deg": rounds[-1]["median_error_deg"] if rounds else None,
            "resolution_0.143": result.resolution,
            "resolution_0.5": result.fsc.resolution(0.5)[0],
            "stop_reason": result.stop_reason,
            "seconds": result.seconds,
        },
        "provenance": provenance(),
    }
    print(json.dumps(record["final"]), flush=True)
    if args.out:
        save_text(json.dumps(jsonable(record), indent=2) + "\n", Path(args.out))


if __name__ == "__main__":
    main()
