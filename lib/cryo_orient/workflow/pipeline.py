"""The whole method on one simulated dataset, stage by stage, each stage cached.

simulate (done before, :mod:`cryo_orient.simulation.simulate`) → train the distance estimator → embed the
test split → recover its orientations → align them to the truth (evaluation) and, separately,
choose their gauge from the projections alone → reconstruct → FSC against the true map.

Reconstructions use the test split's projections: the *clean* ones (the paper reconstructed
from noiseless projections even for its σ² = 16 runs) and the *noisy* ones (what a user has).
They are computed on the detector's cube (``size³``: the box a user would reconstruct in; the
gauge-free volume may come out rotated, so the map's own box would not hold it), then
band-limited to their Nyquist sphere (the noise beyond it would fold back into the shells below
Nyquist: :func:`cryo_orient.geometry.volumes.band_limit`) and resampled onto the true map's grid
to compute the FSC: identity for orientations expressed in the true frame, the rigid motion
(rotation, possibly with a mirror) found from the orientations and polished on the map for the
gauge-free volume.

The stages are :data:`STAGES`, an ordered list of :class:`cryo_orient.workflow.stages.Stage`
run by :func:`cryo_orient.workflow.stages.run_stages`: every cached stage's result is stored under
a key of its inputs in ``cache_dir``, so a re-run with the same inputs loads it and a changed input
recomputes what depends on it. :func:`run_case`, the notebooks and ``cryo-orient run`` run this
list; the per-stage commands (``cryo-orient recover``, ``gauge``) call the same compute functions
(:func:`recover_orientations`, :func:`choose_gauge`). To add a stage, add an entry to
:data:`STAGES` (and a line to the summary if it has numbers to report).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np

from cryo_orient import data, validation
from cryo_orient.data import relion
from cryo_orient.data.dataset import Dataset, read_dataset
from cryo_orient.estimation import ESTIMATORS, make_estimator
from cryo_orient.estimation.base import DistanceEstimator
from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation import alignment, gauge, recovery, topology
from cryo_orient.orientation.refine import RefineConfig, RefinementResult, refine
from cryo_orient.orientation.shifts import center_images
from cryo_orient.simulation import simulate
from cryo_orient.tomography import fsc, projection, reconstruct
from cryo_orient.validation import InputError, InputTypeError, Settings
from cryo_orient.workflow.stages import Stage, StageCache, digest, run_stages

__all__ = [
    "RECOVERY_STAGES",
    "REFINE_STAGES",
    "STAGES",
    "VOLUME_SETS",
    "PipelineConfig",
    "choose_gauge",
    "make_pipeline_estimator",
    "pair_fit",
    "reconstruct_on_map",
    "recover_orientations",
    "run_case",
    "run_recovery",
    "write_outputs",
]


@dataclasses.dataclass(frozen=True)
class PipelineConfig(Settings):
    """Settings of every stage after simulation (unknown keys in :meth:`from_dict` are errors).

    ``estimator`` names the distance estimator (:data:`cryo_orient.estimation.ESTIMATORS`);
    ``training`` and ``fresh_noise`` configure a trained one (the Siamese network), and
    ``estimator_options`` are passed to the others (e.g. ``{"sigma": 0.1}`` for ``"perturbed"``).
    ``refine`` (a table of :class:`cryo_orient.orientation.refine.RefineConfig` settings; None:
    no refinement) adds :data:`REFINE_STAGES` after the reconstructions (beyond the paper).
    """

    estimator: str = "siamese"
    training: dict = dataclasses.field(default_factory=dict)
    fresh_noise: bool = False
    estimator_options: dict = dataclasses.field(default_factory=dict)
    recovery_mode: str = "improved"
    recovery_init: str | None = None
    recovery_init_coverage: tuple | None = None
    recovery_restarts: int = 3
    recovery_max_steps: int = 20000
    reconstruction_iterations: int = 100
    reconstruction_backend: str = "nufft"
    gauge_images: int = 400
    gauge_pairs: int = 4000
    gauge_candidates: int = 3000
    seed: int = 0
    refine: dict | None = None

    _unknown_keys = "pipeline config key(s)"
    _known_keys = "keys"

    def __post_init__(self):
        for name in ("training", "estimator_options"):
            if not isinstance(getattr(self, name), dict):
                raise InputTypeError(
                    f"pipeline config: {name} must be a table of settings, got {getattr(self, name)!r}"
                )
        if not isinstance(self.fresh_noise, (bool, np.bool_)):
            raise InputTypeError(f"pipeline config: fresh_noise must be true or false, got {self.fresh_noise!r}")
        validation.choice(self.recovery_mode, "recovery_mode", tuple(recovery.MODES))
        if self.recovery_init is not None:
            validation.choice(self.recovery_init, "recovery_init", recovery.INITS)
        if self.recovery_init_coverage is not None:
            # Checked as recover() will see it; stored as a tuple so that keys and records agree.
            object.__setattr__(self, "recovery_init_coverage", recovery.check_coverage(self.recovery_init_coverage))
        validation.choice(self.reconstruction_backend, "reconstruction_backend", projection.BACKENDS)
        for name in (
            "recovery_restarts",
            "recovery_max_steps",
            "reconstruction_iterations",
            "gauge_images",
            "gauge_pairs",
            "gauge_candidates",
        ):
            validation.positive_int(getattr(self, name), name)
        validation.integer(self.seed, "seed", 0)
        if self.refine is not None:
            if not isinstance(self.refine, dict):
                raise InputTypeError(f"pipeline config: refine must be a table of refine settings, got {self.refine!r}")
            RefineConfig.from_dict(dict(self.refine))  # unknown or bad settings fail here, not after training

    @classmethod
    def from_dict(cls, values) -> PipelineConfig:
        if isinstance(values, PipelineConfig):
            return values
        config = super().from_dict(values)
        if config.estimator not in ESTIMATORS:
            raise InputError(f"unknown distance estimator {config.estimator!r}; choose one of {sorted(ESTIMATORS)}")
        return config


# --------------------------------------------------------------------------- stage computations


def make_pipeline_estimator(config: PipelineConfig, dataset: Dataset) -> DistanceEstimator:
    """The configured estimator, unfitted. Fresh noise only where there is noise to redraw: a
    noiseless dataset keeps its cached run."""
    if getattr(ESTIMATORS.get(config.estimator), "trained", False):
        fresh = bool(config.fresh_noise) and dataset.noise_variance > 0
        return make_estimator(config.estimator, training=config.training, fresh_noise=fresh, **config.estimator_options)
    return make_estimator(config.estimator, **config.estimator_options)


def recover_orientations(distances, n: int, config: PipelineConfig, *, rng=None, progress=False) -> dict:
    """The recovery stage (Eq. 4) with the config's mode, restarts and step limit; ``rng`` defaults
    to the pipeline's stream ``[config.seed, 10]``."""
    rng = np.random.default_rng([config.seed, 10]) if rng is None else rng
    return recovery.recover(
        distances,
        n,
        mode=config.recovery_mode,
        init=config.recovery_init,
        init_coverage=config.recovery_init_coverage,
        restarts=config.recovery_restarts,
        max_steps=config.recovery_max_steps,
        rng=rng,
        progress=progress,
    ).as_arrays()


