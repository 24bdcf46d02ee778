"""Map-free orientations: ``cryo-orient orient PARTICLES.star --estimator DIR``.

The method with no reference map: a distance estimator trained beforehand (on other maps, with
``cryo-orient train-general``, or on any dataset with ``cryo-orient train``) embeds the stack,
the orientations are recovered from its distances (Eq. 4), and the map is reconstructed from
them: ab initio, with nothing of the particle known.

1. **contrast** – decided from the stack alone (:func:`cryo_orient.simulation.matching.blob_contrast`:
   its mean image is a bright central blob in RELION's convention), or given.
2. **embed** – the stack's images, contrast-fixed and CTF-corrected as the estimator's training
   images were (phase flipping when its on-the-fly training drew a CTF, else as
   ``ctf_correction`` says), resized to its input.
3. **recover** – Eq. 4 on the estimated distances of all pairs.
4. **reconstruct** – least squares with each image's CTF in the normal equations, the images as
   they are (no offsets are estimated without a reference: that is refinement's job).
5. **refine** (``refine=``) – local searches against gold-standard half maps that start from the
   half maps of the recovered orientations (:func:`cryo_orient.orientation.refine.refine` with
   no reference); it estimates the offsets.

No reference fixes the frame: the orientations (and the map) are those of the particle up to a
rotation, and up to the mirror image (the hand, which no projection data determine). Outputs are
those of :func:`cryo_orient.workflow.orient.orient`: ``particles.star``, ``map.mrc`` (or the
refinement's files) and ``orient.json``; every stage is cached under a key of its inputs in
``cache_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cryo_orient.artifacts import jsonable, provenance, save_text
from cryo_orient.data import read_particles
from cryo_orient.estimation.siamese import SiameseEstimator
from cryo_orient.orientation import recovery
from cryo_orient.orientation.refine import RefineConfig, RefinementResult, refine, refine_settings
from cryo_orient.simulation.matching import blob_contrast
from cryo_orient.tomography.ctf import CTFParams
from cryo_orient.tomography.reconstruct import reconstruct
from cryo_orient.validation import InputError
from cryo_orient.workflow.orient import OrientConfig, corrected, write_outputs
from cryo_orient.workflow.refine import log_lines
from cryo_orient.workflow.stages import Stage, StageCache, run_stages

__all__ = ["estimator_correction", "orient_map_free"]

#: OrientConfig settings the map-free path uses (the rest configure the training it does not do).
USED_SETTINGS = (
    "ctf_correction",
    "invert_contrast",
    "recovery_mode",
    "recovery_restarts",
    "recovery_max_steps",
    "reconstruction_iterations",
    "n_measure",
    "seed",
)


def estimator_correction(estimator_dir, config: OrientConfig) -> str:
    """The CTF correction the estimator's input needs: ``"phase_flip"`` for an on-the-fly run
    whose simulation drew a CTF (:func:`cryo_orient.estimation.onthefly.train_general` flips every
    batch), ``"none"`` for one that drew none, else ``config.ctf_correction``."""
    try:
        identity = json.loads((Path(estimator_dir) / "run.json").read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return config.ctf_correction  # SiameseEstimator.load says what is wrong with the folder
    if identity.get("trainer") == "train_general":
        return "phase_flip" if (identity.get("simulation") or {}).get("ctf") is not None else "none"
    return config.ctf_correction


def _signed(ctx) -> np.ndarray:
    return (-1.0 if ctx["invert"] else 1.0) * ctx["stack"].images("raw")


def _params(stack) -> CTFParams | None:
    return CTFParams.from_columns(stack.ctf, stack.n) if stack.ctf else None


def _timed(name, compute):
    def run(ctx):
        start = time.perf_counter()
        result = compute(ctx)
        ctx["seconds"][name] = time.perf_counter() - start
        return result

    return run


def _features(ctx) -> dict:
    view = corrected(ctx["stack"], ctx["correction"], invert=ctx["invert"])
    return {"stack": ctx["estimator"].embed(view, progress=ctx["progress"])}


def _recovery(ctx) -> dict:
    config = ctx["config"]
    features = ctx["features"]["stack"]
    return recovery.recover(
        ctx["estimator"].distance_function(features),
        len(features),
        mode=config.recovery_mode,
        restarts=config.recovery_restarts,
        max_steps=config.recovery_max_steps,
        rng=np.random.default_rng([config.seed, 10]),
        progress=ctx["progress"],
    ).as_arrays()


def _volume(ctx) -> dict:
    stack, params = ctx["stack"], _params(ctx["stack"])
    kwargs = {"ctf": params, "pixel_size": stack.pixel_size} if params is not None else {}
    result = reconstruct(
        _signed(ctx),
        ctx["recovery"]["quaternions"],
        (stack.image_size,) * 3,
        "nufft",
        iterations=ctx["config"].reconstruction_iterations,
        progress=ctx["progress"],
        **kwargs,
    )
    return {"volume": result.volume}


def _refinement(ctx) -> dict:
    stack = ctx["stack"]
    result = refine(
        _signed(ctx),
        ctx["recovery"]["quaternions"],
        None,
        config=ctx["refine_config"],
        ctf=_params(stack),
        pixel_size=stack.pixel_size,
        reference=None,  # no map: the first round searches the recovered poses' own half maps
        progress=ctx["progress"],
    )
    return result.to_arrays()


def _key(*names):
    def key(ctx):
        used = {k: getattr(ctx["config"], k) for k in USED_SETTINGS}
        return (*[ctx["keys"][n] for n in names], used)

    return key


STAGES = [
    Stage(
        "features",
        ("stack", "estimator", "invert", "correction", "progress"),
        _timed("embed", _features),
        key=lambda ctx: (
            "map-free features",
            ctx["estimator"].key,
            ctx["stack"].cache_key,
            ctx["invert"],
            ctx["correction"],
        ),
    ),
    Stage("recovery", ("features", "config"), _timed("recover", _recovery), key=_key("features")),
    Stage("volume", ("recovery", "stack", "invert"), _timed("reconstruct", _volume), key=_key("recovery")),
]

REFINE_STAGE = Stage(
    "refinement",
    ("recovery", "stack", "invert", "refine_config"),
    _timed("refine", _refinement),
    key=lambda ctx: _key("recovery")(ctx) + (ctx["refine_config"].to_dict(),),
)


def orient_map_free(
    particles,
    estimator,
    out_dir,
    *,
    config=None,
    angpix=None,
    cache_dir=None,
    refine=None,
    progress=True,
    log=print,
) -> dict:
    """Orientations and a map for a RELION particle stack, from a trained estimator and no map.

    Parameters
    ----------
    particles : path
        A RELION 3.0 - 5 particle STAR file (its stacks beside it, as its image names say).
    estimator : path
        A training run folder (``cryo-orient train-general`` or ``cryo-orient train``).
    out_dir : path
        Where ``particles.star``, ``map.mrc`` and ``orient.json`` go (created).
    config : OrientConfig or dict, optional
        Of its settings this path uses :data:`USED_SETTINGS` (none of the training's).
    angpix : float, optional
        The stack's pixel size in Å, in place of its STAR file's.
    cache_dir : path, optional
        The stage cache (default ``out_dir / "cache"``).
    refine : bool, dict or RefineConfig, optional
        Refine after the reconstruction (as :func:`cryo_orient.workflow.orient.orient`'s
        ``refine``, but from the recovered poses' own half maps).
    progress : bool
    log : callable

    Returns
    -------
    dict
        ``quaternions``, ``shifts``, ``volume``, ``record`` (``orient.json``), ``paths``; with
        ``refine`` also ``refinement``.
    """
    config = config if isinstance(config, OrientConfig) else OrientConfig.from_dict(dict(config or {}))
    given = refine_settings(refine)
    refine_config = None if given is None else RefineConfig.from_dict(given)
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    stack = read_particles(particles, angpix=angpix)
    if refine_config is not None:
        refine_config.check_images(stack.n)  # before any stage runs, not at the refinement
    model = SiameseEstimator.load(estimator)
    size = model.result.config.input_size
    if size > stack.image_size:
        raise InputError(
            f"the estimator takes {size} px images but the stack's are {stack.image_size} px; "
            "use an estimator trained at the stack's box or smaller"
        )
    correction = estimator_correction(estimator, config) if stack.ctf else "none"
    invert, correlation = blob_contrast(stack, invert=config.invert_contrast, n_images=config.n_measure)
    log(
        f"orient (map-free): {stack.n} particles of {stack.image_size} px at {stack.pixel_size:g} Å"
        f"{', with CTF' if stack.ctf else ', no CTF'}; estimator {estimator} ({model.log_line()}); contrast "
        f"{'inverted' if invert else 'as RELION'} ({config.invert_contrast}, blob correlation {correlation:+.2f}); "
        f"input correction {correction}"
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    ctx = {
        "stack": stack,
        "estimator": model,
        "invert": invert,
        "correction": correction,
        "config": config,
        "progress": progress,
        "seconds": {},
    }
    stages = STAGES
    if refine_config is not None:
        ctx["refine_config"] = refine_config
        stages = [*STAGES, REFINE_STAGE]
    ctx = run_stages(stages, ctx, StageCache(cache_dir / "map-free"), log=None)
    q, shifts, volume = ctx["recovery"]["quaternions"], None, ctx["volume"]["volume"]
    log(f"  recovery: loss {float(ctx['recovery']['losses'][-1]):.4f}")
    refined = None
    if refine_config is not None:
        refined = RefinementResult.from_arrays(ctx["refinement"])
        for line in log_lines(refined):
            log(line)
        q, shifts, volume = refined.quaternions, refined.shifts, refined.volume
    paths = write_outputs(
        out_dir,
        stack,
        invert=invert,
        signed_images=lambda: _signed(ctx),
        quaternions=q,
        shifts=shifts,
        volume=volume,
        refined=refined,
        refine_config=refine_config,
    )
    record = {
        "mode": "map-free",
        "particles": str(particles),
        "estimator": str(estimator),
        "estimator_run": model.describe(),
        "n_particles": stack.n,
        "image_size": stack.image_size,
        "pixel_size": stack.pixel_size,
        "ctf": bool(stack.ctf),
        "format": stack.metadata["format"],
        "config": {k: getattr(config, k) for k in USED_SETTINGS},
        "contrast": {"invert": invert, "choice": config.invert_contrast, "blob_correlation": correlation},
        "input_correction": correction,
        "recovery_final_loss": float(ctx["recovery"]["losses"][-1]),
        "frame": "the particle's up to a rotation and the hand (no reference)",
        "seconds": {k: round(v, 2) for k, v in ctx["seconds"].items()},
        "stage_keys": {k: v for k, v in ctx["keys"].items()},
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
    out = {"quaternions": q, "shifts": shifts, "volume": volume, "record": record, "paths": paths}
    if refined is not None:
        out["refinement"] = refined
    return out
