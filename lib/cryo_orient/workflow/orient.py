"""Orientations for a particle stack another program wrote: ``cryo-orient orient PARTICLES.star --reference MAP``.

The method of the paper, made to run on a RELION particle stack with a CTF and off-centre
particles, given a reference map:

1. **match** – read the stack (:func:`cryo_orient.data.read_particles`), resample the reference to
   its pixel size and box, and measure the stack against the reference's projections
   (:func:`cryo_orient.simulation.matching.match_stack`): contrast (inverted or not), noise level
   and the spread of the particles' offsets.
2. **simulate** – a training set of projections of the reference with the stack's CTFs (rows of
   its STAR file drawn at random), noise of the measured level and offsets of the measured spread.
3. **train** – the Siamese distance estimator on it, with fresh noise and offsets every batch.
   Its input is CTF-corrected (phase flipping by default, or Wiener filtering) for the training
   images and the stack alike.
4. **embed and recover** – the stack's images *and* ``n_anchors`` simulated images of known
   orientation (the training set's test split) are embedded and their orientations recovered
   together from the estimated distances (Eq. 4).
5. **gauge** – recovered orientations are known only up to a transform in O(4); aligning the
   anchors to their true orientations gives it, and applying it to the stack puts the stack's
   orientations in the reference's frame (with its handedness).
6. **shifts** – each particle's offset by cross-correlation with the reference's projection at its
   recovered orientation (CTF applied), within three times the measured spread.
7. **reconstruct** – least squares with each image's CTF in the normal equations, from the
   centred (and, where needed, contrast-inverted) images.

Outputs in ``out_dir``: ``particles.star`` (RELION 3.1: the input's rows and columns, with
``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/YAngst``; image names relative to ``out_dir``, pointing
at ``particles.mrcs`` there when the contrast was inverted, else at the input's stacks),
``map.mrc`` (the pixel size in its header) and ``orient.json`` (settings, what was measured and
decided, time per stage, and :func:`quality`'s checks, logged as warnings where they fail: an
estimator no better than a constant, anchors recovered far from their known orientations).
Every stage is cached under a key of its inputs in ``cache_dir``, so a rerun resumes where the
last one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import MappingProxyType

import numpy as np

from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import read_particles, write_volume
from cryo_orient.data.dataset import Dataset, read_dataset
from cryo_orient.data.relion import write_particle_stack, write_particles
from cryo_orient.estimation.siamese import SiameseEstimator, TrainingConfig, constant_mae
from cryo_orient.orientation import alignment, recovery
from cryo_orient.orientation.refine import RefineConfig, RefinementResult, refine, refine_settings
from cryo_orient.orientation.shifts import center_images, estimate_shifts
from cryo_orient.simulation.matching import INVERT_CHOICES, StackModel, match_stack
from cryo_orient.simulation.simulate import SimulationConfig, simulate_dataset
from cryo_orient.tomography.ctf import CTFParams, apply_ctf, phase_flip, wiener_filter
from cryo_orient.tomography.projection import project
from cryo_orient.tomography.reconstruct import reconstruct
from cryo_orient.validation import InputError, Settings, choice
from cryo_orient.workflow.refine import load_reference, log_lines, relative_image_names, write_refinement
from cryo_orient.workflow.stages import Stage, StageCache, digest, run_stages

__all__ = ["CORRECTIONS", "OrientConfig", "corrected", "orient", "refine_config_for", "write_outputs"]

CORRECTIONS = ("phase_flip", "wiener", "none")

#: An estimator whose validation MAE is above this fraction of the best constant's has learned
#: too little for a recovery: on the ASPIRE 70S stack, ratios of 0.96-1.12 recovered 81-128°
#: median, and 0.84 recovered 40° (benchmarks/results/estimator-learning-2026-12-07.md).
LEARNED_MAE_RATIO = 0.9
#: Anchors' median error after the gauge, in degrees, above which the written orientations are
#: flagged: the anchors are recovered with the stack, so the stack's are no better (the paper's
#: pipeline gives 9-14° at its highest noise).
ANCHOR_WARNING_DEG = 30.0
#: ``orient --refine``'s shift searches reach this many σ of the stack's measured offsets unless
#: set: a search that does not reach a particle's offset leaves it where it is.
SHIFT_REACH_SIGMAS = 3.0


@dataclasses.dataclass(frozen=True)
class OrientConfig(Settings):
    """Settings of :func:`orient` (defaults: 2,000 particles at 48 px in under 20 minutes on 2 cores).

    Attributes
    ----------
    n_train : int
        Simulated training images.
    epochs, n_features, batch_size, learning_rate : training of the estimator
        (:class:`cryo_orient.estimation.siamese.TrainingConfig`, "batch" regime: all pairs of a
        batch of images per step).
    input_size : int or None
        The estimator's input side in pixels (images are binned or resized to it); None: half
        the box for even boxes of 48 px or more, else the box.
    ctf_correction : {"phase_flip", "wiener", "none"}
        Applied to the estimator's input (training images and stack alike); ignored without a CTF.
    invert_contrast : {"auto", "yes", "no"}
        Negate the stack's images (``"auto"``: when its mean image anti-correlates with the
        reference's mean CTF-modulated projection).
    shifts : {"estimate", "none"}
        Estimate the particles' offsets (and centre them before reconstruction), or take them as
        centred.
    n_anchors : int
        Simulated images of known orientation recovered with the stack, to fix the gauge.
    recovery_mode, recovery_restarts, recovery_max_steps : Eq. 4's recovery
        (:func:`cryo_orient.orientation.recovery.recover`).
    reconstruction_iterations : int
        CG iterations of the reconstruction (the iteration count regularises).
    n_measure : int
        Images of the stack measured by :func:`~cryo_orient.simulation.matching.match_stack`.
    seed : int
    """

    _unknown_keys = "orient setting(s)"
    _known_keys = "settings"

    n_train: int = 5000
    epochs: int = 60
    n_features: int = 256
    batch_size: int = 32
    learning_rate: float = 1e-3
    input_size: int | None = None
    ctf_correction: str = "phase_flip"
    invert_contrast: str = "auto"
    shifts: str = "estimate"
    n_anchors: int = 500
    recovery_mode: str = "improved"
    recovery_restarts: int = 2
    recovery_max_steps: int = 20000
    reconstruction_iterations: int = 30
    n_measure: int = 1000
    seed: int = 0

    def __post_init__(self):
        choice(self.ctf_correction, "ctf_correction", CORRECTIONS)
        choice(self.invert_contrast, "invert_contrast", INVERT_CHOICES)
        choice(self.shifts, "shifts", ("estimate", "none"))
        for name in ("n_train", "epochs", "n_anchors", "recovery_restarts", "reconstruction_iterations", "n_measure"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.n_train < 30:
            raise InputError(f"n_train must be at least 30 (a train / validation / test split), got {self.n_train}")

    def training(self, box: int) -> TrainingConfig:
        size = self.input_size or (box // 2 if box % 2 == 0 and box >= 48 else box)
        return TrainingConfig(
            input_size=int(size),
            n_features=self.n_features,
            regime="batch",
            batch_size=self.batch_size,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            seed=self.seed,
        )


# --------------------------------------------------------------------------- CTF correction


def corrected(dataset: Dataset, correction: str, *, invert: bool = False, snr: float | None = None) -> Dataset:
    """A view of ``dataset`` whose images are contrast-inverted (``invert``) and CTF-corrected.

    Every image kind of the view is the base's with ``correction`` applied (``"phase_flip"``,
    ``"wiener"`` with the given ``snr``, or ``"none"``): the estimator sees the same correction on
    simulated and real images. Phase flipping keeps white noise white, so fresh noise added to
    phase-flipped clean images is distributed as noise added before the flip.
    """
    choice(correction, "correction", CORRECTIONS)
    sign = -1.0 if invert else 1.0
    if (correction == "none" or not dataset.ctf) and not invert:
        return dataset
    params = CTFParams.from_columns(dataset.ctf, len(dataset.index)) if dataset.ctf else None
    # The view's rows are the base's file rows; the CTF table is per position in ``dataset``.
    position = {int(row): k for k, row in enumerate(dataset.index)}
    base = dataset._read

    def read(name, rows):
        images = sign * base(name, rows)
        if params is None or correction == "none":
            return images.astype(np.float32)
        p = params.subset(np.array([position[int(r)] for r in rows]))
        if correction == "phase_flip":
            out = phase_flip(images, p, dataset.pixel_size)
        else:
            out = wiener_filter(images, p, dataset.pixel_size, snr)
        return out.astype(np.float32)

    metadata = dict(dataset.metadata)
    metadata["cache_key"] = digest(dataset.cache_key, "corrected", correction, invert, snr)
    if "standardization_mean" in metadata:
        metadata["standardization_mean"] = sign * float(metadata["standardization_mean"])
    return dataclasses.replace(dataset, metadata=MappingProxyType(metadata), _read=read)


# --------------------------------------------------------------------------- stages


def _timed(name, compute):
    def run(ctx):
        start = time.perf_counter()
        result = compute(ctx)
        ctx["seconds"][name] = time.perf_counter() - start
        return result

    return run


def _said(name):
    """The line a stage says when done: its time, or that it came from the cache."""

    def line(ctx, result):
        seconds = ctx["seconds"].get(name)
        return f"  {name}: {'cached' if seconds is None else f'{seconds:.0f} s'}"

    return line


def _model(ctx) -> dict:
    model = match_stack(
        ctx["stack"],
        ctx["reference"],
        invert=ctx["config"].invert_contrast,
        n_images=ctx["config"].n_measure,
        rng=np.random.default_rng([ctx["config"].seed, 1]),
    )
    return {k: np.asarray(v) for k, v in model.to_dict().items()}


def _stack_model(ctx) -> StackModel:
    values = {k: v.item() for k, v in ctx["model"].items()}
    return StackModel(**values)


def _training_set(ctx) -> Dataset:
    stack, model, config = ctx["stack"], ctx["stack_model"], ctx["config"]
    ctf = None
    if stack.ctf:
        ctf = {"from_star": str(stack.path), "pixel_size": stack.pixel_size}
    settings = SimulationConfig(
        volume=str(ctx["reference_path"]),
        n_projections=config.n_train,
        size=stack.image_size,
        noise_variance=model.training_noise_variance,
        # Triangular offsets on [-T, T] have the standard deviation T / sqrt(6).
        shift_mode="subpixel" if config.shifts == "estimate" and model.shift_sigma > 0 else "none",
        shift_limit=model.shift_sigma * np.sqrt(6.0) if config.shifts == "estimate" else 0.0,
        store_clean=True,
        ctf=ctf,
        seed=config.seed,
    )
    path = ctx["cache_dir"] / "training" / f"train-{digest(settings.to_dict())}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate_dataset(settings, path, progress=ctx["progress"])
    return read_dataset(path)


def _views(ctx) -> dict:
    config, model = ctx["config"], ctx["stack_model"]
    snr = model.snr if config.ctf_correction == "wiener" else None
    return {
        "train": corrected(ctx["training_set"], config.ctf_correction, snr=snr),
        "stack": corrected(ctx["stack"], config.ctf_correction, invert=model.invert, snr=snr),
    }


def _estimator(ctx) -> SiameseEstimator:
    config = ctx["config"]
    # Fresh white noise on Wiener-filtered clean images would not be the filtered noise of the stack.
    estimator = SiameseEstimator(
        config.training(ctx["stack"].image_size), fresh_noise=config.ctf_correction != "wiener"
    )
    return estimator.fit(ctx["views"]["train"], cache_dir=ctx["cache_dir"] / "siamese", progress=ctx["progress"])


def _anchor_index(ctx) -> np.ndarray:
    test = ctx["views"]["train"].split_index("test")
    return test[: min(len(test), ctx["config"].n_anchors)]


def _features(ctx) -> dict:
    estimator, views = ctx["estimator"], ctx["views"]
    anchors = views["train"].subset(ctx["anchor_index"])
    return {
        "stack": estimator.embed(views["stack"], progress=ctx["progress"]),
        "anchors": estimator.embed(anchors, progress=ctx["progress"]),
    }


def _recovery(ctx) -> dict:
    config = ctx["config"]
    features = np.concatenate([ctx["features"]["anchors"], ctx["features"]["stack"]])
    result = recovery.recover(
        ctx["estimator"].distance_function(features),
        len(features),
        mode=config.recovery_mode,
        restarts=config.recovery_restarts,
        max_steps=config.recovery_max_steps,
        rng=np.random.default_rng([config.seed, 10]),
        progress=ctx["progress"],
    )
    return result.as_arrays()


def _gauge(ctx) -> dict:
    q = ctx["recovery"]["quaternions"]
    n_anchors = len(ctx["anchor_index"])
    truth = ctx["training_set"].quaternions[ctx["anchor_index"]]
    fit = alignment.align(truth, q[:n_anchors])
    return {
        "quaternions": alignment.apply_transform(fit.transform, q[n_anchors:]),
        "anchor_errors": np.asarray(fit.errors),
        "transform": np.asarray(fit.transform),
    }


def quality(val_mae: float, constant_val_mae: float, anchor_errors_deg) -> dict:
    """Checks of a run that need no ground truth for the stack, and the warnings they raise.

    Parameters
    ----------
    val_mae : float
        The estimator's final validation MAE (rad).
    constant_val_mae : float
        The best constant's MAE on the same validation orientations
        (:func:`cryo_orient.estimation.siamese.constant_mae`).
    anchor_errors_deg : array_like
        The anchors' errors after the gauge, in degrees.

    Returns
    -------
    dict
        ``val_mae_ratio`` (``val_mae / constant_val_mae``), ``anchors_median_deg`` and
        ``warnings`` (one line each; empty when both checks pass: the ratio at most
        :data:`LEARNED_MAE_RATIO`, the anchors' median at most :data:`ANCHOR_WARNING_DEG`).
    """
    ratio = float(val_mae) / float(constant_val_mae)
    anchors = float(np.median(np.asarray(anchor_errors_deg, dtype=np.float64)))
    warnings = []
    if ratio > LEARNED_MAE_RATIO:
        warnings.append(
            f"the estimator learned little: validation MAE {val_mae:.3f} rad against {constant_val_mae:.3f} for "
            f"the best constant (ratio {ratio:.2f} > {LEARNED_MAE_RATIO}); train on more images or for more "
            "epochs (n_train, epochs), or refine from the reference with a global search (--refine with "
            "global_rounds)"
        )
    if anchors > ANCHOR_WARNING_DEG:
        warnings.append(
            f"the anchors (simulated images of known orientation, recovered with the stack) are {anchors:.1f}° off "
            f"(median, > {ANCHOR_WARNING_DEG:g}°) after the gauge: the stack's orientations are unlikely to be "
            "better; do not use them without a refinement that checks them (--refine)"
        )
    return {"val_mae_ratio": ratio, "anchors_median_deg": anchors, "warnings": warnings}


def _stack_params(stack: Dataset) -> CTFParams | None:
    return CTFParams.from_columns(stack.ctf, stack.n) if stack.ctf else None


def _signed_images(ctx) -> np.ndarray:
    sign = -1.0 if ctx["stack_model"].invert else 1.0
    return sign * ctx["stack"].images("raw")


def _shifts(ctx) -> dict:
    stack, config, model = ctx["stack"], ctx["config"], ctx["stack_model"]
    q = ctx["gauge"]["quaternions"]
    if config.shifts == "none":
        return {"shifts": np.zeros((stack.n, 2)), "scores": np.zeros(stack.n)}
    references = project(ctx["reference"], q, stack.image_size, "nufft")
    params = _stack_params(stack)
    if params is not None:
        references = apply_ctf(references, params, stack.pixel_size)
    shifts, scores = estimate_shifts(_signed_images(ctx), references, max_shift=3.0 * model.shift_sigma + 1.0)
    return {"shifts": shifts, "scores": scores}


def _volume(ctx) -> dict:
    stack, config = ctx["stack"], ctx["config"]
    images = center_images(_signed_images(ctx), ctx["shifts"]["shifts"])
    params = _stack_params(stack)
    kwargs = {"ctf": params, "pixel_size": stack.pixel_size} if params is not None else {}
    result = reconstruct(
        images,
        ctx["gauge"]["quaternions"],
        (stack.image_size,) * 3,
        "nufft",
        iterations=config.reconstruction_iterations,
        progress=ctx["progress"],
        **kwargs,
    )
    return {"volume": result.volume, "iterations": np.asarray(result.iterations)}


def _refinement(ctx) -> dict:
    stack = ctx["stack"]
    result = refine(
        _signed_images(ctx),
        ctx["gauge"]["quaternions"],
        ctx["shifts"]["shifts"],
        config=ctx["refine_config"],
        ctf=_stack_params(stack),
        pixel_size=stack.pixel_size,
        reference=ctx["reference"],  # the gauge put the poses in its frame
        progress=ctx["progress"],
    )
    return result.to_arrays()


def _stage_seconds(ctx, cache_dir: Path) -> dict:
    """How long each step took when its result was computed, this run or an earlier one.

    A rerun loads its stages from the cache in no time; the record should still say what they
    cost. Times are kept in ``cache_dir/timings.json`` under the identity of each result (its cache
    key, the training set's file, the estimator's run folder).
    """
    identity = {
        "match": ctx["keys"].get("model"),
        "simulate": Path(ctx["training_set"].path).name,
        "train": ctx["estimator"].key,
        "embed": ctx["keys"].get("features"),
        "recover": ctx["keys"].get("recovery"),
        "gauge": f"gauge-{ctx['keys'].get('recovery')}",
        "shifts": ctx["keys"].get("shifts"),
        "reconstruct": ctx["keys"].get("volume"),
    }
    if "refinement" in ctx:
        identity["refine"] = ctx["keys"].get("refinement")
    path = cache_dir / "timings.json"
    try:
        timings = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        timings = {}  # a damaged record of times only loses the times
    # The first computation's time stands: a step that found its result on disk (the training set's
    # file) runs again in no time. Training times come from the run's own history (the seconds of
    # its epochs, also for a run resumed or loaded from its folder).
    for step, seconds in ctx["seconds"].items():
        if step != "train":
            timings.setdefault(f"{step}:{identity[step]}", round(seconds, 2))
    timings[f"train:{identity['train']}"] = round(float(ctx["estimator"].result.history["seconds"][-1]), 2)
    save_text(json.dumps(timings, indent=1, sort_keys=True) + "\n", path)
    return {step: timings.get(f"{step}:{key}") for step, key in identity.items()}


def write_outputs(
    out_dir, stack, *, invert, signed_images, quaternions, shifts, volume, refined=None, refine_config=None
) -> dict:
    """Write ``particles.star`` and ``map.mrc`` (or, after a refinement, what
    :func:`cryo_orient.workflow.refine.write_refinement` writes) into ``out_dir``.

    ``signed_images()`` gives the stack's images in RELION's contrast; they are written to
    ``particles.mrcs`` when ``invert`` (RELION reads the contrast from the images, as after
    ``relion_preprocess --invert_contrast``), else the STAR file names the input's stacks.
    ``shifts`` None writes no origins. Returns the paths by role (``record``: where
    ``orient.json`` goes, written by the caller).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"star": out_dir / "particles.star", "map": out_dir / "map.mrc", "record": out_dir / "orient.json"}
    if invert:
        paths["stack"] = out_dir / "particles.mrcs"
        write_particle_stack(paths["stack"], signed_images(), stack.pixel_size)
        names = [f"{k + 1:06d}@particles.mrcs" for k in range(stack.n)]
    else:
        names = relative_image_names(stack, out_dir)
    if refined is None:
        write_particles(
            paths["star"],
            stack.metadata["star"],
            quaternions=quaternions,
            shifts=shifts,
            image_names=names,
            image_size=stack.image_size,
        )
        write_volume(paths["map"], volume, stack.pixel_size)
    else:
        written = write_refinement(
            out_dir, stack, refined, record={"config": refine_config.to_dict()}, image_names=names
        )
        paths |= {k: v for k, v in written.items() if k != "record"} | {"refine_record": written["record"]}
    return paths


