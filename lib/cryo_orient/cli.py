"""Command line: one subcommand per stage (``cryo-orient --help``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import signal
import sys
import tomllib
import traceback
import zipfile
from pathlib import Path

import numpy as np

from cryo_orient import data
from cryo_orient.artifacts import atomic_output, check_free_space, jsonable, save_text
from cryo_orient.data import relion
from cryo_orient.data.dataset import SPLITS, read_dataset
from cryo_orient.estimation import onthefly, siamese
from cryo_orient.simulation import simulate
from cryo_orient.tomography import fsc, projection, reconstruct
from cryo_orient.validation import CryoOrientError, DataError, InputError, ResourceError
from cryo_orient.workflow import map_free, orient, pipeline, report
from cryo_orient.workflow import refine as refine_workflow
from cryo_orient.workflow.profiles import OPTIONAL_TARGETS, load_profile, merge_settings


class CommandError(InputError):
    """A bad command line (options that do not go together, a file that is not what it should be)."""


def _parse_value(text: str):
    """A ``--set key=value`` value: JSON if it parses (numbers, lists, true/null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config_file(path) -> dict:
    """Settings from a TOML or JSON file (``--config``); an empty dict for ``None``."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CommandError(f"config file {path} {what}; give a TOML or JSON file of settings to --config")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise CommandError(f"config file {path} is not text; give a TOML or JSON file to --config") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"config file {path} is not valid JSON ({err}); fix that line") from None
    except tomllib.TOMLDecodeError as err:
        hint = " (a .json file is read as JSON only when it ends in .json)" if text.lstrip()[:1] in "[{" else ""
        raise CommandError(f"config file {path} is not valid TOML ({err}){hint}; fix that line") from None
    if not isinstance(values, dict):
        raise CommandError(
            f"config file {path} holds a JSON {type(values).__name__}, not a table of settings; "
            'write an object such as {"epochs": 3}'
        )
    return values


def _set_values(items, option="--set", example="epochs=3") -> dict:
    """``--set key=value`` overrides (or those of another repeatable ``option``)."""
    values = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise CommandError(f"{option} expects KEY=VALUE, got {item!r}; write e.g. {option} {example}")
        if not key.strip():
            raise CommandError(f"{option} {item!r} names no setting; write e.g. {option} {example}")
        values[key.strip().replace("-", "_")] = _parse_value(raw)
    return values


def _config_values(args) -> dict:
    """Settings from ``--config``, then ``--set`` overrides."""
    return _config_file(args.config) | _set_values(args.set)


def _simulation_values(args) -> dict:
    """``--config``, then the profile's dataset section, then ``--set`` overrides."""
    values = _config_file(args.config)
    if args.profile:
        datasets = load_profile(args.profile)["datasets"]
        if args.dataset not in datasets:
            raise CommandError(
                f"profile {args.profile!r} has no dataset {args.dataset!r}; choose one of {sorted(datasets)}"
            )
        values.update(datasets[args.dataset])
    return values | _set_values(args.set)


def _cmd_simulate(args) -> int:
    if bool(args.profile) != bool(args.dataset):
        raise CommandError("--profile and --dataset go together; give both or neither")
    values = _simulation_values(args)
    if not values:
        fields = ", ".join(f.name for f in dataclasses.fields(simulate.SimulationConfig))
        raise CommandError(f"nothing to simulate; give --config, --profile/--dataset or --set key=value ({fields})")
    config = simulate.SimulationConfig.from_dict(values)
    path = simulate.simulate_dataset(
        config, args.out, chunk_size=args.chunk_size, progress=not args.quiet, overwrite=args.overwrite
    )
    print(path)
    return 0


def _cmd_train(args) -> int:
    config = siamese.TrainingConfig.from_dict(_config_values(args))
    estimator = siamese.SiameseEstimator(config, fresh_noise=args.fresh_perturbation)
    result = estimator.fit(read_dataset(args.dataset), out_dir=args.out, progress=not args.quiet).result
    print(
        f"{args.out}: {result.epochs} epochs, {result.seconds:.0f} s, stop: {result.stop_reason}, "
        f"last train loss {result.history['loss'][-1]:.4f}, validation MAE {result.history['val_mae'][-1]:.4f}"
    )
    return 0


#: ``train-general`` options that set a TrainingConfig field (over --config and --set).
_GENERAL_TRAINING_OPTIONS = (
    "epochs",
    "batch_size",
    "input_size",
    "n_features",
    "feature_distance",
    "learning_rate",
    "seed",
)


def _cmd_train_general(args) -> int:
    if not args.maps and not args.pseudo_molecules:
        raise CommandError("nothing to train on; give --maps NAME_OR_MRC ... and/or --pseudo-molecules N")
    values = _config_values(args)
    values |= {k: getattr(args, k) for k in _GENERAL_TRAINING_OPTIONS if getattr(args, k) is not None}
    values.setdefault("regime", "uniform")
    config = siamese.TrainingConfig.from_dict(values)
    simulation = _set_values(args.simulation, "--simulation", "snr_db_min=-10")
    result = onthefly.train_general(
        args.maps,
        config,
        args.out,
        n_pseudo_molecules=args.pseudo_molecules,
        simulation=simulation,
        steps_per_epoch=args.steps_per_epoch,
        n_val_pairs=args.val_pairs,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(
        f"{args.out}: {len(args.maps)} maps and {args.pseudo_molecules} pseudo-molecules, {result.epochs} epochs, "
        f"{result.seconds:.0f} s, stop: {result.stop_reason}, last train loss {result.history['loss'][-1]:.4f}, "
        f"validation MAE {result.history['val_mae'][-1]:.4f}"
    )
    return 0


def _cmd_embed(args) -> int:
    estimator = siamese.SiameseEstimator.load(args.model)
    part = read_dataset(args.dataset).split(args.split)
    features = estimator.embed(part, progress=not args.quiet)
    with atomic_output(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                features=features,
                index=part.index,
                quaternions=part.quaternions,
                feature_distance=estimator.config.feature_distance,
            )
    print(f"{args.out}: {features.shape[0]} × {features.shape[1]} features ({args.split} split)")
    return 0


@contextlib.contextmanager
def _npz(path, what: str):
    """``np.load`` of an .npz (no pickles) whose failures say which file is not ``what``."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise CommandError(f"{path} {state}; give {what}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise CommandError(f"{path} is not an .npz file (no zip header); give {what}")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CommandError(f"{path} is not a readable .npz file ({err}); give {what}") from None
    try:
        yield f
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        if isinstance(err, CryoOrientError):
            raise
        raise CommandError(f"{path} is truncated or corrupt ({err}); write it again") from None
    finally:
        f.close()


def _read_orientations(path, index):
    """Quaternions from a STAR file (RELION angles) or an .npz of `cryo-orient recover`."""
    path, n = Path(path), len(index)
    if not path.is_file():
        raise CommandError(f"no orientation file at {path}; give a STAR file or an .npz of `cryo-orient recover`")
    if path.suffix == ".star":
        q = relion.read_star(path)["quaternions"]
    else:
        with _npz(path, "an .npz of `cryo-orient recover` or a STAR file") as f:
            if "quaternions" not in f or "losses" not in f:
                raise CommandError(
                    f"{path} is not an output of `cryo-orient recover` (quaternions, losses, "
                    "index); an `embed` file holds the true orientations, not recovered ones"
                )
            q = f["quaternions"]
            if "index" in f and not np.array_equal(np.sort(f["index"]), np.sort(index)):
                raise CommandError(
                    f"{path} was recovered for other images than the chosen split's; "
                    "use the same --split (and dataset) as for `cryo-orient embed`"
                )
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] != 4 or not np.issubdtype(q.dtype, np.number):
        raise CommandError(f"{path} holds quaternions of shape {q.shape}, not (N, 4); give an output of `recover`")
    if not np.all(np.isfinite(q)):
        raise CommandError(f"{path} holds NaN or infinite quaternions; recover the orientations again")
    if len(q) != n:
        raise CommandError(
            f"{path} holds {len(q)} orientations but the chosen split has {n} images; "
            "use the same --split as when they were made"
        )
    return q


def _cmd_recover(args) -> int:
    with _npz(args.embeddings, "an .npz of `cryo-orient embed`") as f:
        missing = [k for k in ("features", "index", "feature_distance") if k not in f]
        if missing:
            raise CommandError(
                f"{args.embeddings} lacks {missing}: it is not an output of `cryo-orient embed`; embed the images first"
            )
        features, index, kind = f["features"], f["index"], str(f["feature_distance"])
    if kind not in siamese.FEATURE_DISTANCES:
        raise CommandError(
            f"{args.embeddings} names the feature distance {kind!r}, not one of {siamese.FEATURE_DISTANCES}; "
            "embed the images again"
        )
    config = pipeline.PipelineConfig(recovery_restarts=args.restarts, recovery_max_steps=args.max_steps, seed=args.seed)
    result = pipeline.recover_orientations(
        siamese.distance_function(features, kind), len(features), config, progress=not args.quiet
    )
    with atomic_output(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, index=index, **result)
    print(
        f"{args.out}: {len(features)} orientations, L_OR {float(result['final_loss']):.4g} after "
        f"{len(result['losses'])} steps"
    )
    return 0


def _cmd_gauge(args) -> int:
    part = read_dataset(args.dataset).split(args.split)
    q = _read_orientations(args.orientations, part.index)
    images = part.images("noisy")
    config = pipeline.PipelineConfig(gauge_candidates=args.candidates, seed=args.seed)
    choice = pipeline.choose_gauge(images, q, config, progress=not args.quiet)
    relion.write_star(args.out, choice["quaternions"], pixel_size=part.pixel_size or 1.0, image_size=part.image_size)
    print(
        f"{args.out}: gauge chosen from common lines (conjugate branch {bool(choice['conjugated'])}, score "
        f"{float(choice['score']):.4f}; other branch "
        f"{float(min(choice['score_q'], choice['score_conjugate'])):.4f})"
    )
    return 0


def _cmd_reconstruct(args) -> int:
    dataset = read_dataset(args.dataset)
    part = dataset.split(args.split)
    q = part.quaternions if args.orientations == "truth" else _read_orientations(args.orientations, part.index)
    images = part.images(args.images)
    size = images.shape[-1]
    shape = tuple(int(n) for n in dataset.metadata["volume_shape"]) if args.box == "map" else (size,) * 3
    # refused now rather than after the reconstruction
    check_free_space(Path(args.out).parent, 4 * int(np.prod(shape)) + 4096, "the map")
    result = reconstruct.reconstruct(
        images, q, shape, args.backend, iterations=args.iterations, progress=not args.quiet
    )
    data.write_volume(args.out, result.volume.astype(np.float32), part.pixel_size or 1.0)
    print(
        f"{args.out}: {shape} volume from {len(images)} {args.images} images, {result.iterations} iterations "
        f"({result.backend}, {result.seconds:.0f} s)"
    )
    return 0


def _cmd_run(args) -> int:
    # The profile's [pipeline] table, then --config, then --set (nested tables merged key by key).
    shared = load_profile(args.profile).shared.get("pipeline", {}) if args.profile else {}
    config = pipeline.PipelineConfig.from_dict(merge_settings(shared, _config_file(args.config), _set_values(args.set)))
    dataset = read_dataset(args.dataset)
    case = pipeline.run_case(
        dataset, config, cache_dir=args.cache_dir or Path(args.out) / "cache", progress=not args.quiet, log=print
    )
    written = pipeline.write_outputs(case, dataset, args.out)
    summary = case["summary"]
    save_text(
        json.dumps(jsonable({"config": config.to_dict(), "summary": summary}), indent=2) + "\n",
        Path(args.out) / "summary.json",
    )
    print(
        f"{args.out}: E_OR median {summary['E_OR_median']:.3f} rad, mean {summary['E_OR_mean']:.3f} rad; "
        f"{len(written)} maps and STAR files, summary.json"
    )
    return 0


def _cmd_orient(args) -> int:
    options = {
        "n_train": args.n_train,
        "epochs": args.epochs,
        "n_features": args.n_features,
        "ctf_correction": args.ctf_correction,
        "invert_contrast": args.invert_contrast,
    }
    settings = _config_values(args) | {k: v for k, v in options.items() if v is not None}
    if args.refine_set and not args.refine:
        raise CommandError("--refine-set needs --refine; add --refine or drop --refine-set")
    if (args.reference is None) == (args.estimator is None):
        raise CommandError(
            "give either --reference MAP.mrc (train an estimator on it) or --estimator DIR (a trained one, no map)"
        )
    refine_settings = None
    if args.refine:
        refine_settings = _set_values(args.refine_set)
        refine_workflow.RefineConfig.from_dict(refine_settings)  # checked before any work
    if args.estimator is not None:
        training = [f"--{k.replace('_', '-')}" for k in ("n_train", "epochs", "n_features") if options[k] is not None]
        if training or args.reference_angpix is not None:
            given = training + (["--reference-angpix"] if args.reference_angpix is not None else [])
            raise CommandError(f"{', '.join(given)}: no use with --estimator (nothing is trained, there is no map)")
        map_free.orient_map_free(
            args.particles,
            args.estimator,
            args.out,
            config=orient.OrientConfig.from_dict(settings),
            angpix=args.angpix,
            cache_dir=args.cache_dir,
            refine=refine_settings,
            progress=not args.quiet,
        )
        return 0
    orient.orient(
        args.particles,
        args.reference,
        args.out,
        config=orient.OrientConfig.from_dict(settings),
        angpix=args.angpix,
        reference_angpix=args.reference_angpix,
        cache_dir=args.cache_dir,
        refine=refine_settings,
        progress=not args.quiet,
    )
    return 0


def _cmd_refine(args) -> int:
    config = refine_workflow.RefineConfig.from_dict(_config_values(args))
    refine_workflow.refine_particles(
        args.particles,
        args.reference,
        args.out,
        config=config,
        angpix=args.angpix,
        reference_angpix=args.reference_angpix,
        progress=not args.quiet,
    )
    return 0


def _cmd_fsc(args) -> int:
    a, voxel = data.load_volume(args.volume_a)
    b, _ = data.load_volume(args.volume_b)
    voxel = voxel if args.voxel_size is None else args.voxel_size
    curve = fsc.fsc(a, b, voxel, mask="soft_sphere" if args.mask else None)
    if args.out:  # written first, so a bad --out fails before anything is printed
        rows = ["frequency_per_angstrom,fsc,voxels"] + [
            f"{f:.6g},{c:.6g},{n}" for f, c, n in zip(curve.frequency, curve.correlation, curve.counts)
        ]
        save_text("\n".join(rows) + "\n", args.out)
    for threshold in fsc.THRESHOLDS:
        res, crossed = curve.resolution(threshold)
        print(f"FSC {threshold}: {res:.2f} Å" + ("" if crossed else " (not crossed before Nyquist)"))
    return 0


def _cmd_fetch(args) -> int:
    for name in args.names:
        print(data.fetch(name, cache_dir=args.cache_dir))
    return 0


def _report_targets(profile_name: str) -> list[str]:
    """The targets a profile's report covers: every target of ``make reproduce``, and optional
    ones (``make compare``) once they have been built."""
    profile = load_profile(profile_name)
    out_dir = Path("figures") / profile_name
    return [t for t in profile if t != "datasets" and (t not in OPTIONAL_TARGETS or (out_dir / f"{t}.json").is_file())]


def _cmd_report(args) -> int:
    """Write figures/<profile>/REPORT.md and REPORT.html."""
    paths = report.write_report(args.profile, reference_path=args.reference, targets=_report_targets(args.profile))
    print("wrote " + ", ".join(str(p) for p in paths))
    if args.readme:
        changed = report.update_readme(args.readme, report.headline_for(args.profile, reference_path=args.reference))
        print(f"{args.readme}: headline table {'updated' if changed else 'unchanged'}")
    return 0


def _cmd_check_outputs(args) -> int:
    """Every target of a profile left a non-empty figure (or table), its JSON record, and a
    section in the report."""
    targets = _report_targets(args.profile)
    out_dir = Path("figures") / args.profile
    problems = []
    for target in targets:
        record = out_dir / f"{target}.json"
        if not record.is_file():
            problems.append(f"{record} is missing")
            continue
        meta = json.loads(record.read_text())
        for name in meta.get("outputs", []):
            path = out_dir / name
            if not path.is_file() or path.stat().st_size == 0:
                problems.append(f"{path} (listed in {record}) is missing or empty")
        if not meta.get("outputs"):
            problems.append(f"{record} lists no outputs")
    problems += report.check_report(out_dir, targets)
    if problems:
        print("missing outputs:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"figures/{args.profile}: all {len(targets)} targets have their outputs and a section in {report.REPORT_NAME}"
    )
    return 0


def _settings_options(parser, settings: str, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` for a settings class (read by
    :func:`_config_values`)."""
    parser.add_argument("--config", help=f"a TOML or JSON file holding a {settings}")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=f"set one setting, e.g. {example} (repeatable)"
    )


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are the CLI's one line (``error: ...; ...``, exit 2), not the usage."""

    def error(self, message):
        raise CommandError(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cryo-orient", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a dataset of projections into an HDF5 file")
    sim.add_argument("--config", help="a TOML or JSON file holding a SimulationConfig")
    sim.add_argument("--profile", help="take the dataset settings from this profile (with --dataset)")
    sim.add_argument("--dataset", help="the dataset's name in the profile")
    sim.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set or override one setting, e.g. --set noise_variance=16 (repeatable)",
    )
    sim.add_argument("--out", required=True, help="the .h5 file to write")
    sim.add_argument("--chunk-size", type=_count(1), default=256)
    sim.add_argument("--overwrite", action="store_true", help="recompute even if the file is up to date")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_cmd_simulate)

    fetch = sub.add_parser("fetch", help="download (or copy from $DATA_MIRROR) registered input files")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--cache-dir")
    fetch.set_defaults(func=_cmd_fetch)

    tr = sub.add_parser("train", help="train the Siamese distance estimator on a dataset's training split")
    tr.add_argument("--dataset", required=True, help="a dataset written by `cryo-orient simulate`")
    tr.add_argument("--out", required=True, help="run folder (model.keras, history.csv); an unfinished run resumes")
    _settings_options(tr, "TrainingConfig", "--set regime=batch --set epochs=50")
    tr.add_argument(
        "--fresh-perturbation",
        action="store_true",
        help="train on the clean projections with new noise and shifts every batch",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)

    gen = sub.add_parser(
        "train-general",
        help="train one distance estimator on a library of maps, with pairs simulated on the fly",
    )
    gen.add_argument("--maps", nargs="+", default=[], metavar="NAME_OR_MRC", help="registered names or MRC files")
    gen.add_argument("--pseudo-molecules", type=_count(0), default=0, metavar="N", help="add N random pseudo-molecules")
    gen.add_argument("--out", required=True, help="run folder (model.keras, history.csv); an unfinished run resumes")
    gen.add_argument("--epochs", type=_count(1))
    gen.add_argument("--steps-per-epoch", type=_count(1), default=100, help="batches an epoch (default 100)")
    gen.add_argument("--batch-size", type=_count(2), help="pairs a batch")
    gen.add_argument("--input-size", type=_count(8), metavar="PX", help="the model's input side in pixels")
    gen.add_argument("--n-features", type=_count(1))
    gen.add_argument("--feature-distance", choices=siamese.FEATURE_DISTANCES)
    gen.add_argument("--learning-rate", type=_positive_float)
    gen.add_argument("--seed", type=_count(0))
    gen.add_argument("--val-pairs", type=_count(2), default=512, help="pairs of the fixed validation set (default 512)")
    gen.add_argument("--workers", type=_count(1), default=1, help="Keras workers simulating batches (threads)")
    _settings_options(gen, "TrainingConfig", "--set loss=mse")
    gen.add_argument(
        "--simulation",
        action="append",
        metavar="KEY=VALUE",
        help="set one on-the-fly simulation setting, e.g. --simulation snr_db_min=-10 (repeatable)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_train_general)

    emb = sub.add_parser("embed", help="feature vectors of a dataset's projections from a trained model")
    emb.add_argument("--model", required=True, help="a run folder written by `cryo-orient train`")
    emb.add_argument("--dataset", required=True)
    emb.add_argument("--split", choices=SPLITS, default="test")
    emb.add_argument("--out", required=True, help="the .npz file to write (features, index, quaternions)")
    emb.add_argument("--quiet", action="store_true")
    emb.set_defaults(func=_cmd_embed)

    rec = sub.add_parser("recover", help="recover orientations from feature vectors (Eq. 4)")
    rec.add_argument("--embeddings", required=True, help="an .npz written by `cryo-orient embed`")
    rec.add_argument("--out", required=True, help="the .npz to write (quaternions, losses, index)")
    rec.add_argument("--restarts", type=_count(1), default=3, help="independent runs; the lowest final loss wins")
    rec.add_argument("--max-steps", type=_count(1), default=20000)
    rec.add_argument("--seed", type=_count(0), default=0)
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=_cmd_recover)

    gau = sub.add_parser("gauge", help="fix the gauge of recovered orientations by common lines (no ground truth)")
    gau.add_argument("--dataset", required=True)
    gau.add_argument("--orientations", required=True, help="an .npz from `cryo-orient recover` or a STAR file")
    gau.add_argument("--split", choices=SPLITS, default="test")
    gau.add_argument("--out", required=True, help="the RELION STAR file to write")
    gau.add_argument("--candidates", type=_count(1), default=3000, help="grid size over SO(3) per branch")
    gau.add_argument("--seed", type=_count(0), default=0)
    gau.add_argument("--quiet", action="store_true")
    gau.set_defaults(func=_cmd_gauge)

    recon = sub.add_parser("reconstruct", help="reconstruct a volume from a split's projections")
    recon.add_argument("--dataset", required=True)
    recon.add_argument(
        "--orientations",
        required=True,
        help="a STAR file, an .npz with quaternions, or 'truth' (the simulated orientations)",
    )
    recon.add_argument("--split", choices=SPLITS, default="test")
    recon.add_argument("--images", choices=("clean", "noisy"), default="noisy")
    recon.add_argument(
        "--box",
        choices=("detector", "map"),
        default="detector",
        help="the detector's cube (default) or the true map's grid",
    )
    recon.add_argument("--iterations", type=_count(1), default=100)
    recon.add_argument("--backend", choices=projection.BACKENDS, default="auto")
    recon.add_argument("--out", required=True, help="the MRC file to write")
    recon.add_argument("--quiet", action="store_true")
    recon.set_defaults(func=_cmd_reconstruct)

    fs = sub.add_parser("fsc", help="Fourier shell correlation of two maps and the resolution at 0.5 / 0.143")
    fs.add_argument("volume_a")
    fs.add_argument("volume_b")
    fs.add_argument("--voxel-size", type=_positive_float, help="Å per voxel (default: volume_a's header)")
    fs.add_argument("--mask", action="store_true", help="apply a soft spherical mask first")
    fs.add_argument("--out", help="write the curve as CSV")
    fs.set_defaults(func=_cmd_fsc)

    rep = sub.add_parser("report", help="write figures/<profile>/REPORT.md and .html: ours beside the paper's numbers")
    rep.add_argument("--profile", required=True)
    rep.add_argument(
        "--reference", default="experiments/paper-reference.toml", help="the file holding the paper's reference values"
    )
    rep.add_argument("--readme", help="also write the headline table into this README (between its markers)")
    rep.set_defaults(func=_cmd_report)

    check = sub.add_parser("check-outputs", help="check that every target of a profile wrote its outputs and report")
    check.add_argument("--profile", required=True)
    check.set_defaults(func=_cmd_check_outputs)

    run = sub.add_parser(
        "run", help="the whole pipeline on a simulated dataset: every stage, cached, then maps and STAR files"
    )
    run.add_argument("--dataset", required=True, help="a dataset written by `cryo-orient simulate`")
    run.add_argument("--out", required=True, help="folder for the maps, STAR files and summary.json")
    run.add_argument("--profile", help="start from this profile's [pipeline] settings (e.g. cpu)")
    _settings_options(run, "PipelineConfig (a table of its settings)", "--set estimator=exact")
    run.add_argument("--cache-dir", help="where stages are cached (default OUT/cache)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    ori = sub.add_parser(
        "orient",
        help="orientations and a map for a RELION particle stack (STAR + MRCS, with CTF), given a reference map "
        "or a trained estimator",
    )
    ori.add_argument("particles", help="a RELION 3.0-5 particle STAR file")
    ori.add_argument(
        "--reference", help="an MRC map of the particle (resampled to the stack; an estimator is trained on it)"
    )
    ori.add_argument(
        "--estimator", help="a trained estimator's run folder (cryo-orient train-general): no map needed (map-free)"
    )
    ori.add_argument("--out", required=True, help="folder for particles.star, map.mrc and orient.json")
    ori.add_argument("--angpix", type=float, help="the stack's pixel size in Å (default: the STAR file's)")
    ori.add_argument("--reference-angpix", type=float, help="the reference's voxel size in Å (default: its header's)")
    ori.add_argument("--n-train", type=int, help="simulated training images (default 5000)")
    ori.add_argument("--epochs", type=int, help="training epochs (default 60)")
    ori.add_argument("--n-features", type=int, help="the estimator's feature vector length (default 256)")
    ori.add_argument("--ctf-correction", choices=orient.CORRECTIONS, help="of the estimator's input (phase_flip)")
    ori.add_argument(
        "--invert-contrast", choices=("auto", "yes", "no"), help="negate the images (auto: decided from the stack)"
    )
    _settings_options(ori, "OrientConfig (a table of its settings)", "--set n_anchors=300")
    ori.add_argument("--cache-dir", help="where stages are cached (default OUT/cache)")
    ori.add_argument(
        "--refine",
        action="store_true",
        help="then refine the poses against gold-standard half maps (writes half1/half2.mrc, fsc.csv, refine.json); "
        "with --reference its shift searches reach 3 sigma of the offsets measured on the stack unless "
        "--refine-set sets them",
    )
    ori.add_argument(
        "--refine-set",
        action="append",
        metavar="KEY=VALUE",
        help="one RefineConfig setting for --refine (repeatable); for learned starts at high noise "
        "global_rounds=3 and search_folds=4 (measured: 5j0n at -5.8 dB, 19.3 deg -> 3.1 deg median)",
    )
    ori.add_argument("--quiet", action="store_true", help="no progress bars")
    ori.set_defaults(func=_cmd_orient)

    ref = sub.add_parser(
        "refine",
        help="refine the angles and origins of a RELION particle STAR file against a reference (gold-standard halves)",
    )
    ref.add_argument("particles", help="a RELION 3.0-5 particle STAR file with rlnAngleRot/Tilt/Psi")
    ref.add_argument("--reference", required=True, help="an MRC map in the angles' frame (resampled to the stack)")
    ref.add_argument(
        "--out", required=True, help="folder for particles.star, map.mrc, half1/2.mrc, fsc.csv, refine.json"
    )
    ref.add_argument("--angpix", type=_positive_float, help="the stack's pixel size in Å (default: the STAR file's)")
    ref.add_argument("--reference-angpix", type=_positive_float, help="the reference's voxel size in Å (its header's)")
    _settings_options(ref, "RefineConfig (a table of its settings)", "--set max_iterations=4")
    ref.add_argument("--quiet", action="store_true", help="no progress bars")
    ref.set_defaults(func=_cmd_refine)
    return parser