def choose_gauge(images, quaternions, config: PipelineConfig, *, progress=False) -> dict:
    """The gauge stage: the orientations' gauge chosen by common lines, no ground truth."""
    return gauge.choose_gauge(
        images,
        quaternions,
        n_images=config.gauge_images,
        n_pairs=config.gauge_pairs,
        n_candidates=config.gauge_candidates,
        rng=np.random.default_rng([config.seed, 12]),
        progress=progress,
    ).as_arrays()


def _volume_key(images, quaternions, config, backend) -> tuple:
    size = images.shape[-1]
    return ("reconstruction", images, quaternions, (size, size, size), config.reconstruction_iterations, backend)


def _reconstruct_cube(images, quaternions, config, backend, progress) -> dict:
    """The least-squares volume in the detector's cube and the seconds its reconstruction took."""
    size = images.shape[-1]
    result = reconstruct.reconstruct(
        images,
        quaternions,
        (size, size, size),
        backend,
        iterations=config.reconstruction_iterations,
        tol=0.0,
        progress=progress,
    )
    return {"volume": result.volume.astype(np.float32), "seconds": np.array(result.seconds)}


def _truth(dataset: Dataset):
    volume, voxel_size, _ = simulate.volume_source(simulate.SimulationConfig.from_dict(dict(dataset.config)))
    return np.asarray(volume, dtype=np.float64), float(voxel_size) if voxel_size else 1.0


