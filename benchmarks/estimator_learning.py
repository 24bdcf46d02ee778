"""What keeps the Siamese estimator from learning on a foreign particle stack: one factor at a time.

    PYTHONPATH=lib python benchmarks/estimator_learning.py --work build/estimator-learning \
        --out benchmarks/results/estimator-learning-DATE.jsonl [--correction spectral] [--oracle-centred] ...

On the mirror's ASPIRE 70S stack (``$DATA_MIRROR/aspire-70s-ctf``: 2,000 particles of 48 px, CTF,
offsets σ = 3 px, SNR 0.11 as measured), ``orient``'s own stages measure the stack and simulate a
training set that matches it (:mod:`cryo_orient.workflow.orient`); an estimator is then trained
with one factor changed at a time, and judged on the stack itself with its true angles (kept in
the mirror's ``particles.star``, read here only to judge):

- the validation MAE per epoch (simulated images of the training set's kind);
- on 1,000 stack images, the Pearson correlation and MAE of the estimated distances against the
  true ones over 20,000 random pairs (the stack is what matters: a correlation near 0 means the
  estimator learned nothing that carries over);
- with ``--recover``, ``orient``'s recovery and gauge on the whole stack, and the median error
  after a rotation and the hand (:func:`cryo_orient.orientation.alignment.align_rigid`).

The factors: the CTF correction of the estimator's input (``--correction``: ``orient``'s phase
flipping, Wiener filtering with one SNR, none; or ``spectral``: a Wiener filter with the SNR per
Fourier shell measured from the training set, ``C / (C² + N / S(k))``, which undoes the CTF where
the data allow); ``--noiseless`` (fresh zero noise, only shifts); ``--ctf-free`` (the clean
training images divided by their CTF where ``|C| > 0.05``, with ``--noiseless``: the learning
problem without the CTF); ``--oracle-centred`` (the stack centred by its true origins and the
training set simulated without offsets: what a perfect centring would give). Each estimator is
cached by its inputs (``--work``); a rerun only judges. Each result is appended to ``--out`` as
one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

from cryo_orient.artifacts import provenance
from cryo_orient.data import write_volume
from cryo_orient.data.dataset import Dataset
from cryo_orient.data.particles import read_particles
from cryo_orient.estimation.siamese import SiameseEstimator
from cryo_orient.geometry import rotations
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.orientation.shifts import center_images
from cryo_orient.simulation.matching import radial_power, shell_mean, shell_radius
from cryo_orient.tomography.ctf import CTFParams, _filter, ctf_values
from cryo_orient.workflow import orient
from cryo_orient.workflow.refine import load_reference
from cryo_orient.workflow.stages import digest

CORRECTIONS = ("phase_flip", "wiener", "none", "spectral")


def _with_read(dataset: Dataset, read, *key) -> Dataset:
    """``dataset`` with its images read by ``read`` and its cache key extended by ``key``."""
    metadata = dict(dataset.metadata)
    metadata["cache_key"] = digest(metadata["cache_key"], *key)
    return dataclasses.replace(dataset, metadata=MappingProxyType(metadata), _read=read)


def oracle_centred(stack: Dataset, true_shifts) -> Dataset:
    """The stack's images centred by their true origins."""
    base, position = stack._read, {int(r): k for k, r in enumerate(stack.index)}

    def read(name, rows):
        return center_images(base(name, rows), true_shifts[[position[int(r)] for r in rows]])

    return _with_read(stack, read, "oracle-centred")


