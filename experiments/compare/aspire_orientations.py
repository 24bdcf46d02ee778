"""Orientations of a simulated dataset's test images by common lines: ASPIRE's synchronization voting.

Run with ``.venv-compare/bin/python`` (``make compare`` installs it): it needs only ASPIRE, numpy
and h5py, and imports neither cryo_orient nor TensorFlow. ``experiments/compare.py`` calls it::

    .venv-compare/bin/python experiments/compare/aspire_orientations.py \\
        --dataset data/simulated/cpu/5j0n-full-so3.h5 --indices test.npz --out aspire.npz

It reads the dataset's HDF5 file directly (the layout of ``cryo_orient.simulation.simulate.simulate_dataset``),
takes the images at ``indices`` (``--indices``: an .npz with an ``indices`` array, the test split
written by the main venv) as raw noisy images, exactly as ``cryo_orient.workflow.pipeline.raw_images(...,
"noisy")`` (the stored standardised projections times ``standardization_std`` plus
``standardization_mean``), optionally Fourier-downsamples them, and runs
``aspire.abinitio.CLSyncVoting``: the common-lines matrix, the synchronization matrix by voting,
and rotations from its top eigenvectors. It writes (atomically: a temporary name, then a rename)
an .npz with ``rotations`` (n, 3, 3) in ASPIRE's convention (``aspire_convention.py`` converts
them to ours), ``seconds`` (downsampling, common lines, voting and rotations; not reading the file),
``seconds_clmatrix``, ``seconds_voting``, ``seconds_rotations``, ``aspire_version``, and
``parameters`` (a JSON string).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def read_images(dataset, indices) -> tuple[np.ndarray, dict]:
    """Raw noisy images ``indices`` of a dataset file, float64, and a few of its attributes."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) < 3:
        raise ValueError(f"need a 1-D array of at least 3 image indices, got shape {indices.shape}")
    order = np.argsort(indices)
    if np.any(np.diff(indices[order]) == 0):
        raise ValueError("image indices must be distinct")
    with h5py.File(dataset, "r") as f:
        if "projections" not in f or "cache_key" not in f.attrs:
            raise ValueError(f"{dataset} is not a cryo_orient dataset (no projections/cache_key)")
        if "shifts" in f and np.any(f["shifts"][()]):
            raise ValueError(f"{dataset} has shifted projections; this comparison (as the pipeline) has none")
        n = f["projections"].shape[0]
        if indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"image indices must be in [0, {n}), got [{indices.min()}, {indices.max()}]")
        # h5py reads increasing indices; put them back in the caller's order.
        images = np.empty((len(indices),) + f["projections"].shape[1:], dtype=np.float64)
        images[order] = f["projections"][indices[order]]
        mean, std = float(f.attrs["standardization_mean"]), float(f.attrs["standardization_std"])
        voxel = f.attrs.get("voxel_size")
        attrs = {
            "cache_key": str(f.attrs["cache_key"]),
            "noise_variance": float(f.attrs["noise_variance"]),
            "voxel_size": float(voxel) if voxel is not None and np.isfinite(voxel) and voxel > 0 else 1.0,
        }
    return images * std + mean, attrs


def _quiet_aspire(log_dir: str) -> None:
    """Point ASPIRE's config at a folder of ours before it is imported: by default it writes a
    ``logs/`` folder into the working directory and logs at INFO with progress bars."""
    os.environ["ASPIREDIR"] = log_dir
    Path(log_dir, "config.yaml").write_text(
        f"logging:\n  log_dir: {log_dir}\n  tqdm_disable: True\n  console_level: WARNING\n  log_file_level: INFO\n"
    )