def pair_fit(distances, q_true, rng, n_pairs: int = 200_000) -> dict:
    """How well estimated distances fit the true orientations, on ``n_pairs`` random pairs.

    ``test_pair_mae`` is the mean absolute error of the distances; ``L_at_true_orientations`` is
    Eq. 4's loss at the truth: if the recovered L_OR is far below it, the estimated distances fit
    another configuration better than the truth, and no optimiser can fix that.
    """
    i, j = rng.integers(0, len(q_true), size=(2, n_pairs))
    d_p = distances(i, j)
    d_q = rotations.distance(q_true[i], q_true[j])
    return {
        "test_pair_mae": float(np.mean(np.abs(d_p - d_q))),
        "L_at_true_orientations": float(np.mean((d_p - d_q) ** 2)),
    }


def _init_key(config: PipelineConfig) -> tuple:
    if config.recovery_init is None and config.recovery_init_coverage is None:
        return ()
    return ("init", config.recovery_init, config.recovery_init_coverage)


def _pair_fit(ctx) -> dict:
    return pair_fit(
        ctx["estimator"].distance_function(ctx["features"]),
        ctx["test"].quaternions,
        np.random.default_rng([ctx["config"].seed, 11]),
    )


def _random_orientations(ctx) -> np.ndarray:
    config, c = ctx["config"], ctx["dataset"].config
    return rotations.sample_orientations(
        ctx["test"].n, "uniform_euler", c["coverage"], c["offset"], rng=np.random.default_rng([config.seed, 13])
    )


#: The reconstructions of every case: name -> (images, orientations), names of context entries.
VOLUME_SETS = {
    "truth": ("clean", "q_true"),
    "truth_noisy_images": ("noisy", "q_true"),  # what the noise alone costs
    "random": ("clean", "q_random"),
    "recovered": ("clean", "q_aligned"),
    "recovered_noisy_images": ("noisy", "q_aligned"),
    "gauge": ("clean", "q_gauge"),
    "gauge_noisy_images": ("noisy", "q_gauge"),
}


def _volume_stage(name: str, images: str, orientations: str) -> Stage:
    def key(ctx):
        return _volume_key(ctx[images], ctx[orientations], ctx["config"], ctx["backend"])

    def compute(ctx):
        return _reconstruct_cube(ctx[images], ctx[orientations], ctx["config"], ctx["backend"], ctx["progress"])

    return Stage(
        f"volume:{name}", (images, orientations, "config", "backend", "progress"), compute, key=key, prefix="volume"
    )


def _place_volumes(ctx) -> dict:
    """Every reconstruction on the true map's grid and its FSC against the map."""
    truth, voxel_size = ctx["truth"]
    out = {"cube": {}, "on_map": {}, "fsc": {}, "seconds": {}}
    for name in VOLUME_SETS:
        arrays = ctx[f"volume:{name}"]
        out["cube"][name], out["seconds"][name] = arrays["volume"].astype(np.float64), float(arrays["seconds"])
        volume = volumes.band_limit(out["cube"][name])  # before it is resampled (see band_limit)
        if name.startswith("gauge"):
            M, _ = volumes.refine_alignment(volume, truth, ctx["frame"]["matrix"])
        else:
            M = np.eye(3)
        out["on_map"][name] = volumes.transform_volume(volume, M, truth.shape)
        out["fsc"][name] = fsc.fsc(out["on_map"][name], truth, voxel_size)
    return out


def _fsc_log(ctx, placed) -> str:
    lines = []
    for name, curve in placed["fsc"].items():
        s = curve.summary()
        lines.append(
            f"reconstruction '{name}': FSC 0.5 at {s['resolution_0.5']:.1f} Å, 0.143 at {s['resolution_0.143']:.1f} Å"
        )
    return "\n".join(lines)