def inverse_ssnr(training: Dataset, noise_variance: float, n_images: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``N / S(k)`` on the rfft2 grid: the white noise's power over the CTF-free projections' power
    per shell, measured on the training set's clean images (their power over their mean CTF²)."""
    size, pixel = training.image_size, training.pixel_size
    k = min(n_images, len(training.index))
    clean = training.images("clean", np.arange(k))
    params = CTFParams.from_columns(training.ctf, len(training.index)).subset(np.arange(k))
    ctf2 = shell_mean(np.mean(ctf_values(params, size, pixel) ** 2, axis=0))
    signal = radial_power(clean) / np.maximum(ctf2, 1e-3)
    noise = noise_variance * size * size  # white noise's power per coefficient of an unnormalised FFT
    radius, shells = shell_radius(size), size // 2 + 1
    inverse = np.where(radius < shells, noise / np.maximum(signal[np.minimum(radius, shells - 1)], 1e-30), 1e30)
    return inverse, signal / noise


def spectral_wiener(dataset: Dataset, inverse: np.ndarray, *, invert: bool) -> Dataset:
    """``dataset`` (negated where ``invert``, as :func:`orient.corrected` does) filtered by
    ``C / (C² + N / S(k))`` per image."""
    signed = orient.corrected(dataset, "none", invert=invert)
    params = CTFParams.from_columns(dataset.ctf, len(dataset.index))
    position = {int(row): k for k, row in enumerate(dataset.index)}
    base = signed._read

    def read(name, rows):
        p = params.subset(np.array([position[int(r)] for r in rows]))
        return _filter(base(name, rows), p, dataset.pixel_size, lambda c, b: c / (c * c + inverse)).astype(np.float32)

    return _with_read(signed, read, "spectral", inverse)


def ctf_free(training: Dataset) -> Dataset:
    """The training set whose clean images are divided by their CTF where ``|C| > 0.05`` (else 0)."""
    params = CTFParams.from_columns(training.ctf, len(training.index))
    position = {int(row): k for k, row in enumerate(training.index)}
    base = training._read

    def undo(c, batch):
        big = np.abs(c) > 0.05
        return np.where(big, 1.0 / np.where(big, c, 1.0), 0.0)

    def read(name, rows):
        images = base(name, rows)
        if name != "clean":
            return images
        p = params.subset(np.array([position[int(r)] for r in rows]))
        return _filter(images, p, training.pixel_size, undo).astype(np.float32)

    return _with_read(training, read, "ctf-free")


def noiseless(training: Dataset) -> Dataset:
    """The training set with its noise variance set to 0 (fresh noise then adds none)."""
    metadata = dict(training.metadata)
    metadata["noise_variance"] = 0.0
    metadata["cache_key"] = digest(metadata["cache_key"], "noiseless")
    return dataclasses.replace(training, metadata=MappingProxyType(metadata))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=None, help="folder of the ASPIRE 70S stack (default: the mirror's)")
    parser.add_argument("--work", default="build/estimator-learning", help="cache of training sets and estimators")
    parser.add_argument("--correction", choices=CORRECTIONS, default="phase_flip")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--input-size", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--noiseless", action="store_true", help="train without noise (shifts only)")
    parser.add_argument("--ctf-free", action="store_true", help="train on clean images with the CTF divided out")
    parser.add_argument("--oracle-centred", action="store_true", help="stack centred by its true origins")
    parser.add_argument("--recover", action="store_true", help="also recover the stack's orientations")
    parser.add_argument("--out", help="JSON-lines record to append to")
    args = parser.parse_args(argv)

    folder = Path(args.stack or Path(os.environ.get("DATA_MIRROR", "../shared/data")) / "aspire-70s-ctf")
    if not (folder / "particles.star").is_file():
        print(f"error: no ASPIRE 70S stack in {folder}; set DATA_MIRROR or give --stack", file=sys.stderr)
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stack = read_particles(folder / "particles_noangles.star")
    judge = read_particles(folder / "particles.star")  # the true angles and origins, to judge only
    volume, _ = load_reference(folder / "map48.mrc", stack, None)
    reference_path = work / f"reference-{digest(volume)}.mrc"
    if not reference_path.is_file():
        write_volume(reference_path, volume, stack.pixel_size)
    config = orient.OrientConfig.from_dict(
        {
            "n_train": args.n_train,
            "epochs": args.epochs,
            "input_size": args.input_size,
            "learning_rate": args.learning_rate,
            **({"shifts": "none"} if args.oracle_centred else {}),
        }
    )
    if args.oracle_centred:
        stack = oracle_centred(stack, judge.shifts)
    ctx = {
        "stack": stack,
        "reference": volume,
        "reference_path": reference_path,
        "config": config,
        "cache_dir": work,
        "progress": False,
        "seconds": {},
    }
    measured = work / f"model-{digest(stack.cache_key, config.invert_contrast, config.n_measure, config.seed)}.json"
    if measured.is_file():
        ctx["model"] = {k: np.asarray(v) for k, v in json.loads(measured.read_text()).items()}
    else:
        ctx["model"] = orient._model(ctx)
        measured.write_text(json.dumps({k: v.item() for k, v in ctx["model"].items()}))
    model = ctx["stack_model"] = orient._stack_model(ctx)
    training = ctx["training_set"] = orient._training_set(ctx)

    fresh, ssnr = True, None
    if args.correction == "spectral":
        inverse, ssnr = inverse_ssnr(training, model.training_noise_variance)
        train_view = spectral_wiener(training, inverse, invert=False)
        stack_view = spectral_wiener(stack, inverse, invert=model.invert)
        fresh = False  # fresh white noise on filtered clean images is not the filtered noise
    else:
        snr = model.snr if args.correction == "wiener" else None
        train_view = orient.corrected(training, args.correction, snr=snr)
        stack_view = orient.corrected(stack, args.correction, invert=model.invert, snr=snr)
        fresh = args.correction != "wiener"
    if args.noiseless:
        train_view, fresh = noiseless(train_view), True
    if args.ctf_free:
        train_view = ctf_free(train_view)

    start = time.perf_counter()
    estimator = SiameseEstimator(config.training(stack.image_size), fresh_noise=fresh)
    estimator.fit(train_view, cache_dir=work / "siamese", progress=False)
    history = estimator.result.history

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(stack.n, min(1000, stack.n), replace=False))
    features = estimator.embed(stack_view.subset(sample))
    i, j = rng.integers(0, len(sample), (2, 20000))
    keep = i != j
    i, j = i[keep], j[keep]
    estimated = estimator.distance_function(features)(i, j)
    q = judge.quaternions[sample]
    true = np.asarray(rotations.distance(q[i], q[j]))
    record = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "stack")},
        "fresh_noise": fresh,
        "stack_model": model.to_dict(),
        "val_mae": [round(float(v), 4) for v in history["val_mae"]],
        "train_seconds": float(history["seconds"][-1]),
        "stack_pairs": {
            "pearson": float(np.corrcoef(estimated, true)[0, 1]),
            "mae": float(np.mean(np.abs(estimated - true))),
            "mae_of_best_constant": float(np.mean(np.abs(true - np.median(true)))),
        },
    }
    if ssnr is not None:
        record["ssnr_per_shell"] = [round(float(v), 4) for v in ssnr]
    if args.recover:
        ctx["views"] = {"train": train_view, "stack": stack_view}
        ctx["estimator"] = estimator
        ctx["anchor_index"] = orient._anchor_index(ctx)
        ctx["features"] = orient._features(ctx)
        ctx["recovery"] = orient._recovery(ctx)
        gauge = orient._gauge(ctx)
        errors = np.degrees(np.asarray(align_rigid(judge.quaternions, gauge["quaternions"]).errors))
        record["recovered"] = {
            "anchor_median_deg": float(np.degrees(np.median(gauge["anchor_errors"]))),
            "median_deg": float(np.median(errors)),
            "mean_deg": float(np.mean(errors)),
        }
    record["seconds"] = time.perf_counter() - start
    record["provenance"] = provenance()
    line = json.dumps(record)
    print(
        f"{args.correction}{' noiseless' if args.noiseless else ''}{' ctf-free' if args.ctf_free else ''}"
        f"{' oracle-centred' if args.oracle_centred else ''}, {args.epochs} epochs: val MAE "
        f"{record['val_mae'][-1]:.3f} (best {min(record['val_mae']):.3f}), stack pairs r = "
        f"{record['stack_pairs']['pearson']:.3f}, MAE {record['stack_pairs']['mae']:.3f} (best constant "
        f"{record['stack_pairs']['mae_of_best_constant']:.3f})"
        + (f", recovered median {record['recovered']['median_deg']:.1f}°" if "recovered" in record else "")
    )
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