EXIT_FAILURE = 1
EXIT_INPUT = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that every ``finally`` (temporary files) runs."""


class Exit(SystemExit):
    """The CLI's exit after an error: ``code`` is the exit status, ``str()`` the line printed."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self):
        return self.message


#: Errno values that mean the command line named an unusable path (exit 2), with the fix.
_PATH_ERRORS = {
    errno.EACCES: ("permission denied", "choose a folder you can write to (or read, for an input)"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to"),
    errno.EROFS: ("read-only file system", "choose a writable folder for the output"),
    errno.EISDIR: ("is a folder, not a file", "give a file name, not a folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a path whose folders are folders"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
}


def _os_error(err: OSError) -> tuple[int, str]:
    where = err.filename or ""
    if err.errno == errno.ENOSPC:
        detail = err.strerror if err.strerror and "needs" in err.strerror else "no space left on the device"
        return EXIT_FAILURE, f"{where}: {detail}; free some space or write the output elsewhere"
    if err.errno == errno.EDQUOT:
        return EXIT_FAILURE, f"{where}: disk quota exceeded; free some space or write the output elsewhere"
    if err.errno in _PATH_ERRORS:
        what, fix = _PATH_ERRORS[err.errno]
        if err.strerror and err.errno in (errno.EISDIR, errno.ENOTDIR) and "folder" in err.strerror:
            what = err.strerror
        return EXIT_INPUT, f"{where}: {what}; {fix}" if where else f"{what}; {fix}"
    return EXIT_FAILURE, f"{where + ': ' if where else ''}{err.strerror or err}; check the path and the device"


def _error_line(err: BaseException, command: str | None) -> tuple[int, str]:
    """The exit status and the one line (without ``error: ``) for an exception of a command."""
    helper = f"`cryo-orient {command} --help`" if command else "`cryo-orient --help`"
    if isinstance(err, OSError) and not isinstance(err, CryoOrientError) and err.errno is not None:
        return _os_error(err)
    if isinstance(err, ResourceError):
        code, text, fix = EXIT_FAILURE, str(err), "ask for less"
    elif isinstance(err, (InputError, DataError)):
        code, text, fix = EXIT_INPUT, str(err), f"see {helper}"
    elif isinstance(err, CryoOrientError):
        code, text, fix = EXIT_FAILURE, str(err), "rerun with --debug for the details"
    elif isinstance(err, (ValueError, TypeError, FileNotFoundError, KeyError, IndexError)):
        # The standard errors the package raises for bad arguments (older checks).
        code, text, fix = EXIT_INPUT, str(err) if not isinstance(err, KeyError) else f"missing {err}", f"see {helper}"
    elif isinstance(err, MemoryError):
        code, text, fix = EXIT_FAILURE, "out of memory", "ask for less (fewer or smaller images)"
    else:
        code = EXIT_FAILURE
        text = f"internal error ({type(err).__name__}: {err})"
        fix = "rerun with --debug for the traceback and report it"
    text = " ".join(text.split())  # one line
    if "; " not in text:
        text = f"{text}; {fix}"
    return code, text


def main(argv=None) -> int:
    """Run one command; an error is one line on stderr, ``error: <what went wrong>; <how to fix it>``,
    and the exit status 2 (bad input) or 1 (failure at run time); SIGINT exits 130 and SIGTERM 143,
    both after removing the temporary files. ``--debug`` (anywhere) shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate) if _main_thread() else None
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT); temporary files removed, run the command again", file=sys.stderr)
        raise Exit(EXIT_SIGINT, "interrupted") from None
    except Terminated:
        print("error: terminated (SIGTERM); temporary files removed, run the command again", file=sys.stderr)
        raise Exit(EXIT_SIGTERM, "terminated") from None
    except SystemExit:
        raise  # --help, --version
    except Exception as err:
        if debug:
            traceback.print_exc()
        code, line = _error_line(err, command)
        print(f"error: {line}", file=sys.stderr)
        raise Exit(code, f"error: {line}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