#: The method after simulation, in order. Context inputs: ``dataset``, ``config``, ``cache_dir``,
#: ``progress``; each stage adds the entry of its name.
STAGES = [
    Stage("test", ("dataset",), lambda ctx: ctx["dataset"].split("test")),
    # The images first: a dataset they cannot be read from fails before any training.
    Stage("noisy", ("test",), lambda ctx: ctx["test"].images("noisy")),
    Stage("clean", ("test",), lambda ctx: ctx["test"].images("clean")),
    Stage(
        "estimator",
        ("dataset", "config", "cache_dir", "progress"),
        lambda ctx: make_pipeline_estimator(ctx["config"], ctx["dataset"]).fit(
            ctx["dataset"], cache_dir=Path(ctx["cache_dir"]) / "siamese", progress=ctx["progress"]
        ),
        log=lambda ctx, est: est.log_line(),
    ),
    Stage("q_true", ("test",), lambda ctx: ctx["test"].quaternions),
    Stage("features", ("estimator", "test"), lambda ctx: ctx["estimator"].embed(ctx["test"])),
    Stage(
        "recovery",
        ("estimator", "features", "test", "dataset", "config", "progress"),
        lambda ctx: recover_orientations(
            ctx["estimator"].distance_function(ctx["features"]), ctx["test"].n, ctx["config"], progress=ctx["progress"]
        ),
        # The estimator's key names what it was fitted on and how (a Siamese run folder's hash).
        key=lambda ctx: (
            "recovery",
            ctx["estimator"].key,
            ctx["dataset"].cache_key,
            ctx["test"].index,
            ctx["config"].recovery_mode,
            ctx["config"].recovery_restarts,
            ctx["config"].recovery_max_steps,
            ctx["config"].seed,
            # Only a start other than the mode's enters the key (earlier caches stay valid).
            *_init_key(ctx["config"]),
        ),
    ),
    Stage(
        "topology",
        ("recovery",),
        lambda ctx: topology.check_topology(ctx["recovery"]["quaternions"]),
        log=lambda ctx, check: check.message,
    ),
    Stage(
        "alignment",
        ("q_true", "recovery"),
        lambda ctx: alignment.align(ctx["q_true"], ctx["recovery"]["quaternions"]),
        log=lambda ctx, a: (
            f"recovery: L_OR {float(ctx['recovery']['final_loss']):.4f}, E_OR mean "
            f"{a.mean_error:.3f} / median {a.median_error:.3f} rad"
        ),
    ),
    Stage("q_aligned", ("alignment",), lambda ctx: ctx["alignment"].aligned),
    Stage("pair_fit", ("estimator", "features", "test", "config"), _pair_fit),
    Stage(
        "gauge",
        ("noisy", "recovery", "config", "progress"),
        lambda ctx: choose_gauge(ctx["noisy"], ctx["recovery"]["quaternions"], ctx["config"], progress=ctx["progress"]),
        key=lambda ctx: (
            "gauge",
            ctx["keys"]["recovery"],
            ctx["config"].gauge_images,
            ctx["config"].gauge_pairs,
            ctx["config"].gauge_candidates,
            ctx["config"].seed,
            ctx["noisy"],
        ),
    ),
    Stage("q_gauge", ("gauge",), lambda ctx: ctx["gauge"]["quaternions"]),
    Stage(
        "frame",
        ("q_true", "q_gauge"),
        lambda ctx: gauge.volume_frame(alignment.align(ctx["q_true"], ctx["q_gauge"])),
        log=lambda ctx, f: (
            f"gauge from common lines: conjugate branch {bool(ctx['gauge']['conjugated'])}, "
            f"distance of the chosen left factor from a consistent one {f['gauge_error']:.3f} "
            f"rad, mirrored volume {f['mirrored']}"
        ),
    ),
    Stage("truth", ("dataset",), lambda ctx: _truth(ctx["dataset"])),
    Stage("q_random", ("dataset", "test", "config"), _random_orientations),
    Stage("backend", ("config",), lambda ctx: projection.resolve_backend(ctx["config"].reconstruction_backend)),
    *[_volume_stage(name, images, q) for name, (images, q) in VOLUME_SETS.items()],
    Stage("placed", ("truth", "frame", *[f"volume:{name}" for name in VOLUME_SETS]), _place_volumes, log=_fsc_log),
]