def _key(*names):
    def key(ctx):
        return tuple(ctx["keys"][n] if n in ctx["keys"] else n for n in names) + (ctx["config"].to_dict(),)

    return key


STAGES = [
    Stage(
        "model",
        ("stack", "reference", "config"),
        _timed("match", _model),
        key=_key("stack", "reference"),
        log=_said("match"),
    ),
    Stage("stack_model", ("model",), _stack_model),
    Stage("training_set", ("stack_model", "config"), _timed("simulate", _training_set), log=_said("simulate")),
    Stage("views", ("training_set", "stack"), _views),
    Stage("estimator", ("views",), _timed("train", _estimator), log=_said("train")),
    Stage("anchor_index", ("views",), _anchor_index),
    Stage(
        "features",
        ("estimator", "views"),
        _timed("embed", _features),
        key=lambda ctx: (ctx["estimator"].key, ctx["views"]["stack"].cache_key, ctx["anchor_index"]),
        log=_said("embed"),
    ),
    Stage("recovery", ("features",), _timed("recover", _recovery), key=_key("features"), log=_said("recover")),
    Stage("gauge", ("recovery", "training_set"), _timed("gauge", _gauge), log=_said("gauge")),
    Stage(
        "shifts",
        ("gauge",),
        _timed("shifts", _shifts),
        key=_key("recovery", "stack", "reference"),
        log=_said("shifts"),
    ),
    Stage("volume", ("shifts",), _timed("reconstruct", _volume), key=_key("shifts"), log=_said("reconstruct")),
]