def estimate(
    images,
    *,
    pixel_size=1.0,
    n_theta=360,
    n_rad=None,
    max_shift=0.0,
    shift_step=1,
    downsample=0,
    dtype="float64",
    log=print,
) -> dict:
    """Run CLSyncVoting on ``images`` (n, L, L); return the rotations, timings and settings.

    ``pixel_size`` (Å) is only metadata that ASPIRE requires; nothing here depends on it."""
    import aspire
    from aspire.abinitio import CLSyncVoting
    from aspire.source import ArrayImageSource

    images = np.asarray(images, dtype=dtype)
    start = time.perf_counter()
    src = ArrayImageSource(images, pixel_size=pixel_size)
    size = images.shape[-1]
    if downsample and downsample != size:
        src = src.downsample(int(downsample))
        size = int(downsample)
    orient = CLSyncVoting(
        src, n_rad=n_rad or None, n_theta=n_theta, max_shift=max_shift, shift_step=shift_step, disable_gpu=True
    )
    orient.build_clmatrix()
    t_cl = time.perf_counter()
    log(f"common lines of {len(images)} images ({size} px): {t_cl - start:.1f} s")
    orient.syncmatrix_vote()
    t_vote = time.perf_counter()
    log(f"synchronization matrix by voting: {t_vote - t_cl:.1f} s")
    orient.estimate_rotations()
    rotations = np.asarray(orient.rotations, dtype=np.float64)
    end = time.perf_counter()
    log(f"rotations: {end - t_vote:.1f} s")
    return {
        "rotations": rotations,
        "seconds": end - start,
        "seconds_clmatrix": t_cl - start,
        "seconds_voting": t_vote - t_cl,
        "seconds_rotations": end - t_vote,
        "aspire_version": aspire.__version__,
        "parameters": {
            "n_theta": int(n_theta),
            "n_rad": int(orient.n_rad),
            "max_shift_fraction": float(max_shift),
            "max_shift_pixels": int(orient.max_shift),
            "shift_step": shift_step,
            "image_size": int(size),
            "input_size": int(images.shape[-1]),
            "downsample": int(downsample or 0),
            "dtype": str(np.dtype(dtype)),
            "mask": True,
            "hist_bin_width": orient.hist_bin_width,
            "full_width": orient.full_width,
            "n_images": int(len(images)),
        },
    }


def write_npz(path, result: dict, extra: dict) -> Path:
    """Save the result atomically (a temporary file beside ``path``, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parameters = {**result["parameters"], **extra}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                rotations=result["rotations"],
                seconds=np.float64(result["seconds"]),
                seconds_clmatrix=np.float64(result["seconds_clmatrix"]),
                seconds_voting=np.float64(result["seconds_voting"]),
                seconds_rotations=np.float64(result["seconds_rotations"]),
                aspire_version=np.str_(result["aspire_version"]),
                parameters=np.str_(json.dumps(parameters, sort_keys=True)),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="simulated dataset (.h5)")
    parser.add_argument("--indices", required=True, help=".npz with an 'indices' array (the test split)")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--n-theta", type=int, default=360, help="rays per image in the polar Fourier transform")
    parser.add_argument("--n-rad", type=int, default=0, help="radial points per ray (0: ASPIRE's ceil(L/2))")
    parser.add_argument(
        "--max-shift",
        type=float,
        default=0.0,
        help="1-D shift search of common lines, fraction of L (ASPIRE's default 0.15; 0: no search)",
    )
    parser.add_argument("--shift-step", type=float, default=1.0, help="shift search step in pixels")
    parser.add_argument("--downsample", type=int, default=0, help="Fourier-downsample the images to this size first")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args(argv)

    dataset, out = Path(args.dataset).resolve(), Path(args.out).resolve()
    with np.load(args.indices) as f:
        indices = f["indices"]
    images, attrs = read_images(dataset, indices)
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="aspire-") as log_dir:
        # ASPIRE writes its logs (and aspire.err.log on an error) into the working directory.
        _quiet_aspire(log_dir)
        os.chdir(log_dir)
        print(
            f"{args.dataset}: {len(images)} images of {images.shape[-1]} px, noise variance "
            f"{attrs['noise_variance']:g}",
            flush=True,
        )
        try:
            result = estimate(
                images,
                pixel_size=attrs["voxel_size"],
                n_theta=args.n_theta,
                n_rad=args.n_rad,
                max_shift=args.max_shift,
                shift_step=args.shift_step,
                downsample=args.downsample,
                dtype=args.dtype,
                log=lambda line: print(line, flush=True),
            )
        finally:
            os.chdir(here)
    write_npz(out, result, {"dataset": str(args.dataset), "dataset_cache_key": attrs["cache_key"]})
    print(f"wrote {args.out} ({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