def _refinement(ctx) -> dict:
    """Refine the gauge-free orientations against their own half maps: the noisy images, no
    reference and no ground truth (what a user could run); E_OR against the truth is followed
    per round for the record only."""
    config = ctx["config"]
    q_true = ctx["q_true"]

    def errors(iteration, q, shifts):
        a = alignment.align(q_true, q)
        return {"E_OR_median": a.median_error, "E_OR_mean": a.mean_error}

    cache = StageCache(Path(ctx["cache_dir"]) / "pipeline")
    checkpoint = cache.path("refinement", ctx["keys"]["refinement"]).with_suffix(".partial.npz")
    result = refine(
        ctx["noisy"],
        ctx["q_gauge"],
        config=RefineConfig.from_dict(dict(config.refine)),
        pixel_size=ctx["truth"][1],
        progress=ctx["progress"],
        callback=errors,
        checkpoint=checkpoint,
    )
    checkpoint.unlink(missing_ok=True)
    return result.to_arrays()


def _refinement_log(ctx, arrays) -> str:
    result = RefinementResult.from_arrays(arrays)
    first, last = result.log[0], result.log[-1]
    return (
        f"refinement: {len(result.log) - 1} rounds ({result.stop_reason}), E_OR median "
        f"{np.degrees(first['E_OR_median']):.2f}° -> {np.degrees(last['E_OR_median']):.2f}°, half maps "
        f"{first['resolution']:.1f} -> {result.resolution:.1f} Å, {result.seconds:.0f} s"
    )


def _place_refined(ctx) -> dict:
    """The refined reconstruction (pipeline solver, noisy images centred by the refined shifts)
    on the true map's grid, placed as the gauge-free volumes are, and its FSC with the map."""
    truth, voxel_size = ctx["truth"]
    cube = ctx["volume:refined_noisy_images"]["volume"].astype(np.float64)
    volume = volumes.band_limit(cube)
    M, _ = volumes.refine_alignment(volume, truth, gauge.volume_frame(ctx["refined_alignment"])["matrix"])
    on_map = volumes.transform_volume(volume, M, truth.shape)
    return {"cube": cube, "on_map": on_map, "fsc": fsc.fsc(on_map, truth, voxel_size)}


def _fsc_in_frame(ctx):
    """FSC with the true map of the refined orientations' map reconstructed in the map's frame."""
    truth, voxel_size = ctx["truth"]
    volume = volumes.band_limit(ctx["volume:refined_aligned_noisy_images"]["volume"])
    return fsc.fsc(volumes.transform_volume(volume, np.eye(3), truth.shape), truth, voxel_size)


#: The refinement after :data:`STAGES`, run where ``config.refine`` is set (beyond the paper).
REFINE_STAGES = [
    Stage(
        "refinement",
        ("noisy", "q_gauge", "q_true", "truth", "config", "cache_dir", "progress"),
        _refinement,
        key=lambda ctx: (
            "refinement",
            ctx["keys"]["gauge"],
            RefineConfig.from_dict(dict(ctx["config"].refine)).to_dict(),
            ctx["truth"][1],
        ),
        log=_refinement_log,
    ),
    Stage("refined", ("refinement",), lambda ctx: RefinementResult.from_arrays(ctx["refinement"])),
    Stage("q_refined", ("refined",), lambda ctx: ctx["refined"].quaternions),
    Stage("refined_images", ("noisy", "refined"), lambda ctx: center_images(ctx["noisy"], ctx["refined"].shifts)),
    Stage("refined_alignment", ("q_true", "q_refined"), lambda ctx: alignment.align(ctx["q_true"], ctx["q_refined"])),
    _volume_stage("refined_noisy_images", "refined_images", "q_refined"),
    Stage(
        "refined_placed",
        ("truth", "refined_alignment", "volume:refined_noisy_images"),
        _place_refined,
        log=lambda ctx, placed: "reconstruction 'refined_noisy_images': FSC 0.5 at {:.1f} Å, 0.143 at {:.1f} Å".format(
            placed["fsc"].summary()["resolution_0.5"], placed["fsc"].summary()["resolution_0.143"]
        ),
    ),
    # The refined orientations aligned to the truth (as "recovered" is to the recovered ones) and
    # reconstructed in the map's frame: no rigid motion of the volume, as for "truth_noisy_images",
    # its like-for-like comparison. The gauge-free refined map above is rotated onto the map (as
    # "gauge"); band-limiting makes that cost small (see volumes.band_limit).
    Stage("q_refined_aligned", ("refined_alignment",), lambda ctx: ctx["refined_alignment"].aligned),
    _volume_stage("refined_aligned_noisy_images", "refined_images", "q_refined_aligned"),
    Stage(
        "refined_aligned_fsc",
        ("truth", "volume:refined_aligned_noisy_images"),
        _fsc_in_frame,
        log=lambda ctx, curve: (
            "reconstruction 'refined_aligned_noisy_images': FSC 0.5 at {:.1f} Å, 0.143 at {:.1f} Å".format(
                curve.summary()["resolution_0.5"], curve.summary()["resolution_0.143"]
            )
        ),
    ),
]


