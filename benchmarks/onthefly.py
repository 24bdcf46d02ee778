"""On-the-fly training input against training: can the simulation keep the CNN fed?

    make bench            (or: python benchmarks/onthefly.py [--quick] [--input-size 58] ...)

Three measurements in one run, on the machine it runs on:

(a) the input pipeline: images per second of
    :func:`cryo_orient.simulation.onthefly.simulate_pairs` (two images a pair) on a library of
    ``--maps`` and ``--pseudo-molecules``, ``--pairs`` pairs a batch, at ``--input-size`` px,
    after every (map, scale) resampling is cached (the resampling, paid once per map and scale
    level, is timed apart: "warm-up"). Serially, and with ``--threads`` threads on distinct
    batch indices (what ``PyDataset(workers=...)`` does; a batch depends on its index only).
    ``--profile`` prints where the pipeline's time goes.
(b) training: images per second of ``train_on_batch`` of the Siamese model
    (``siamese.build_model(input_size, --n-features)``, the paper's encoder) on pre-made batches
    of the same size (2 CNN passes a pair), from the median step after ``--warmup`` steps.
(c) both together: ``model.fit`` of one epoch of ``--fit-steps`` on-the-fly batches
    (:func:`cryo_orient.estimation.onthefly.pair_dataset`, one worker), images per second, after
    a fit of ``--warmup`` batches (fit's own set-up and tracing).

The ratio (a) / (b) is the issue's target: at least 2 at 58 px on 2 cores. The load average
before and after is recorded (the machine may be shared). Results are printed and written to
build/bench/onthefly.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DEFAULTS = {"pairs": 32, "batches": 20, "steps": 6, "warmup": 2, "fit_steps": 10, "pseudo_molecules": 4}
QUICK = {"pairs": 16, "batches": 4, "steps": 2, "warmup": 1, "fit_steps": 2, "pseudo_molecules": 1}
RATIO_TARGET = 2.0


def _load():
    return [round(x, 2) for x in os.getloadavg()]


def _pipeline(library, simulation, args, seed):
    from cryo_orient.simulation.onthefly import simulate_pairs

    def batch(k):
        return simulate_pairs(
            library, args.pairs, args.input_size, simulation, rng=np.random.default_rng([seed, 3, 1, k])
        )

    t0 = time.perf_counter()
    for k in range(args.batches):
        batch(k)
    serial = time.perf_counter() - t0
    threaded = None
    if args.threads > 1:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(batch, range(args.batches, 2 * args.batches)))
        threaded = time.perf_counter() - t0
    images = 2 * args.pairs * args.batches
    out = {"serial_images_per_s": images / serial, "serial_seconds_per_batch": serial / args.batches}
    if threaded is not None:
        out[f"threads_{args.threads}_images_per_s"] = images / threaded
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for k in range(2 * args.batches, 2 * args.batches + max(2, args.batches // 2)):
            batch(k)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        out["profile"] = text.getvalue()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=58)
    parser.add_argument("--n-features", type=int, default=512)
    parser.add_argument("--feature-distance", default="squared_cosine")
    parser.add_argument("--maps", nargs="*", default=["5j0n", "hand", "70s-ribosome"])
    parser.add_argument("--pseudo-molecules", type=int)
    parser.add_argument("--pairs", type=int, help="pairs a batch")
    parser.add_argument("--batches", type=int, help="batches timed in (a)")
    parser.add_argument("--steps", type=int, help="training steps timed in (b)")
    parser.add_argument("--warmup", type=int, help="training steps before timing (compilation)")
    parser.add_argument("--fit-steps", type=int, help="batches of the fit in (c); 0 skips it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print the pipeline's profile")
    parser.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    parser.add_argument("--out", default="build/bench/onthefly.json")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from cryo_orient.estimation import onthefly, siamese
    from cryo_orient.simulation.onthefly import MapLibrary, OnTheFlyConfig, _fill_levels

    load_before = _load()
    simulation = OnTheFlyConfig()
    t0 = time.perf_counter()
    library = MapLibrary(args.maps, n_pseudo_molecules=args.pseudo_molecules)
    library_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m, entry in enumerate(library.maps):
        for fill in _fill_levels(simulation):
            library.volume_at(m, entry.diameter / (fill * args.input_size), args.input_size)
    warmup_seconds = time.perf_counter() - t0
    pipeline = _pipeline(library, simulation, args, seed=0)
    print(
        f"(a) input pipeline at {args.input_size} px, {args.pairs} pairs a batch, {len(library)} maps: "
        f"{pipeline['serial_images_per_s']:.0f} images/s serially"
        + (
            f", {pipeline[f'threads_{args.threads}_images_per_s']:.0f} with {args.threads} threads"
            if args.threads > 1
            else ""
        )
        + f" (library {library_seconds:.1f} s, resampling warm-up {warmup_seconds:.1f} s)"
    )
    if args.profile:
        print(pipeline["profile"])

    import keras

    config = siamese.TrainingConfig(
        input_size=args.input_size, n_features=args.n_features, feature_distance=args.feature_distance, regime="uniform"
    )
    keras.utils.set_random_seed(0)
    model = siamese.build_model(args.input_size, args.n_features, args.feature_distance)
    siamese._compile(model, config, False)
    data = onthefly.pair_dataset(
        library, simulation, size=args.input_size, batch_size=args.pairs, steps=args.warmup + args.steps, seed=1
    )
    batches = [data[k] for k in range(len(data))]
    times = []
    for k, ((a, b), labels) in enumerate(batches):
        t0 = time.perf_counter()
        np.asarray(model.train_on_batch([a, b], labels))
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    training = {"images_per_s": 2 * args.pairs / step, "seconds_per_step": step}
    ratio = pipeline["serial_images_per_s"] / training["images_per_s"]
    print(
        f"(b) training ({model.count_params():,} parameters): {training['images_per_s']:.0f} images/s "
        f"({step:.3f} s a step of {args.pairs} pairs)"
    )
    fit = None
    if args.fit_steps:
        data = onthefly.pair_dataset(
            library, simulation, size=args.input_size, batch_size=args.pairs, steps=args.fit_steps, seed=2
        )
        warm = onthefly.pair_dataset(
            library, simulation, size=args.input_size, batch_size=args.pairs, steps=args.warmup, seed=3
        )
        model.fit(warm, epochs=1, verbose=0, shuffle=False)  # fit's own set-up and tracing, not timed
        t0 = time.perf_counter()
        model.fit(data, epochs=1, verbose=0, shuffle=False)
        seconds = time.perf_counter() - t0
        fit = {"images_per_s": 2 * args.pairs * args.fit_steps / seconds, "seconds": seconds}
        print(f"(c) fit on on-the-fly batches: {fit['images_per_s']:.0f} images/s")
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(f"ratio pipeline / training: {ratio:.2f} (target >= {RATIO_TARGET:g}: {verdict})")
    record = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "keras_backend": keras.backend.backend(),
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "library": library.fingerprints,
        "library_seconds": library_seconds,
        "resampling_warmup_seconds": warmup_seconds,
        "pipeline": {k: v for k, v in pipeline.items() if k != "profile"},
        "training": training,
        "fit_on_the_fly": fit,
        "ratio": ratio,
        "target": RATIO_TARGET,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {out}")
    return 0 if ratio >= RATIO_TARGET or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
