"""Projection throughput: the NUFFT projector against a real-space reference, in one run.

    make bench            (or: python benchmarks/projection.py [--threads 2] [--n-nufft 2000])

5j0n, 116 x 116 detector. The baseline is `project_real_space` (trilinear interpolation with
scipy.ndimage.map_coordinates, summed along each ray), measured in the same process on the same
machine, so the ratio does not depend on the machine's speed. Targets (issue 2): NUFFT >= 10x the
reference and >= 300 projections/s on 2 cores. Results are printed and written to
build/bench/projection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads for finufft and BLAS (default 2)")
    parser.add_argument("--n-nufft", type=int, default=2000, help="projections timed with NUFFT")
    parser.add_argument("--n-reference", type=int, default=20, help="projections timed with the reference")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    parser.add_argument("--out", default="build/bench/projection.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np

    from cryo_orient import data
    from cryo_orient.artifacts import save_text
    from cryo_orient.geometry import rotations
    from cryo_orient.tomography.projection import astra_available, project, project_real_space

    volume, _ = data.load("5j0n", progress=False)
    rng = np.random.default_rng(0)
    q = rotations.uniform_so3(max(args.n_nufft, args.n_reference), rng)

    def best_time(fn, repeats):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    project(volume, q[:8], nthreads=args.threads)  # warm up (FFTW plans, imports)
    t_nufft = best_time(lambda: project(volume, q[: args.n_nufft], nthreads=args.threads), args.repeats)
    t_ref = best_time(lambda: project_real_space(volume, q[: args.n_reference]), 1)
    nufft_rate = args.n_nufft / t_nufft
    ref_rate = args.n_reference / t_ref
    a = project(volume.astype(np.float64), q[: args.n_reference])
    b = project_real_space(volume, q[: args.n_reference])
    agreement = float(np.linalg.norm(a - b) / np.linalg.norm(b))

    result = {
        "volume": "5j0n",
        "detector": int(a.shape[-1]),
        "threads": args.threads,
        "nufft_projections_per_s": nufft_rate,
        "reference_projections_per_s": ref_rate,
        "speedup": nufft_rate / ref_rate,
        "relative_difference_nufft_vs_reference": agreement,
        "n_nufft": args.n_nufft,
        "n_reference": args.n_reference,
        "targets": {"speedup_at_least": 10, "nufft_projections_per_s_at_least": 300},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    if astra_available():  # GPU machines only: ASTRA (CUDA) against NUFFT on the same orientations
        project(volume, q[:8], backend="astra")
        qa = q[: args.n_nufft]
        t_astra = best_time(lambda: project(volume, qa, backend="astra"), args.repeats)
        c = project(volume, qa, backend="astra")
        d = project(volume, qa, backend="nufft", nthreads=args.threads)
        result["astra_projections_per_s"] = len(qa) / t_astra
        result["astra_over_nufft"] = result["astra_projections_per_s"] / nufft_rate
        result["relative_difference_astra_vs_nufft"] = float(np.linalg.norm(c - d) / np.linalg.norm(d))
    ok = result["speedup"] >= 10 and nufft_rate >= 300
    print(f"projection, 5j0n at {a.shape[-1]}x{a.shape[-1]}, {args.threads} threads")
    print(f"  NUFFT (finufft, float32)      {nufft_rate:9.1f} projections/s")
    print(f"  reference (trilinear ray sum) {ref_rate:9.1f} projections/s")
    print(f"  ratio NUFFT / reference       {result['speedup']:9.1f} x   (target >= 10)")
    print(f"  NUFFT target >= 300/s         {'met' if nufft_rate >= 300 else 'MISSED'}")
    print(f"  relative difference of the two projectors: {agreement:.3%} (interpolation error)")
    if "astra_projections_per_s" in result:
        print(
            f"  ASTRA (CUDA)                  {result['astra_projections_per_s']:9.1f} projections/s"
            f"  ({result['astra_over_nufft']:.1f} x NUFFT; "
            f"difference {result['relative_difference_astra_vs_nufft']:.2%})"
        )
    else:
        print("  ASTRA: no usable CUDA GPU here, not measured")
    save_text(json.dumps(result, indent=2) + "\n", Path(args.out))
    print(f"  written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
