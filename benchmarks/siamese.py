"""Siamese distance estimator speed: the paper's training regime against in-batch pairs, in one run.

    make bench            (or: python benchmarks/siamese.py [--quick] [--sizes 116,58] ...)
    KERAS_BACKEND=jax python benchmarks/siamese.py       (machines with JAX but no TensorFlow)

Three measurements, all on the machine it runs on (CPU, or the first GPU the Keras backend sees):

(a) throughput of the paper's model (``siamese.build_model(s, 512)``, 4,551,936 parameters at
    116 px) at each side s of ``--sizes``: forward images/s of its encoder (``predict_on_batch``,
    ``--forward-batch`` images) and training images/s of the Siamese model (``train_on_batch``
    on ``--train-batch`` pairs, i.e. 2 x that many CNN passes per step), after warm-up steps
    (compilation), from the median step time.
(b) pair throughput: distinct pair losses per second of training. Regime "faithful" (the
    paper's code): the Siamese model on (a, b) batches of ``--pair-batch`` pairs, 2 CNN passes
    per pair. Regime "batch": B images (each B of ``--batch-size``) through the encoder once, the
    loss on all B(B-1)/2 pairs of the batch (``siamese.InBatchPairLoss``). Ratio batch / faithful.
(c) wall time to the same validation MAE: 5j0n, SO(3)-uniform full coverage, the paper's split
    (``splits.train_val_test_split``), noiseless. Regime "faithful" trains for
    ``--faithful-epochs`` epochs; its best validation MAE m1 was first reached at t1 seconds
    (``history["seconds"]``: training and validation time from the first epoch, compilation
    included). Regime "batch" then trains, for each B, with ``target_val_mae = m1`` (at most
    ``--batch-epochs-cap`` epochs) and stops at t3. Ratio t1 / t3 (target >= 10, for the first B;
    the exit status is 1 when it is missed). Same learning rate (the paper's RMSprop, 1e-3) and
    validation (every epoch) in both regimes; the batch regime's epochs are much shorter, so it
    validates more often per second. Also reported: both times without compilation (the first
    epoch's duration replaced by the median later epoch's), which is large on a GPU.

The baseline of each ratio (the faithful regime) is measured in the same process on the same
machine. Defaults depend on whether the backend sees a GPU: on a GPU the paper's 116 px and
5,000 projections; on a CPU a reduced (c) (29 px, as the cpu profile, 3 faithful epochs) so that the
whole run takes about 12 minutes on 2 cores. Backend-agnostic (TensorFlow, JAX, PyTorch): only keras and
keras.ops, and every timed step returns NumPy values, so asynchronous backends are waited for.
Results are printed and written to build/bench/siamese.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

GPU_DEFAULTS = {
    "input_size": 116,
    "n_projections": 5000,
    "faithful_epochs": 20,
    "batch_epochs_cap": 300,
    "train_batch": 256,
    "steps": 10,
    "warmup": 3,
    "batch_size": "256,64",
}
CPU_DEFAULTS = {
    "input_size": 29,
    "n_projections": 5000,
    "faithful_epochs": 3,
    "batch_epochs_cap": 150,
    "train_batch": 64,
    "steps": 3,
    "warmup": 1,
    "batch_size": "32,256",
}
QUICK = {
    "input_size": 29,
    "n_projections": 300,
    "faithful_epochs": 3,
    "batch_epochs_cap": 30,
    "train_batch": 32,
    "steps": 2,
    "warmup": 1,
    "sizes": "29",
    "forward_batch": 64,
    "pair_batch": 64,
    "batch_size": "64,16",
}
RATIO_TARGET = 10


# --------------------------------------------------------------------------- machine


def machine_info():
    """Keras backend, accelerator (name, or None for CPU) and host facts."""
    import keras

    backend = keras.backend.backend()
    info = {
        "keras": keras.__version__,
        "keras_backend": backend,
        "accelerator": None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
    }
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        info["jax"] = jax.__version__
        info["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
        if dev.platform != "cpu":
            info["accelerator"] = getattr(dev, "device_kind", str(dev))
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            info["accelerator"] = details.get("device_name", gpus[0].name)
    elif backend == "torch":
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
    info["device"] = info["accelerator"] or f"CPU ({info['cpu_model'] or platform.machine()}, {os.cpu_count()} cores)"
    return info


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- timing helpers


def step_times(step, warmup, steps):
    """Seconds of each of `steps` calls of `step()` after `warmup` untimed ones (compilation).

    `step` must return NumPy values (``predict_on_batch`` and ``train_on_batch`` do), so the
    clock stops only once an asynchronous backend (JAX, TF on GPU) has finished the work.
    """
    import numpy as np

    for _ in range(warmup):
        np.asarray(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        np.asarray(step())
        times.append(time.perf_counter() - start)
    return times


def summary(times, per_step, unit):
    med = statistics.median(times)
    return {
        f"{unit}_per_s": per_step / med,
        "median_step_seconds": med,
        "min_step_seconds": min(times),
        "per_step": per_step,
        "step_seconds": times,
    }


def random_batch(rng, n, size):
    import numpy as np

    return rng.standard_normal((n, size, size, 1)).astype(np.float32)


def random_quaternions(rng, n):
    import numpy as np

    q = rng.standard_normal((n, 4))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- (a) and (b)


def throughput(size, args, rng):
    """(a) forward and training images/s, (b) pair losses/s of both regimes, at side `size`."""
    import keras
    import numpy as np

    from cryo_orient.estimation import siamese
    from cryo_orient.geometry import rotations

    keras.utils.set_random_seed(0)
    model = siamese.build_model(size, 512)
    encoder = siamese.encoder_of(model)
    out = {"input_size": size, "parameters": int(model.count_params())}

    # (a) forward: the encoder alone, as `embed` runs it.
    x = random_batch(rng, args.forward_batch, size)
    t = step_times(lambda: encoder.predict_on_batch(x), args.warmup, args.steps)
    out["forward"] = {"batch_images": args.forward_batch, **summary(t, args.forward_batch, "images")}

    # (a) training and (b) faithful: the Siamese model on pairs, compiled as `siamese.train` does.
    siamese._compile(model, siamese.TrainingConfig(input_size=size, regime="faithful"), encoder_only=False)

    def pair_step(n_pairs):
        a, b = random_batch(rng, n_pairs, size), random_batch(rng, n_pairs, size)
        qa, qb = random_quaternions(rng, n_pairs), random_quaternions(rng, n_pairs)
        y = rotations.distance(qa.astype(np.float64), qb.astype(np.float64)).astype(np.float32)
        return lambda: model.train_on_batch([a, b], y)

    t = step_times(pair_step(args.train_batch), args.warmup, args.steps)
    out["train"] = {
        "batch_pairs": args.train_batch,
        "cnn_passes_per_step": 2 * args.train_batch,
        **summary(t, 2 * args.train_batch, "images"),
    }
    if args.pair_batch == args.train_batch:
        t_faithful = t
    else:
        t_faithful = step_times(pair_step(args.pair_batch), args.warmup, args.steps)
    faithful = {
        "batch_pairs": args.pair_batch,
        "cnn_passes_per_step": 2 * args.pair_batch,
        **summary(t_faithful, args.pair_batch, "pairs"),
    }

    # (b) batch: a fresh encoder with the in-batch loss over all B(B-1)/2 pairs, for each B.
    batches = []
    for b in args.batch_sizes:
        keras.utils.set_random_seed(0)
        enc = siamese.build_encoder(size, 512)
        siamese._compile(enc, siamese.TrainingConfig(input_size=size, regime="batch"), encoder_only=True)
        xb, qb = random_batch(rng, b, size), random_quaternions(rng, b)
        t = step_times(lambda: enc.train_on_batch(xb, qb), args.warmup, args.steps)
        batches.append({"batch_images": b, "cnn_passes_per_step": b, **summary(t, b * (b - 1) // 2, "pairs")})
    out["pairs"] = {
        "faithful": faithful,
        "batch": batches,
        "ratio_batch_over_faithful": {
            str(r["batch_images"]): r["pairs_per_s"] / faithful["pairs_per_s"] for r in batches
        },
    }
    keras.backend.clear_session()
    return out


def print_throughput(r):
    s = r["input_size"]
    f, t, p = r["forward"], r["train"], r["pairs"]
    rows = [
        (f"forward (encoder, batch {f['batch_images']})", f"{f['images_per_s']:12.1f} images/s"),
        (
            f"training (Siamese, {t['batch_pairs']} pairs = {t['cnn_passes_per_step']} images/step)",
            f"{t['images_per_s']:12.1f} images/s",
        ),
        (
            f"faithful ({p['faithful']['batch_pairs']} pairs/step, 2 CNN passes per pair)",
            f"{p['faithful']['pairs_per_s']:12.1f} pairs/s",
        ),
    ]
    for b in p["batch"]:
        rows.append(
            (
                f"batch (B = {b['batch_images']} images, {b['per_step']:,} pairs/step)",
                f"{b['pairs_per_s']:12.1f} pairs/s",
            )
        )
        rows.append(
            (
                f"  ratio batch (B = {b['batch_images']}) / faithful, pairs/s",
                f"{p['ratio_batch_over_faithful'][str(b['batch_images'])]:12.1f} x",
            )
        )
    print(f"  {s} x {s} px, {r['parameters']:,} parameters")
    for label, value in rows:
        print(f"    {label:<56s}{value}")


# --------------------------------------------------------------------------- (c)


def dataset_split(args):
    from cryo_orient.data import read_dataset
    from cryo_orient.simulation import simulate

    config = simulate.SimulationConfig(
        volume="5j0n", n_projections=args.n_projections, sampling="uniform_so3", coverage=[2, 1, 2], seed=0
    )
    path = Path(args.data_dir) / f"5j0n-full-so3-{args.n_projections}.h5"
    start = time.perf_counter()
    simulate.simulate_dataset(config, path, progress=False)
    seconds = time.perf_counter() - start
    data = read_dataset(path)
    train, val = data.split("train"), data.split("val")
    return (train.images(), train.quaternions, val.images(), val.quaternions), {
        "path": str(path),
        "simulate_or_load_seconds": seconds,
        "config": config.to_dict(),
        "train": train.n,
        "val": val.n,
    }


def steady_seconds(history, k):
    """``history["seconds"][k]`` less the first epoch's excess over a typical epoch (compilation).

    The first epoch holds the one-off XLA/tf.function compilation (and autotuning on a GPU); this
    replaces its duration by the median duration of the later epochs, so ratios of these times
    compare the regimes' steady-state speeds.
    """
    import numpy as np

    seconds = np.asarray(history["seconds"], dtype=float)
    durations = np.diff(seconds, prepend=0.0)
    if len(durations) < 2:
        return float(seconds[k])
    return float(seconds[k] - durations[0] + np.median(durations[1:]))


def history_rows(history):
    keys = ("epoch", "loss", "val_mae", "seconds", "pairs_seen", "images_seen")
    return {k: list(history[k]) for k in keys}


def time_to_mae(args):
    import numpy as np

    from cryo_orient.estimation import siamese

    split, data = dataset_split(args)
    common = {"input_size": args.input_size, "n_features": 512, "seed": args.seed}
    faithful_cfg = siamese.TrainingConfig(
        regime="faithful", epochs=args.faithful_epochs, batch_size=args.pair_batch, **common
    )
    print(
        f"  faithful: {args.faithful_epochs} epochs of {int(faithful_cfg.pair_fraction * data['train'] ** 2):,} "
        f"pairs ({data['train']} training, {data['val']} validation projections, {args.input_size} px)",
        flush=True,
    )
    res1 = siamese.train(*split, faithful_cfg, progress=args.progress)
    h1 = res1.history
    k1 = int(np.argmin(h1["val_mae"]))
    m1, t1 = float(h1["val_mae"][k1]), float(h1["seconds"][k1])
    t1_steady = steady_seconds(h1, k1)
    print(
        f"    best val MAE m1 = {m1:.4f} rad at epoch {k1 + 1}, t1 = {t1:.1f} s, {t1_steady:.1f} s without "
        f"compilation (all {res1.epochs} epochs: {res1.seconds:.1f} s)",
        flush=True,
    )

    runs = []
    for b in args.batch_sizes:
        cfg = siamese.TrainingConfig(
            regime="batch", epochs=args.batch_epochs_cap, batch_size=b, target_val_mae=m1, **common
        )
        print(f"  batch: B = {b}, target val MAE {m1:.4f}, at most {args.batch_epochs_cap} epochs", flush=True)
        res = siamese.train(*split, cfg, progress=args.progress)
        h = res.history
        reached = res.stop_reason == "target_val_mae"
        t3 = float(h["seconds"][-1]) if reached else None
        t3_steady = steady_seconds(h, len(h["seconds"]) - 1) if reached else None
        if reached:
            print(
                f"    reached at epoch {res.epochs}, t3 = {t3:.1f} s (val MAE {h['val_mae'][-1]:.4f}): "
                f"t1 / t3 = {t1 / t3:.1f} x; without compilation {t1_steady:.1f} s / {t3_steady:.1f} s "
                f"= {t1_steady / t3_steady:.1f} x",
                flush=True,
            )
        else:
            print(
                f"    NOT reached in {res.epochs} epochs ({res.seconds:.1f} s; best val MAE {min(h['val_mae']):.4f}): "
                f"t1 / t3 < {t1 / res.seconds:.2f}",
                flush=True,
            )
        runs.append(
            {
                "batch_size": b,
                "config": cfg.to_dict(),
                "reached": reached,
                "stop_reason": res.stop_reason,
                "epochs": res.epochs,
                "steps": res.epochs * _steps_per_epoch(data["train"], b),
                "seconds_to_target": t3,
                "seconds_total": res.seconds,
                "ratio_t1_over_t3": None if t3 is None else t1 / t3,
                "seconds_to_target_without_compilation": t3_steady,
                "ratio_t1_over_t3_without_compilation": None if t3 is None else t1_steady / t3_steady,
                "seconds_first_epoch": float(h["seconds"][0]),
                "ratio_upper_bound_if_not_reached": None if reached else t1 / res.seconds,
                "best_val_mae": float(min(h["val_mae"])),
                "pairs_seen": int(h["pairs_seen"][-1]),
                "images_seen": int(h["images_seen"][-1]),
                "history": history_rows(h),
            }
        )
    ratios = {str(r["batch_size"]): r["ratio_t1_over_t3"] for r in runs}
    reached = [r for r in runs if r["reached"]]
    best = max(reached, key=lambda r: r["ratio_t1_over_t3"]) if reached else None
    print(
        "  ratio t1 / t3: "
        + ", ".join(f"B = {b}: " + ("not reached" if v is None else f"{v:.1f} x") for b, v in ratios.items())
        + f"   (target >= {RATIO_TARGET})"
    )
    return {
        "dataset": data,
        "faithful": {
            "config": faithful_cfg.to_dict(),
            "best_val_mae": m1,
            "best_epoch": k1 + 1,
            "steps_to_best": (k1 + 1) * -(-int(faithful_cfg.pair_fraction * data["train"] ** 2) // args.pair_batch),
            "seconds_to_best": t1,
            "seconds_to_best_without_compilation": t1_steady,
            "seconds_first_epoch": float(h1["seconds"][0]),
            "seconds_total": res1.seconds,
            "pairs_seen_to_best": int(h1["pairs_seen"][k1]),
            "images_seen_to_best": int(h1["images_seen"][k1]),
            "history": history_rows(h1),
        },
        "batch_runs": runs,
        "ratio_t1_over_t3": runs[0]["ratio_t1_over_t3"],
        "ratios_t1_over_t3_by_batch_size": ratios,
        "ratios_t1_over_t3_without_compilation_by_batch_size": {
            str(r["batch_size"]): r["ratio_t1_over_t3_without_compilation"] for r in runs
        },
        "best": None
        if best is None
        else {"batch_size": best["batch_size"], "ratio_t1_over_t3": best["ratio_t1_over_t3"]},
        "target_ratio_at_least": RATIO_TARGET,
    }


def _steps_per_epoch(n, b):
    """Batches per epoch of the batch regime (a last batch of one image is dropped, as `siamese.train` does)."""
    return n // b + (n % b >= 2)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    auto = "(default: GPU {}, CPU {})".format
    parser.add_argument("--sizes", default="116,58", help="input sides for (a) and (b), comma-separated (116,58)")
    parser.add_argument("--forward-batch", type=int, default=256, help="images per forward step (256)")
    parser.add_argument(
        "--pair-batch",
        type=int,
        default=256,
        help="pairs per step of the faithful regime in (b) and (c) (256, the paper's)",
    )
    # Options whose default depends on the machine (GPU_DEFAULTS, CPU_DEFAULTS): name, type, what.
    for name, kind, what in (
        ("train_batch", int, "pairs per Siamese training step in (a)"),
        (
            "batch_size",
            str,
            "images B per step of the batch regime, comma-separated; (b) and (c) run each, the first is the headline",
        ),
        ("warmup", int, "untimed steps"),
        ("steps", int, "timed steps"),
        ("input_size", int, "input side in (c)"),
        ("n_projections", int, "projections simulated for (c)"),
        ("faithful_epochs", int, "epochs of the faithful regime in (c)"),
        ("batch_epochs_cap", int, "most epochs of the batch regime in (c)"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, help=f"{what} {auto(GPU_DEFAULTS[name], CPU_DEFAULTS[name])}"
        )
    parser.add_argument("--seed", type=int, default=0, help="training seed in (c)")
    parser.add_argument("--parts", default="abc", help="which of (a)+(b) ('a' or 'b') and (c) to run (abc)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the script (~1 min)")
    parser.add_argument("--progress", action="store_true", help="progress bars while training in (c)")
    parser.add_argument("--data-dir", default="build/bench/data", help="where the simulated dataset is cached")
    parser.add_argument("--out", default="build/bench/siamese.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    t = time.perf_counter()
    info = machine_info()  # imports the backend once, so no timing below includes it
    info["backend_import_seconds"] = time.perf_counter() - t
    defaults = dict(GPU_DEFAULTS if info["accelerator"] else CPU_DEFAULTS)
    if args.quick:
        defaults |= QUICK
    for name, value in defaults.items():
        if getattr(args, name, None) is None or (
            args.quick and name in QUICK and getattr(args, name) == parser.get_default(name)
        ):
            setattr(args, name, value)
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.batch_sizes = [int(b) for b in str(args.batch_size).split(",") if b.strip()]

    from cryo_orient.artifacts import save_text

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "progress", "batch_sizes")}
    result = {"machine": info, "settings": settings, "targets": {"ratio_t1_over_t3_at_least": RATIO_TARGET}}
    print(f"Siamese estimator, Keras {info['keras']} ({info['keras_backend']}) on {info['device']}")
    ok = True
    out = Path(args.out)
    if "a" in args.parts or "b" in args.parts:
        print(f"(a) throughput, (b) pair losses per second ({args.warmup} warm-up + {args.steps} timed steps)")
        rng = np.random.default_rng(0)
        result["throughput"] = []
        for size in sizes:
            r = throughput(size, args, rng)
            result["throughput"].append(r)
            print_throughput(r)
            save_text(json.dumps(result, indent=2) + "\n", out)  # partial results survive a later failure
    if "c" in args.parts:
        print(f"(c) wall time to the same validation MAE, 5j0n, {args.n_projections:,} projections")
        c = time_to_mae(args)
        result["time_to_mae"] = c
        ok = c["ratio_t1_over_t3"] is not None and c["ratio_t1_over_t3"] >= RATIO_TARGET
        print(f"  target t1 / t3 >= {RATIO_TARGET} (B = {args.batch_sizes[0]}): {'met' if ok else 'MISSED'}")
    save_text(json.dumps(result, indent=2) + "\n", out)
    print(f"  written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