#: With ``refine``: local searches against gold-standard half maps from the gauge's poses and the
#: estimated shifts (:func:`cryo_orient.orientation.refine.refine`).
REFINE_STAGE = Stage(
    "refinement",
    ("shifts", "refine_config"),
    _timed("refine", _refinement),
    key=lambda ctx: _key("shifts")(ctx) + (ctx["refine_config"].to_dict(),),
    log=_said("refine"),
)


def refine_config_for(settings, shift_sigma: float) -> RefineConfig:
    """The refinement's settings for a stack whose offsets measure ``shift_sigma`` px (σ).

    The settings given are kept. The shift searches they leave unset reach
    :data:`SHIFT_REACH_SIGMAS` σ, and no less than :class:`RefineConfig`'s defaults: the local
    search's ``shift_range`` and, when there are global rounds, the global grid's
    ``global_shift_range``, whose ``global_shift_step`` is then a 4.5th of its reach (at least
    the default) unless set: the global search's cost grows with the number of its shifts, the
    square of reach / step. A global grid of any range > 0 is centred on the box
    (``global_shift_centre``) unless that is set.

    Measured on the mirror's ASPIRE 70S stack (offsets σ = 3 px): from zero origins (500
    particles), a 3 px local search left 2.46 px RMS shift error, 9 px 0.48 px; from orient's
    learned poses and fitted offsets (2,000 particles, 2 global rounds, a 9 px grid at 2 px), the
    grid around the fitted offsets left 1.92 px (a probe, not recorded), the grid around the box
    0.83 px (``make foreign PROFILE=cpu``).

    Parameters
    ----------
    settings : mapping
        :class:`RefineConfig` settings.
    shift_sigma : float
        Pixels: the standard deviation of the stack's offsets per axis (finite, >= 0).

    Returns
    -------
    RefineConfig
    """
    settings = dict(settings)
    given = RefineConfig.from_dict(settings)  # unknown or bad settings: one line, before anything else
    sigma = float(shift_sigma)
    if not (np.isfinite(sigma) and sigma >= 0):
        raise InputError(f"the stack's offset σ must be a finite number of pixels >= 0, got {shift_sigma!r}")
    default = RefineConfig()
    reach = float(np.ceil(SHIFT_REACH_SIGMAS * sigma))
    settings.setdefault("shift_range", max(default.shift_range, reach))
    if given.global_rounds > 0:
        if "global_shift_range" not in settings:
            settings["global_shift_range"] = max(default.global_shift_range, reach)
            settings.setdefault(
                "global_shift_step", max(default.global_shift_step, settings["global_shift_range"] / 4.5)
            )
        if settings["global_shift_range"] > 0:
            # orient's offsets are fitted against the recovered orientations: where those are
            # wrong, the offsets can lie farther from the truth than zero does.
            settings.setdefault("global_shift_centre", "box")
    return RefineConfig.from_dict(settings)