def _refinement_summary(ctx) -> dict:
    result, aligned = ctx["refined"], ctx["refined_alignment"]
    return {
        "settings": RefineConfig.from_dict(dict(ctx["config"].refine)).to_dict(),
        "start": "gauge-free recovered orientations (q_gauge), noisy images, no reference",
        "rounds": len(result.log) - 1,
        "stop_reason": result.stop_reason,
        "seconds": result.seconds,
        "E_OR_median": aligned.median_error,
        "E_OR_mean": aligned.mean_error,
        "E_OR_median_deg": float(np.degrees(aligned.median_error)),
        "E_OR_mean_deg": float(np.degrees(aligned.mean_error)),
        "reflected": aligned.reflected,
        # The test datasets here are centred: the refined shifts' RMS is their error.
        "shift_rms_px": float(np.sqrt(np.mean(np.sum(result.shifts**2, axis=1)))),
        "half_map_resolution": result.resolution,
        "log": result.log,
        # The gauge-free refined map placed on the map by a rigid motion (as "gauge"), and the
        # refined orientations' map in the map's frame (as "recovered"; compare it with the
        # true orientations' "truth_noisy_images").
        "fsc": ctx["refined_placed"]["fsc"].summary(),
        "fsc_aligned": ctx["refined_aligned_fsc"].summary(),
    }


def _summary(ctx) -> dict:
    rec, aligned, chosen, frame, placed = ctx["recovery"], ctx["alignment"], ctx["gauge"], ctx["frame"], ctx["placed"]
    size = ctx["clean"].shape[-1]
    return {
        "n_test": int(ctx["test"].n),
        "estimator": ctx["estimator"].describe(),
        **ctx["pair_fit"],
        "L_OR": float(rec["final_loss"]),
        "topology": ctx["topology"].as_dict(),
        "recovery_steps": int(len(rec["losses"])),
        "recovery_seconds": float(rec["seconds"]),
        "E_OR_mean": aligned.mean_error,
        "E_OR_median": aligned.median_error,
        "reflected": aligned.reflected,
        "gauge": {
            "conjugated": bool(chosen["conjugated"]),
            "score": float(chosen["score"]),
            "score_q": float(chosen["score_q"]),
            "score_conjugate": float(chosen["score_conjugate"]),
            "gauge_error": frame["gauge_error"],
            "mirrored": frame["mirrored"],
            "needed_reflection": frame["reflected"],
        },
        "voxel_size": ctx["truth"][1],
        "reconstruction_box": [size, size, size],
        "reconstruction_backend": ctx["backend"],
        "reconstruction_seconds": placed["seconds"],
        "fsc": {name: curve.summary() for name, curve in placed["fsc"].items()},
        **({"refinement": _refinement_summary(ctx)} if "refined" in ctx else {}),
    }


def _run_stages(stages, dataset, config, cache_dir, progress, log):
    """``stages`` on one dataset (a path or Dataset) with the stage cache under ``cache_dir``."""
    config = PipelineConfig.from_dict(config if isinstance(config, PipelineConfig) else dict(config))
    dataset = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    ctx = run_stages(
        stages,
        {"dataset": dataset, "config": config, "cache_dir": Path(cache_dir), "progress": progress},
        StageCache(Path(cache_dir) / "pipeline"),
        log=log,
    )
    return dataset, ctx


