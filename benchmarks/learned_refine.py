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
refined orientations. ``--dataset PATH`` takes a simulated dataset as it is instead (the cpu
profile's 116 px ``5j0n-full-so3-noise16``, figure 10's case). ``--truth-start`` and
``--common-lines-start`` also run the same refinement from the true orientations (the floor a
start cannot beat) and from common-lines orientations
(ASPIRE's synchronization voting on the same test images, as the compare experiment's, in
``.venv-compare``): a comparison of initialisations with the refiner fixed. ``--set KEY=VALUE``
overrides pipeline settings (JSON values; a table is merged key by key into the profile's, e.g.
``--set 'training={"epochs": 1}'`` for a quick try; ``refine`` settings are merged with
``--max-iterations``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cryo_orient import cli, data
from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import write_volume
from cryo_orient.data.dataset import read_dataset
from cryo_orient.data.relion import read_particle_table, write_star
from cryo_orient.geometry import rotations
from cryo_orient.geometry.volumes import resample_volume
from cryo_orient.orientation.alignment import align
from cryo_orient.orientation.refine import RefineConfig, RefinementResult, refine
from cryo_orient.orientation.shifts import center_images
from cryo_orient.simulation import simulate
from cryo_orient.simulation.noise import normalize_background
from cryo_orient.tomography.reconstruct import reconstruct
from cryo_orient.workflow.pipeline import reconstruct_on_map
from cryo_orient.workflow.relion_refine import auto_refine
from cryo_orient.workflow.stages import StageCache, digest


def binned_map(name: str, factor: int, path: Path) -> Path:
    """The registered map ``name`` padded to an even cube and resampled to ``factor`` × its voxel size."""
    volume, voxel = data.load(name)
    n = max(volume.shape) + max(volume.shape) % 2
    cube = np.zeros((n, n, n))
    lo = [(n - s) // 2 for s in volume.shape]
    cube[tuple(slice(a, a + s) for a, s in zip(lo, volume.shape))] = volume
    data.write_volume(path, resample_volume(cube, voxel, factor * voxel, n // factor), factor * voxel)
    return path


def evaluate(dataset: Path, q, shifts, pipeline_config: dict, cache_dir: Path) -> dict:
    """The same measures for every refiner: E_OR after the O(4) alignment (median, mean, the
    fractions beyond 5° and 20°), and the FSC with the true map of the pipeline's reconstruction
    from the test split's noisy images, centred by ``shifts``, at the aligned orientations
    (:func:`cryo_orient.workflow.pipeline.reconstruct_on_map`: one solver for every refiner's poses)."""
    data = read_dataset(dataset)
    test = data.split("test")
    truth_map, voxel, _ = simulate.volume_source(simulate.SimulationConfig.from_dict(dict(data.config)))
    aligned = align(test.quaternions, q)
    errors_deg = np.degrees(np.asarray(aligned.errors))
    images = center_images(test.images("noisy"), shifts)
    placed = reconstruct_on_map(
        images, aligned.aligned, pipeline_config, np.asarray(truth_map, dtype=np.float64), voxel, cache_dir=cache_dir
    )
    return {
        "E_OR_median": aligned.median_error,
        "E_OR_mean": aligned.mean_error,
        "beyond_5_deg": float(np.mean(errors_deg > 5)),
        "beyond_20_deg": float(np.mean(errors_deg > 20)),
        "fsc_0.5_angstrom": placed["fsc"].resolution(0.5)[0],
        "fsc_0.143_angstrom": placed["fsc"].resolution(0.143)[0],
    }


def refine_from(dataset: Path, start, summary: dict, pipeline_config: dict, label: str, cache_dir: Path) -> dict:
    """Refine the test split's noisy images from the orientations ``start`` with the pipeline's
    refine settings, against their own half maps as the pipeline does (E_OR per round)."""
    data = read_dataset(dataset)
    test = data.split("test")
    truth = test.quaternions

    def errors(iteration, q, s):
        a = align(truth, q)
        return {"E_OR_median": a.median_error, "E_OR_mean": a.mean_error}

    config = RefineConfig.from_dict(dict(pipeline_config["refine"]))
    # Cached by its inputs, so that a later evaluation does not refine again.
    key = digest("refined", data.cache_key, np.ascontiguousarray(start, dtype=np.float64), config.to_dict())
    arrays = StageCache(cache_dir).arrays(
        "refined",
        key,
        lambda: refine(
            test.images("noisy"), start, config=config, pixel_size=summary["voxel_size"], callback=errors
        ).to_arrays(),
    )
    result = RefinementResult.from_arrays(arrays)
    measured = evaluate(dataset, result.quaternions, result.shifts, pipeline_config, cache_dir)
    print(
        f"from the {label}: E_OR median {np.degrees(measured['E_OR_median']):.3f}°, mean "
        f"{np.degrees(measured['E_OR_mean']):.3f}° after {len(result.log) - 1} rounds, half maps "
        f"{result.resolution:.1f} Å, map FSC 0.5 at {measured['fsc_0.5_angstrom']:.1f} Å, {result.seconds:.0f} s"
    )
    return {
        **measured,
        "rounds": len(result.log) - 1,
        "half_map_resolution": result.resolution,
        "seconds": result.seconds,
        "log": result.log,
    }


def common_lines_start(dataset: Path, python: str, cache_dir: Path) -> tuple[np.ndarray, dict]:
    """The test split's orientations by common lines (ASPIRE's synchronization voting, as the compare
    experiment's, on the full-size noisy images), run in ASPIRE's venv and cached by their inputs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "compare"))
    import aspire_convention  # plain numpy
    import aspire_runner

    data = read_dataset(dataset)
    test = data.split("test")
    settings = {"n_theta": 360, "n_rad": 0, "max_shift": 0.0, "downsample": 0}
    result = aspire_runner.cached_orientations(python, dataset, data.cache_key, test.index, settings, cache_dir)
    q = rotations.matrix_to_quaternion(
        aspire_convention.nearest_rotation(aspire_convention.aspire_to_matrices(result["rotations"]))
    )
    start = align(test.quaternions, q)
    print(
        f"common lines ({result['seconds']:.0f} s): E_OR median {np.degrees(start.median_error):.3f}°, "
        f"mean {np.degrees(start.mean_error):.3f}°"
    )
    info = {
        "settings": settings,
        "seconds": result["seconds"],
        "aspire_version": result["aspire_version"],
        "E_OR_median": start.median_error,
        "E_OR_mean": start.mean_error,
    }
    return q, info


def relion_from(dataset: Path, start, summary: dict, pipeline_config: dict, folder: Path, mpi: int) -> dict:
    """RELION 3.1's auto-refine of the same test images from the same start: a global search (RELION's
    usual run, its angles ignored) from the map of the start orientations, low-passed to 40 Å.

    The images are written as RELION expects them (background normalised, no CTF); the mask is
    the true map's extent. Evaluated as our refinement is: E_OR after the O(4) alignment, and the
    FSC with the true map of the pipeline's reconstruction from RELION's orientations
    (:func:`cryo_orient.workflow.pipeline.reconstruct_on_map`), beside RELION's own resolution."""
    data = read_dataset(dataset)
    test = data.split("test")
    images, pixel = test.images("noisy"), float(summary["voxel_size"])
    size = images.shape[-1]
    truth_map, _, _ = simulate.volume_source(simulate.SimulationConfig.from_dict(dict(data.config)))
    # The mask: the sphere holding every voxel above 1 % of the map's maximum, 10 % wider.
    centre = (np.array(truth_map.shape) - 1) / 2
    inside = np.argwhere(truth_map > 0.01 * truth_map.max())
    radius_px = min(1.1 * float(np.linalg.norm(inside - centre, axis=1).max()), size // 2 - 3)
    folder.mkdir(parents=True, exist_ok=True)
    star = write_star(
        folder / "start.star",
        start,
        pixel_size=pixel,
        image_size=size,
        image_stack=normalize_background(images, radius_px),
    )
    reference = reconstruct(images, start, (size,) * 3, iterations=20).volume
    write_volume(folder / "start-map.mrc", reference.astype(np.float32), pixel)
    run = auto_refine(
        star,
        folder / "start-map.mrc",
        folder / "global",
        mode="global",
        particle_diameter=2 * radius_px * pixel,
        initial_lowpass=40.0,
        offset_range=3.0,
        offset_step=1.0,
        ctf=False,
        mpi=mpi,
    )
    measured = evaluate(dataset, run.quaternions, run.shifts, pipeline_config, folder)
    print(
        f"RELION global from the learned start's map: E_OR median {np.degrees(measured['E_OR_median']):.3f}°, "
        f"mean {np.degrees(measured['E_OR_mean']):.3f}°, its resolution {run.resolution:.1f} Å, {run.seconds:.0f} s; "
        f"map FSC 0.5 at {measured['fsc_0.5_angstrom']:.1f} Å"
    )
    return {
        **measured,
        "relion_resolution": run.resolution,
        "iterations": run.iterations,
        "seconds": run.seconds,
        "command": " ".join(run.command),
        "particle_diameter_angstrom": 2 * radius_px * pixel,
    }


def simulated_dataset(args, work: Path) -> tuple[Path | None, dict]:
    """Simulate the script's own dataset: the map resampled to ``--bin`` × its voxel size, 5,000
    projections at uniform orientations (seed 0) with the noise asked for; its path (None if the
    simulation failed) and its settings."""
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
        return None, simulation
    return dataset, simulation


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
    parser.add_argument(
        "--dataset",
        help="a simulated dataset to use as it is (e.g. the cpu profile's data/simulated/cpu/5j0n-full-so3-noise16.h5, "
        "figure 10's 116 px case) instead of simulating one; --volume, --bin, --n-projections and the noise are then "
        "not used",
    )
    parser.add_argument("--max-iterations", type=int, default=8, help="refinement rounds at most")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a pipeline setting")
    parser.add_argument(
        "--truth-start",
        action="store_true",
        help="also refine the test images from their true orientations with the same settings (the floor a start "
        "cannot beat)",
    )
    parser.add_argument(
        "--common-lines-start",
        action="store_true",
        help="also refine the test images from common-lines orientations (ASPIRE's synchronization voting, run "
        "in --aspire-python) with the same settings: the same refinement from another initialisation",
    )
    parser.add_argument(
        "--aspire-python", default=".venv-compare/bin/python", help="ASPIRE's interpreter (`make compare` installs it)"
    )
    parser.add_argument(
        "--relion",
        action="store_true",
        help="also run RELION 3.1's auto-refine (global search) on the same test images from the map of the "
        "learned start: the field's refiner from the same start",
    )
    parser.add_argument("--relion-mpi", type=int, default=3, help="RELION's MPI processes (a leader and 2 workers)")
    parser.add_argument("--out", help="JSON record to write")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset:
        dataset = Path(args.dataset)
        if not dataset.is_file():
            print(f"error: --dataset {dataset}: no such file; simulate it first (e.g. make {dataset} PROFILE=cpu)")
            return 1
        simulation = {"dataset": str(dataset), "cache_key": read_dataset(dataset).cache_key}
    else:
        dataset, simulation = simulated_dataset(args, work)
        if dataset is None:
            return 1
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
    # One output folder per set of settings, one stage cache for all: runs with other refine
    # settings (even at the same time) then never read each other's STAR files.
    run_dir = work / dataset.stem / "runs" / digest("learned-refine run", *pipeline_sets)[:16]
    cache = work / dataset.stem / "cache"
    if cli.main(
        [
            "run",
            "--dataset",
            str(dataset),
            "--profile",
            "cpu",
            *pipeline_sets,
            "--out",
            str(run_dir),
            "--cache-dir",
            str(cache),
            "--quiet",
        ]
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
    if "fsc_aligned" in refined:  # the refined poses aligned to the truth, reconstructed in the map's frame
        print(f"  its map in the map's frame: {resolution(refined['fsc_aligned'])}")
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
    # Every refiner's poses measured the same way (the pipeline's own refined-map FSC places the
    # map by a further volume alignment; this one does not, for RELION's poses either).
    evaluated = {}
    for name in ("gauge", "refined"):
        table = read_particle_table(run_dir / f"orientations_{name}.star")
        evaluated[name] = evaluate(dataset, table.quaternions(), table.shifts(), record["config"], work / "maps")
        print(f"{name}, evaluated as every refiner: FSC 0.5 at {evaluated[name]['fsc_0.5_angstrom']:.1f} Å")
    from_truth = (
        refine_from(dataset, truth, summary, record["config"], "true orientations", work / "maps")
        if args.truth_start
        else None
    )
    from_common_lines = None
    if args.common_lines_start:
        q_lines, lines = common_lines_start(dataset, args.aspire_python, work / "aspire")
        from_common_lines = {
            "start": lines,
            **refine_from(dataset, q_lines, summary, record["config"], "common lines", work / "maps"),
        }
    from_relion = None
    if args.relion:
        q_start = read_particle_table(run_dir / "orientations_gauge.star").quaternions()
        from_relion = relion_from(dataset, q_start, summary, record["config"], work / "relion", args.relion_mpi)
    if args.out:
        result = {
            **({"from_truth": from_truth} if from_truth else {}),
            **({"from_common_lines": from_common_lines} if from_common_lines else {}),
            **({"relion_from_learned": from_relion} if from_relion else {}),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "simulation": simulation,
            "bin": None if args.dataset else args.bin,
            "config": record["config"],
            "summary": summary,
            "errors": percentiles,
            "evaluated": evaluated,
        }
        save_text(json.dumps(jsonable({"result": result, "provenance": provenance()}), indent=1) + "\n", args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
