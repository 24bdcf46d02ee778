"""Learned orientations as the start of a refinement: 5j0n, the whole pipeline, then refinement.

    PYTHONPATH=lib python benchmarks/learned_refine.py --work build/learned-refine \
        --out benchmarks/results/learned-refine-DATE.json

The pipeline's own path, on 5j0n at half the cpu profile's sampling (so that refinement rounds
take seconds, not minutes, on 2 cores): the map padded to a cube and resampled to twice its voxel
size (38³ voxels of 7.33 Å, a 65 px detector, Nyquist 14.7 Å); 5,000 projections at uniform
orientations (seed 0; ``--noise-variance`` or ``--snr-db``); then ``cryo-orient run`` with the cpu profile's
``[pipeline]`` settings (the Siamese estimator at 29 px, 80 epochs, recovery, the gauge by common
lines) and ``refine`` set: the gauge-free learned orientations of the test split refined against
their own half maps, from the test images, with no reference and no ground truth
(:mod:`cryo_orient.workflow.pipeline`). The truth is used only to measure E_OR after each round
and the FSC of the refined map with the map, and the error percentiles of the gauge-free and
refined orientations. ``--set KEY=VALUE`` overrides pipeline settings (JSON values; a table is
merged key by key into the profile's, e.g. ``--set 'training={"epochs": 1}'`` for a quick
try; ``refine`` settings are merged with ``--max-iterations``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cryo_orient import cli, data
from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data.dataset import read_dataset
from cryo_orient.data.relion import read_particle_table
from cryo_orient.geometry.volumes import resample_volume
from cryo_orient.orientation.alignment import align
from cryo_orient.orientation.refine import RefineConfig, refine


def binned_map(name: str, factor: int, path: Path) -> Path:
    """The registered map ``name`` padded to an even cube and resampled to ``factor`` × its voxel size."""
    volume, voxel = data.load(name)
    n = max(volume.shape) + max(volume.shape) % 2
    cube = np.zeros((n, n, n))
    lo = [(n - s) // 2 for s in volume.shape]
    cube[tuple(slice(a, a + s) for a, s in zip(lo, volume.shape))] = volume
    data.write_volume(path, resample_volume(cube, voxel, factor * voxel, n // factor), factor * voxel)
    return path


def refine_from_truth(dataset: Path, summary: dict, settings: dict) -> dict:
    """Refine the test split's noisy images from their true orientations with the pipeline's refine
    settings: how far the refiner itself drifts from a perfect start (E_OR per round)."""
    test = read_dataset(dataset).split("test")
    truth = test.quaternions

    def errors(iteration, q, s):
        a = align(truth, q)
        return {"E_OR_median": a.median_error, "E_OR_mean": a.mean_error}

    result = refine(
        test.images("noisy"),
        truth,
        config=RefineConfig.from_dict(dict(settings)),
        pixel_size=summary["voxel_size"],
        callback=errors,
    )
    final = align(truth, result.quaternions)
    print(
        f"from the true orientations: E_OR median {np.degrees(final.median_error):.3f}°, mean "
        f"{np.degrees(final.mean_error):.3f}° after {len(result.log) - 1} rounds, half maps {result.resolution:.1f} Å"
    )
    return {
        "E_OR_median": final.median_error,
        "E_OR_mean": final.mean_error,
        "rounds": len(result.log) - 1,
        "half_map_resolution": result.resolution,
        "seconds": result.seconds,
        "log": result.log,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/learned-refine", help="folder for the map, dataset and run")
    parser.add_argument("--volume", default="5j0n")
    parser.add_argument("--bin", type=int, default=2, help="voxel size factor")
    parser.add_argument("--n-projections", type=int, default=5000)
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--noise-variance", type=float, default=0.0, help="σ² of the noise on the projections")
    noise.add_argument(
        "--snr-db",
        type=float,
        help="the noise as an SNR in dB (the cpu profile's σ² = 16 is -11.8 at 116 px; after the 2 × 2 binning, -5.8)",
    )
    parser.add_argument("--max-iterations", type=int, default=8, help="refinement rounds at most")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a pipeline setting")
    parser.add_argument(
        "--truth-start",
        action="store_true",
        help="also refine the test images from their true orientations with the same settings (the floor a start "
        "cannot beat)",
    )
    parser.add_argument("--out", help="JSON record to write")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    volume = binned_map(args.volume, args.bin, work / f"{args.volume}-bin{args.bin}.mrc")
    simulation = {
        "volume": str(volume),
        "n_projections": args.n_projections,
        "sampling": "uniform_so3",
        "coverage": [2.0, 1.0, 2.0],
        **({"snr_db": args.snr_db} if args.snr_db is not None else {"noise_variance": args.noise_variance}),
        "store_clean": args.snr_db is not None or args.noise_variance > 0,
        "seed": 0,
    }
    noise_name = f"snr{args.snr_db:g}dB" if args.snr_db is not None else f"noise{args.noise_variance:g}"
    dataset = work / f"{args.volume}-bin{args.bin}-{noise_name}.h5"
    sets = [f"--set={key}={json.dumps(value)}" for key, value in simulation.items()]
    if cli.main(["simulate", *sets, "--out", str(dataset), "--quiet"]):
        return 1
    run_dir = work / dataset.stem
    # One `refine` table: `--set` replaces a table whole, so a user's refine settings are merged
    # with --max-iterations here.
    refine, others = {"max_iterations": args.max_iterations}, []
    for item in args.set:
        key, _, raw = item.partition("=")
        if key.strip() == "refine":
            refine |= json.loads(raw)
        else:
            others.append(item)
    pipeline_sets = [f"--set=refine={json.dumps(refine)}", *[f"--set={item}" for item in others]]
    if cli.main(
        ["run", "--dataset", str(dataset), "--profile", "cpu", *pipeline_sets, "--out", str(run_dir), "--quiet"]
    ):
        return 1

    record = json.loads((run_dir / "summary.json").read_text())
    summary, refined = record["summary"], record["summary"]["refinement"]

    def degrees(value):
        return f"{np.degrees(value):.3f}°"

    def resolution(curve):
        return f"FSC 0.5 at {curve['resolution_0.5']:.1f} Å, 0.143 at {curve['resolution_0.143']:.1f} Å"

    fsc = summary["fsc"]
    print(f"true orientations, same images: {resolution(fsc['truth_noisy_images'])}")
    print(f"learned (gauge-free): E_OR median {degrees(summary['E_OR_median'])}, mean {degrees(summary['E_OR_mean'])}")
    print(f"  its map: {resolution(fsc['gauge_noisy_images'])}")
    for entry in refined["log"]:
        print(
            f"round {entry['iteration']}: E_OR median {degrees(entry['E_OR_median'])}, "
            f"half maps {entry['resolution']:.1f} Å, {entry.get('seconds', 0):.0f} s"
        )
    print(f"refined: E_OR median {degrees(refined['E_OR_median'])}, mean {degrees(refined['E_OR_mean'])}")
    print(f"  its map: {resolution(refined['fsc'])}")
    truth = read_dataset(dataset).split("test").quaternions
    percentiles = {}
    for name in ("gauge", "refined"):
        q = read_particle_table(run_dir / f"orientations_{name}.star").quaternions()
        errors = np.degrees(np.asarray(align(truth, q).errors))
        percentiles[name] = {
            "p90_deg": float(np.percentile(errors, 90)),
            "p99_deg": float(np.percentile(errors, 99)),
            "beyond_5_deg": float(np.mean(errors > 5)),
            "beyond_20_deg": float(np.mean(errors > 20)),
        }
        print(f"{name}: {percentiles[name]}")
    from_truth = refine_from_truth(dataset, summary, record["config"]["refine"]) if args.truth_start else None
    if args.out:
        result = {
            **({"from_truth": from_truth} if from_truth else {}),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "simulation": simulation,
            "bin": args.bin,
            "config": record["config"],
            "summary": summary,
            "errors": percentiles,
        }
        save_text(json.dumps(jsonable({"result": result, "provenance": provenance()}), indent=1) + "\n", args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
