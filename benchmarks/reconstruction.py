"""Reconstruction speed: time to the FSC plateau, Toeplitz CG against CG with explicit projections.

    python benchmarks/reconstruction.py [--n 1650] [--iterations 60]      (part of `make bench`)

The 5j0n map is projected along ``n`` SO(3)-uniform orientations onto 116 × 116 detectors and
reconstructed in the 116³ cube, as the pipeline does (figures 10, 11, 13). Ours:
`reconstruct.reconstruct` (CG on the normal equations, ``AᵀA`` applied as one convolution by
FFT). Baseline, in the same run: the same CG with ``AᵀA v`` computed as a backprojection of a
projection of ``v`` at every iteration (the textbook CGLS cost); both produce the same iterates,
so the baseline is timed for a few iterations and its time to the same iteration count is
extrapolated. The plateau is the first iteration whose FSC curve (against the true map, on its
grid) is within 0.002 on average of the last one. With a usable GPU, ASTRA's CGLS3D_CUDA is
timed too. Target (issue 5): 116³ from 1,650 projections in <= 2 minutes to the plateau on this
CPU. Writes build/bench/reconstruction.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cryo_orient import data
from cryo_orient.artifacts import save_text
from cryo_orient.geometry import rotations, volumes
from cryo_orient.tomography import fsc, projection
from cryo_orient.tomography.reconstruct import conjugate_gradients, reconstruct, remove_detector_nyquist

SIZE = 116
PLATEAU = 0.002
TARGET_SECONDS = 120.0


def on_map(volume, truth):
    return volumes.transform_volume(volume, np.eye(3), truth.shape)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1650)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--baseline-iterations", type=int, default=3)
    args = parser.parse_args(argv)

    truth, voxel = data.load("5j0n", progress=False)
    truth = truth.astype(np.float64)
    q = rotations.uniform_so3(args.n, rng=np.random.default_rng(0))
    images = projection.project(truth, q, SIZE, "nufft")
    cube = (SIZE,) * 3

    curves, stamps = [], []
    callback_seconds = 0.0
    start = time.perf_counter()

    def follow(k, volume):
        nonlocal callback_seconds
        t = time.perf_counter()
        stamps.append(t - start - callback_seconds)
        curves.append(fsc.fsc(on_map(volume, truth), truth, voxel).correlation)
        callback_seconds += time.perf_counter() - t

    result = reconstruct(images, q, cube, "nufft", iterations=args.iterations, tol=0.0, callback=follow)
    total = time.perf_counter() - start - callback_seconds
    setup = stamps[0] - (stamps[1] - stamps[0]) if len(stamps) > 1 else stamps[0]
    per_iteration = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)
    final = curves[-1]
    plateau = next(k for k, c in enumerate(curves) if np.mean(np.abs(c - final)) <= PLATEAU) + 1
    to_plateau = stamps[plateau - 1]
    res = fsc.fsc(on_map(result.volume, truth), truth, voxel)
    print(
        f"Toeplitz CG, {args.n} projections, {SIZE}³: setup {setup:.1f} s, {per_iteration:.2f} s per iteration; "
        f"FSC plateau at iteration {plateau} after {to_plateau:.1f} s (total for {args.iterations}: {total:.1f} s); "
        f"FSC 0.5 at {res.resolution(0.5)[0]:.2f} Å (Nyquist {2 * voxel:.2f} Å)"
    )

    # Baseline: the same CG iterates with AᵀA applied by projecting and backprojecting.
    def normal(v):
        return projection.backproject(
            remove_detector_nyquist(projection.project(v, q, SIZE, "nufft")), q, cube, "nufft"
        )

    t0 = time.perf_counter()
    rhs = projection.backproject(remove_detector_nyquist(images), q, cube, "nufft")
    base_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, *_ = conjugate_gradients(normal, rhs, iterations=args.baseline_iterations)
    base_per_iteration = (time.perf_counter() - t0) / args.baseline_iterations
    base_to_plateau = base_setup + plateau * base_per_iteration
    agree = volumes.correlation(
        x, reconstruct(images, q, cube, "nufft", iterations=args.baseline_iterations, tol=0.0).volume
    )
    print(
        f"baseline (project + backproject per iteration): setup {base_setup:.1f} s, {base_per_iteration:.2f} s "
        f"per iteration; to the same plateau ≈ {base_to_plateau:.0f} s; iterates agree (correlation {agree:.6f})"
    )
    print(
        f"ratio: {base_per_iteration / per_iteration:.1f}x per iteration, "
        f"{base_to_plateau / to_plateau:.1f}x to the plateau"
    )
    met = to_plateau <= TARGET_SECONDS
    print(
        f"target: {SIZE}³ from {args.n} projections to the FSC plateau in <= {TARGET_SECONDS:.0f} s: "
        f"{'met' if met else 'MISSED'} ({to_plateau:.1f} s)"
    )

    record = {
        "n": args.n,
        "size": SIZE,
        "iterations": args.iterations,
        "setup_seconds": setup,
        "seconds_per_iteration": per_iteration,
        "plateau_iteration": plateau,
        "seconds_to_plateau": to_plateau,
        "fsc_0.5_angstrom": res.resolution(0.5)[0],
        "baseline_setup_seconds": base_setup,
        "baseline_seconds_per_iteration": base_per_iteration,
        "baseline_seconds_to_plateau": base_to_plateau,
        "baseline_iterates_correlation": agree,
        "target_met": met,
    }
    if projection.astra_available():
        t0 = time.perf_counter()
        astra = reconstruct(images, q, cube, "astra", iterations=100).volume
        record["astra_seconds_100_iterations"] = time.perf_counter() - t0
        record["astra_fsc_0.5_angstrom"] = fsc.fsc(on_map(astra, truth), truth, voxel).resolution(0.5)[0]
        record["astra_vs_nufft_correlation"] = volumes.correlation(astra, result.volume)
        print(
            f"ASTRA CGLS3D_CUDA, 100 iterations: {record['astra_seconds_100_iterations']:.1f} s, FSC 0.5 at "
            f"{record['astra_fsc_0.5_angstrom']:.2f} Å; correlation with the NUFFT volume "
            f"{record['astra_vs_nufft_correlation']:.4f}"
        )
    save_text(json.dumps(record, indent=2) + "\n", Path("build/bench/reconstruction.json"))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