def run_case(dataset, config, *, cache_dir, progress=True, log=print) -> dict:
    """Run every stage of :data:`STAGES` on one dataset; return orientations, volumes, FSC curves and numbers.

    Parameters
    ----------
    dataset : path or Dataset
        A simulated dataset (:func:`cryo_orient.simulation.simulate.simulate_dataset`), P projections.
    config : PipelineConfig or dict
    cache_dir : path
        Where stages are cached (the Siamese estimator under ``siamese/``, the rest under ``pipeline/``).
    progress : bool
        Progress bars for the long stages.
    log : callable
        Receives what each stage says when it has run (a line, or one per volume for the FSC).

    Returns
    -------
    dict
        ``q_true``, ``q_recovered``, ``q_aligned``, ``q_gauge`` (test split), ``losses`` (L_OR per
        step), ``errors`` (per-orientation error after alignment), ``volumes`` (name → volume on
        the map grid), ``cube_volumes`` (name → reconstruction on the detector cube), ``fsc``
        (name → :class:`cryo_orient.tomography.fsc.FSCResult`), ``summary`` (JSON-able numbers),
        the true map and its voxel size, and ``test_indices``. With ``config.refine`` also
        ``q_refined``, ``refined_shifts`` (px), ``refined_errors`` (after alignment),
        ``refined_volume`` (the refined poses' reconstruction from the noisy images, on the map
        grid), ``refined_fsc`` (with the true map), ``refined_aligned_fsc`` (with the true map, of
        the refined poses aligned to the truth and reconstructed in the map's frame, as
        ``"recovered"``) and ``refined_half_fsc`` (of the half maps).
    """
    config = PipelineConfig.from_dict(config if isinstance(config, PipelineConfig) else dict(config))
    stages = STAGES + REFINE_STAGES if config.refine is not None else STAGES
    dataset, ctx = _run_stages(stages, dataset, config, cache_dir, progress, log)
    truth, voxel_size = ctx["truth"]
    refined = {}
    if "refined" in ctx:
        refined = {
            "q_refined": ctx["q_refined"],
            "refined_shifts": ctx["refined"].shifts,
            "refined_errors": ctx["refined_alignment"].errors,
            "refined_volume": ctx["refined_placed"]["on_map"],
            "refined_fsc": ctx["refined_placed"]["fsc"],
            "refined_aligned_fsc": ctx["refined_aligned_fsc"],
            "refined_half_fsc": ctx["refined"].fsc,
        }
    return {
        "q_true": ctx["q_true"],
        "q_recovered": ctx["recovery"]["quaternions"],
        "q_aligned": ctx["q_aligned"],
        "q_gauge": ctx["q_gauge"],
        "losses": ctx["recovery"]["losses"],
        "errors": ctx["alignment"].errors,
        "volumes": ctx["placed"]["on_map"],
        "cube_volumes": ctx["placed"]["cube"],
        "fsc": ctx["placed"]["fsc"],
        "summary": _summary(ctx),
        "truth": truth,
        "voxel_size": voxel_size,
        "test_indices": ctx["test"].index,
        "dataset_path": dataset.path,
        **refined,
    }


#: The stages :func:`run_recovery` runs: up to the recovered orientations, their check and E_OR.
RECOVERY_STAGES = STAGES[: [stage.name for stage in STAGES].index("pair_fit") + 1]


def run_recovery(dataset, config, *, cache_dir, progress=False, log=None) -> dict:
    """The stages of :func:`run_case` up to orientation recovery and its evaluation, no gauge or volumes.

    For comparing recoveries (the paper's optimiser, another start) of the same estimator's
    distances at the cost of a recovery: the estimator and the recovered orientations are cached
    as :func:`run_case` caches them (the same keys), so a later ``run_case`` reuses them.

    Returns
    -------
    dict
        ``estimator`` (its description), ``L_OR``, ``L_at_true_orientations``, ``test_pair_mae``,
        ``E_OR_mean``, ``E_OR_median``,
        ``reflected``, ``recovery_steps``, ``recovery_seconds``, ``topology`` and the settings of
        the recovery (``recovery_mode``, ``recovery_init``, ``recovery_init_coverage``,
        ``recovery_restarts``), plus ``errors`` (per-orientation errors after alignment, an array).
    """
    dataset, ctx = _run_stages(RECOVERY_STAGES, dataset, config, cache_dir, progress, log)
    config = ctx["config"]
    rec, aligned = ctx["recovery"], ctx["alignment"]
    return {
        "estimator": ctx["estimator"].describe(),
        **{k: getattr(config, k) for k in ("recovery_mode", "recovery_init", "recovery_init_coverage")},
        "recovery_restarts": config.recovery_restarts,
        **ctx["pair_fit"],
        "L_OR": float(rec["final_loss"]),
        "recovery_steps": int(len(rec["losses"])),
        "recovery_seconds": float(rec["seconds"]),
        "E_OR_mean": aligned.mean_error,
        "E_OR_median": aligned.median_error,
        "reflected": aligned.reflected,
        "topology": ctx["topology"].as_dict(),
        "errors": aligned.errors,
    }