# --------------------------------------------------------------------------- the command


def orient(
    particles,
    reference,
    out_dir,
    *,
    config=None,
    angpix=None,
    reference_angpix=None,
    cache_dir=None,
    refine=None,
    progress=True,
    log=print,
) -> dict:
    """Recover the orientations (and offsets) of a RELION particle stack and reconstruct its map.

    Parameters
    ----------
    particles : path
        A RELION 3.0 - 5 particle STAR file (its stacks beside it, as its image names say).
    reference : path
        An MRC map of the particle (any voxel size: it is resampled to the stack's).
    out_dir : path
        Where ``particles.star``, ``map.mrc`` and ``orient.json`` go (created).
    config : OrientConfig or dict, optional
    angpix : float, optional
        The stack's pixel size in Å, in place of its STAR file's.
    reference_angpix : float, optional
        The reference's voxel size in Å, in place of its header's.
    cache_dir : path, optional
        The stage cache (default ``out_dir / "cache"``).
    refine : bool, dict or RefineConfig, optional
        Refine the poses after the shifts (a cached ``refinement`` stage,
        :func:`cryo_orient.orientation.refine.refine` with these settings; True: the defaults).
        Settings given as a dict (or True) have their shift searches sized to the stack's
        measured offsets unless they set them (:func:`refine_config_for`); a
        :class:`~cryo_orient.orientation.refine.RefineConfig` is used as it is.
        The refined angles, origins and map are then written, with ``rlnRandomSubset``,
        ``half1.mrc``, ``half2.mrc``, ``fsc.csv`` and ``refine.json``
        (:func:`cryo_orient.workflow.refine.write_refinement`).
    progress : bool
    log : callable
        Receives one line per stage.

    Returns
    -------
    dict
        ``quaternions``, ``shifts`` (``(dy, dx)`` px), ``volume``, ``record`` (what ``orient.json``
        holds) and ``paths``; with ``refine`` also ``refinement`` (the
        :class:`~cryo_orient.orientation.refine.RefinementResult`).
    """
    config = config if isinstance(config, OrientConfig) else OrientConfig.from_dict(dict(config or {}))
    # The settings given, checked now; those left unset are sized once the offsets are measured.
    refine_given = refine_settings(refine)
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    stack = read_particles(particles, angpix=angpix)
    if refine_given is not None:
        RefineConfig.from_dict(refine_given).check_images(stack.n)  # before any stage runs
    volume, reference_voxel = load_reference(reference, stack, reference_angpix)
    cache_dir.mkdir(parents=True, exist_ok=True)
    reference_path = cache_dir / f"reference-{digest(volume)}.mrc"
    if not reference_path.is_file():
        write_volume(reference_path, volume, stack.pixel_size)
    log(
        f"orient: {stack.n} particles of {stack.image_size} px at {stack.pixel_size:g} Å"
        f"{', with CTF' if stack.ctf else ', no CTF'} ({stack.metadata['format']}); reference {reference} "
        f"({reference_voxel:g} Å -> {stack.pixel_size:g} Å, box {stack.image_size})"
    )
    ctx = {
        "stack": stack,
        "reference": volume,
        "reference_path": reference_path,
        "config": config,
        "cache_dir": cache_dir,
        "progress": progress,
        "seconds": {},
        "keys": {"stack": stack.cache_key, "reference": digest(volume)},
    }
    cache = StageCache(cache_dir / "stages")
    ctx = run_stages(STAGES, ctx, cache, log=log)
    model = ctx["stack_model"]
    refine_config = None if refine_given is None else refine_config_for(refine_given, model.shift_sigma)
    if refine_config is not None:
        ctx = run_stages([REFINE_STAGE], ctx | {"refine_config": refine_config}, cache, log=log)
    log(
        f"  stack: contrast {'inverted' if model.invert else 'as RELION'} ({model.invert_choice}, correlation "
        f"{model.contrast_correlation:+.2f}), SNR {model.snr:.3g}, offsets σ {model.shift_sigma:.2f} px"
    )
    log(f"  {ctx['estimator'].log_line()}")
    anchor_errors = np.degrees(ctx["gauge"]["anchor_errors"])
    log(
        f"  recovery: loss {float(ctx['recovery']['losses'][-1]):.4f}; anchors' error after the gauge "
        f"median {np.median(anchor_errors):.1f}°, mean {np.mean(anchor_errors):.1f}°"
    )
    estimator_record = ctx["estimator"].describe()
    estimator_record["constant_val_mae"] = constant_mae(ctx["views"]["train"].split("val").quaternions)
    checks = quality(estimator_record["final_val_mae"], estimator_record["constant_val_mae"], anchor_errors)
    for line in checks["warnings"]:
        log(f"  warning: {line}")
    q, shifts, volume_out = ctx["gauge"]["quaternions"], ctx["shifts"]["shifts"], ctx["volume"]["volume"]
    refined = None
    if refine_config is not None:
        refined = RefinementResult.from_arrays(ctx["refinement"])
        for line in log_lines(refined):
            log(line)
        q, shifts, volume_out = refined.quaternions, refined.shifts, refined.volume

    paths = write_outputs(
        out_dir,
        stack,
        invert=model.invert,
        signed_images=lambda: _signed_images(ctx),
        quaternions=q,
        shifts=shifts if config.shifts == "estimate" else None,
        volume=volume_out,
        refined=refined,
        refine_config=refine_config,
    )
    record = {
        "particles": str(particles),
        "reference": str(reference),
        "n_particles": stack.n,
        "image_size": stack.image_size,
        "pixel_size": stack.pixel_size,
        "reference_voxel_size": reference_voxel,
        "ctf": bool(stack.ctf),
        "format": stack.metadata["format"],
        "config": config.to_dict(),
        "training": dataclasses.asdict(config.training(stack.image_size)),
        "stack_model": model.to_dict(),
        "estimator": estimator_record,
        "quality": checks,
        "recovery_final_loss": float(ctx["recovery"]["losses"][-1]),
        "anchors": {
            "n": int(len(anchor_errors)),
            "median_error_deg": float(np.median(anchor_errors)),
            "mean_error_deg": float(np.mean(anchor_errors)),
        },
        "shifts": {
            "estimated": config.shifts == "estimate",
            "rms_px": float(np.sqrt(np.mean(shifts**2))),
            "median_score": float(np.median(ctx["shifts"]["scores"])),
        },
        "seconds": {k: round(v, 2) for k, v in ctx["seconds"].items()},
        "stage_seconds": _stage_seconds(ctx, cache_dir),
        "refinement": None
        if refined is None
        else {
            "config": refine_config.to_dict(),
            "resolution_0.143": refined.resolution,
            "rounds": len(refined.log) - 1,
            "stop_reason": refined.stop_reason,
        },
        "outputs": {k: str(v) for k, v in paths.items()},
        "provenance": provenance(),
    }
    save_text(json.dumps(jsonable(record), indent=2, sort_keys=True) + "\n", paths["record"])
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in record["seconds"].items()) or "all cached"
    log(f"  wrote {paths['star']}, {paths['map']} ({timing})")
    out = {"quaternions": q, "shifts": shifts, "volume": volume_out, "record": record, "paths": paths}
    if refined is not None:
        out["refinement"] = refined
    return out