def reconstruct_on_map(images, quaternions, config, truth, voxel_size, *, cache_dir, progress=False) -> dict:
    """Reconstruct from ``images`` at ``quaternions`` given in the true map's frame, as :func:`run_case`
    does for its ``"recovered"`` volumes, and compare the result with the true map.

    For orientations from elsewhere (another method's, aligned to the truth): the same box (the
    detector's cube), solver, iterations, backend and cache key as :func:`run_case`'s
    reconstructions (cached as ``volume-<key>.npz`` in ``cache_dir``), band-limited to its Nyquist
    sphere (:func:`cryo_orient.geometry.volumes.band_limit`) and placed on the map's grid by the
    identity, FSC in one-voxel shells. Returns ``volume`` (the cube), ``volume_on_map``,
    ``fsc`` (:class:`cryo_orient.tomography.fsc.FSCResult`) and ``seconds`` (of the reconstruction when it ran).
    """
    config = PipelineConfig.from_dict(config if isinstance(config, PipelineConfig) else dict(config))
    backend = projection.resolve_backend(config.reconstruction_backend)
    images = np.asarray(images, dtype=np.float64)
    arrays = StageCache(cache_dir).arrays(
        "volume",
        digest(*_volume_key(images, quaternions, config, backend)),
        lambda: _reconstruct_cube(images, quaternions, config, backend, progress),
    )
    volume = arrays["volume"].astype(np.float64)
    on_map = volumes.transform_volume(volumes.band_limit(volume), np.eye(3), np.shape(truth))
    return {
        "volume": volume,
        "volume_on_map": on_map,
        "fsc": fsc.fsc(on_map, truth, voxel_size),
        "seconds": float(arrays["seconds"]),
    }


def _map_origin(dataset: Dataset) -> np.ndarray:
    """Header origin ``(x, y, z)`` in Å of the dataset's true map."""
    name = dataset.config["volume"]
    path = data.map_file(name, progress=False) if name in data.REGISTRY else Path(name)
    with mrcfile.open(path, header_only=True) as m:
        o = m.header.origin
        return np.array([float(o.x), float(o.y), float(o.z)])


def write_outputs(result: dict, dataset, out_dir) -> list[Path]:
    """Write a case's volumes as MRC files and its orientations as RELION STAR files.

    ``<name>.mrc`` for every reconstruction on the true map's grid (the map's voxel size and
    origin, so it overlays the map in Chimera); ``gauge_as_reconstructed.mrc``, the gauge-free
    volume on the detector cube as it came out (possibly rotated or mirrored: no ground truth
    touched it), centred on the same point; ``orientations_aligned.star`` and
    ``orientations_gauge.star`` for the test projections (RELION convention, see
    :mod:`cryo_orient.data.relion`); after a refinement ``refined.mrc`` (placed on the map like
    the gauge-free volume) and ``orientations_refined.star`` (refined poses and origins, in the
    refinement's own frame).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    voxel = result["voxel_size"]
    origin = _map_origin(dataset)
    written = []
    for name, volume in result["volumes"].items():
        written.append(data.write_volume(out / f"{name}.mrc", volume.astype(np.float32), voxel, origin=origin))
    cube = result["cube_volumes"]["gauge"]
    shift = (np.array(result["truth"].shape)[::-1] // 2 - np.array(cube.shape)[::-1] // 2) * voxel
    written.append(
        data.write_volume(out / "gauge_as_reconstructed.mrc", cube.astype(np.float32), voxel, origin=origin + shift)
    )
    size = int(dataset.config["size"] or cube.shape[0])
    for name, q in (("aligned", result["q_aligned"]), ("gauge", result["q_gauge"])):
        written.append(relion.write_star(out / f"orientations_{name}.star", q, pixel_size=voxel, image_size=size))
    if "q_refined" in result:
        written.append(
            data.write_volume(out / "refined.mrc", result["refined_volume"].astype(np.float32), voxel, origin=origin)
        )
        written.append(
            relion.write_star(
                out / "orientations_refined.star",
                result["q_refined"],
                pixel_size=voxel,
                image_size=size,
                shifts=result["refined_shifts"],
            )
        )
    return written
