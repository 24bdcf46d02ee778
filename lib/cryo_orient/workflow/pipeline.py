"""The whole method on one simulated dataset, stage by stage, each stage cached.

simulate (done before, :mod:`cryo_orient.simulation.simulate`) → train the distance estimator → embed the
test split → recover its orientations → align them to the truth (evaluation) and, separately,
choose their gauge from the projections alone → reconstruct → FSC against the true map.

Reconstructions use the test split's projections: the *clean* ones (the paper reconstructed
from noiseless projections even for its σ² = 16 runs) and the *noisy* ones (what a user has).
They are computed on the detector's cube (``size³``: the box a user would reconstruct in; the
gauge-free volume may come out rotated, so the map's own box would not hold it), then resampled
onto the true map's grid to compute the FSC: identity for orientations expressed in the true
frame, the rigid motion (rotation, possibly with a mirror) found from the orientations and
polished on the map for the gauge-free volume.

Every stage's result is stored under a key of its inputs in ``cache_dir``: a re-run with the
same inputs loads it, a changed input recomputes what depends on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from cryo_orient.orientation import alignment, gauge, recovery

from cryo_orient.tomography import fsc, projection, reconstruct

from cryo_orient.geometry import rotations, volumes

from cryo_orient.estimation import siamese

from cryo_orient.simulation import simulate

from cryo_orient.data import splits
from cryo_orient.artifacts import atomic_output, jsonable

__all__ = ["PipelineConfig", "raw_images", "reconstruct_on_map", "run_case", "split_projections"]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of every stage after simulation (unknown keys in :meth:`from_dict` are errors)."""

    training: dict = dataclasses.field(default_factory=dict)
    fresh_noise: bool = False
    recovery_mode: str = "improved"
    recovery_restarts: int = 3
    recovery_max_steps: int = 20000
    reconstruction_iterations: int = 100
    reconstruction_backend: str = "nufft"
    gauge_images: int = 400
    gauge_pairs: int = 4000
    gauge_candidates: int = 3000
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "PipelineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown pipeline config key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
            h.update(str((part.dtype, part.shape)).encode())
        else:
            h.update(json.dumps(jsonable(part), sort_keys=True).encode())
    return h.hexdigest()[:20]


def _cached_arrays(path: Path, compute):
    """Load ``path`` (.npz) if present, else save what ``compute()`` returns (dict of arrays)."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            pass  # a corrupt (e.g. truncated) cache entry is recomputed
    value = compute()
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **value)
    return value


def raw_images(dataset: dict, index, which: str) -> np.ndarray:
    """Raw (unstandardised) ``"noisy"`` or ``"clean"`` projections of the images ``index``.

    The clean ones are the stored ``clean`` array or, for a dataset without noise and shifts, its
    projections themselves. Shifted noisy images are refused: no stage estimates shifts.
    """
    attrs, shifted = dataset["attrs"], bool(np.any(dataset["shifts"]))
    if which not in ("noisy", "clean"):
        raise ValueError(f"which must be 'noisy' or 'clean', got {which!r}")
    if which == "noisy":
        if shifted:
            raise ValueError("the dataset's projections are shifted, and no stage here (as in the paper) estimates "
                             "shifts: reconstructing from them would blur the map; use its clean projections "
                             "(store_clean = true) or a dataset without shifts")
        mean, std = float(attrs["standardization_mean"]), float(attrs["standardization_std"])
        return dataset["projections"][index].astype(np.float64) * std + mean
    if "clean" in dataset:
        return dataset["clean"][index].astype(np.float64)
    if float(attrs["noise_variance"] or 0) == 0 and not shifted:
        return raw_images(dataset, index, "noisy")
    raise ValueError("the dataset has no clean projections; simulate it with store_clean = true to reconstruct "
                     "from noiseless images" + ("" if shifted else ", or use its noisy images"))


def split_projections(dataset: dict):
    """The test split's indices and its raw clean and noisy projections (see :func:`raw_images`)."""
    _, _, test = splits.train_val_test_split(len(dataset["quaternions"]))
    test = np.sort(test)
    noisy = raw_images(dataset, test, "noisy")
    return test, raw_images(dataset, test, "clean"), noisy


def _volume(dataset):
    config = simulate.SimulationConfig.from_dict(dataset["attrs"]["config"])
    volume, voxel_size, _ = simulate._volume_source(config)
    return np.asarray(volume, dtype=np.float64), float(voxel_size) if voxel_size else 1.0


def run_case(dataset_path, config, *, cache_dir, progress=True, log=print) -> dict:
    """Run every stage on one dataset; return orientations, volumes, FSC curves and numbers.

    Parameters
    ----------
    dataset_path : path
        A simulated dataset (:func:`cryo_orient.simulation.simulate.simulate_dataset`), P projections.
    config : PipelineConfig or dict
    cache_dir : path
        Where stages are cached (the estimator under ``siamese/``, the rest under ``pipeline/``).
    progress : bool
        Progress bars for the long stages.
    log : callable
        Receives one line per finished stage.

    Returns
    -------
    dict
        ``q_true``, ``q_recovered``, ``q_aligned``, ``q_gauge`` (test split), ``losses`` (L_OR per
        step), ``errors`` (per-orientation error after alignment), ``volumes`` (name → volume on
        the map grid), ``cube_volumes`` (name → reconstruction on the detector cube), ``fsc``
        (name → :class:`cryo_orient.tomography.fsc.FSCResult`), ``summary`` (JSON-able numbers), the true map
        and its voxel size.
    """
    config = config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(dict(config))
    cache = Path(cache_dir)
    data = simulate.load_dataset(dataset_path)
    training = siamese.TrainingConfig.from_dict(config.training)
    # Fresh noise only where there is noise to redraw: a noiseless dataset keeps its cached run.
    fresh = bool(config.fresh_noise) and float(data["attrs"]["noise_variance"] or 0) > 0
    run = siamese.train_on_dataset(data, training, cache_dir=cache / "siamese", fresh_perturbation=fresh,
                                   progress=progress)
    log(f"estimator: {run.epochs} epochs{' (fresh noise every batch)' if fresh else ''}, "
        f"val MAE {run.history['val_mae'][-1]:.3f} ({run.out_dir})")

    test, clean, noisy = split_projections(data)
    q_true = data["quaternions"][test]
    n = len(test)
    stage_dir = cache / "pipeline"

    features = siamese.embed(run.model, siamese.resize_images(data["projections"][test], training.input_size),
                             progress=False)
    # The estimator's run folder is named by a hash of its dataset, config and perturbation.
    recovery_key = _digest("recovery", Path(run.out_dir).name, data["attrs"]["cache_key"], test,
                           config.recovery_mode, config.recovery_restarts, config.recovery_max_steps, config.seed)

    def recover():
        result = recovery.recover(siamese.distance_function(features, training.feature_distance), n,
                                  mode=config.recovery_mode, restarts=config.recovery_restarts,
                                  max_steps=config.recovery_max_steps, rng=np.random.default_rng([config.seed, 10]),
                                  progress=progress)
        return {"quaternions": result.quaternions, "losses": result.losses,
                "seconds": np.array(result.seconds), "final_loss": np.array(result.final_loss)}

    rec = _cached_arrays(stage_dir / f"recovery-{recovery_key}.npz", recover)
    q_rec = rec["quaternions"]
    aligned = alignment.align(q_true, q_rec)
    log(f"recovery: L_OR {float(rec['final_loss']):.4f}, E_OR mean {aligned.mean_error:.3f} / "
        f"median {aligned.median_error:.3f} rad")

    # Pairs for the loss at the truth: how well the estimated distances fit the true orientations.
    pair_rng = np.random.default_rng([config.seed, 11])
    i, j = pair_rng.integers(0, n, size=(2, 200_000))
    d_p = siamese.feature_distances(features[i], features[j], training.feature_distance)
    d_q = rotations.distance(q_true[i], q_true[j])

    gauge_key = _digest("gauge", recovery_key, config.gauge_images, config.gauge_pairs, config.gauge_candidates,
                        config.seed, noisy)

    def choose():
        choice = gauge.choose_gauge(noisy, q_rec, n_images=config.gauge_images, n_pairs=config.gauge_pairs,
                                    n_candidates=config.gauge_candidates,
                                    rng=np.random.default_rng([config.seed, 12]), progress=progress)
        return {"quaternions": choice.quaternions, "left": choice.left, "conjugated": np.array(choice.conjugated),
                "score": np.array(choice.score), "score_q": np.array(choice.branch_scores["q"]),
                "score_conjugate": np.array(choice.branch_scores["conjugate"])}

    chosen = _cached_arrays(stage_dir / f"gauge-{gauge_key}.npz", choose)
    q_gauge = chosen["quaternions"]
    frame = gauge.volume_frame(alignment.align(q_true, q_gauge))
    log(f"gauge from common lines: conjugate branch {bool(chosen['conjugated'])}, distance of the chosen left "
        f"factor from a consistent one {frame['gauge_error']:.3f} rad, mirrored volume {frame['mirrored']}")

    truth, voxel_size = _volume(data)
    size = clean.shape[-1]
    cube = (size, size, size)
    attrs_config = data["attrs"]["config"]
    q_random = rotations.sample_orientations(n, "uniform_euler", attrs_config["coverage"], attrs_config["offset"],
                                             rng=np.random.default_rng([config.seed, 13]))
    backend = projection.resolve_backend(config.reconstruction_backend)
    sets = {
        "truth": (clean, q_true),
        "truth_noisy_images": (noisy, q_true),  # what the noise alone costs
        "random": (clean, q_random),
        "recovered": (clean, aligned.aligned),
        "recovered_noisy_images": (noisy, aligned.aligned),
        "gauge": (clean, q_gauge),
        "gauge_noisy_images": (noisy, q_gauge),
    }
    cube_volumes, volumes_on_map, curves, seconds = {}, {}, {}, {}
    for name, (images, q) in sets.items():
        volume, seconds[name] = _cached_volume(images, q, config, backend, stage_dir, progress)
        cube_volumes[name] = volume
        if name.startswith("gauge"):
            M, _ = volumes.refine_alignment(volume, truth, frame["matrix"])
        else:
            M = np.eye(3)
        volumes_on_map[name] = volumes.transform_volume(volume, M, truth.shape)
        curves[name] = fsc.fsc(volumes_on_map[name], truth, voxel_size)
        s = curves[name].summary()
        log(f"reconstruction '{name}': FSC 0.5 at {s['resolution_0.5']:.1f} Å, 0.143 at {s['resolution_0.143']:.1f} Å")

    summary = {
        "n_test": int(n),
        "estimator": {"run_dir": str(run.out_dir), "epochs": run.epochs, "seconds": run.seconds, "fresh_noise": fresh,
                      "final_train_loss": run.history["loss"][-1], "final_val_mae": run.history["val_mae"][-1]},
        "test_pair_mae": float(np.mean(np.abs(d_p - d_q))),
        "L_at_true_orientations": float(np.mean((d_p - d_q) ** 2)),
        "L_OR": float(rec["final_loss"]), "recovery_steps": int(len(rec["losses"])),
        "recovery_seconds": float(rec["seconds"]),
        "E_OR_mean": aligned.mean_error, "E_OR_median": aligned.median_error, "reflected": aligned.reflected,
        "gauge": {"conjugated": bool(chosen["conjugated"]), "score": float(chosen["score"]),
                  "score_q": float(chosen["score_q"]), "score_conjugate": float(chosen["score_conjugate"]),
                  "gauge_error": frame["gauge_error"], "mirrored": frame["mirrored"],
                  "needed_reflection": frame["reflected"]},
        "voxel_size": voxel_size, "reconstruction_box": list(cube), "reconstruction_backend": backend,
        "reconstruction_seconds": seconds,
        "fsc": {name: curve.summary() for name, curve in curves.items()},
    }
    return {"q_true": q_true, "q_recovered": q_rec, "q_aligned": aligned.aligned, "q_gauge": q_gauge,
            "losses": rec["losses"], "errors": aligned.errors, "volumes": volumes_on_map,
            "cube_volumes": cube_volumes, "fsc": curves, "summary": summary, "truth": truth,
            "voxel_size": voxel_size, "test_indices": test}


def reconstruct_on_map(images, quaternions, config, truth, voxel_size, *, cache_dir, progress=False) -> dict:
    """Reconstruct from ``images`` at ``quaternions`` given in the true map's frame, as :func:`run_case`
    does for its ``"recovered"`` volumes, and compare the result with the true map.

    For orientations from elsewhere (another method's, aligned to the truth): the same box (the
    detector's cube), solver, iterations, backend and cache key as :func:`run_case`'s
    reconstructions (cached as ``volume-<key>.npz`` in ``cache_dir``), placed on the map's grid by
    the identity, FSC in one-voxel shells. Returns ``volume`` (the cube), ``volume_on_map``,
    ``fsc`` (:class:`cryo_orient.tomography.fsc.FSCResult`) and ``seconds`` (of the reconstruction when it ran).
    """
    config = config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(dict(config))
    backend = projection.resolve_backend(config.reconstruction_backend)
    volume, seconds = _cached_volume(np.asarray(images, dtype=np.float64), quaternions, config, backend,
                                     Path(cache_dir), progress)
    on_map = volumes.transform_volume(volume, np.eye(3), np.shape(truth))
    return {"volume": volume, "volume_on_map": on_map, "fsc": fsc.fsc(on_map, truth, voxel_size),
            "seconds": seconds}


def _cached_volume(images, quaternions, config, backend, cache_dir, progress) -> tuple[np.ndarray, float]:
    """The least-squares volume in the detector's cube (cached under a key of its inputs) and the
    seconds its reconstruction took when it ran."""
    size = images.shape[-1]
    cube = (size, size, size)
    key = _digest("reconstruction", images, quaternions, cube, config.reconstruction_iterations, backend)

    def build():
        result = reconstruct.reconstruct(images, quaternions, cube, backend, iterations=config.reconstruction_iterations,
                                         tol=0.0, progress=progress)
        return {"volume": result.volume.astype(np.float32), "seconds": np.array(result.seconds)}

    arrays = _cached_arrays(Path(cache_dir) / f"volume-{key}.npz", build)
    return arrays["volume"].astype(np.float64), float(arrays["seconds"])


def _map_origin(dataset) -> np.ndarray:
    """Header origin ``(x, y, z)`` in Å of the dataset's true map."""
    import mrcfile

    from cryo_orient import data

    name = dataset["attrs"]["config"]["volume"]
    path = data.map_file(name, progress=False) if name in data.REGISTRY else Path(name)
    with mrcfile.open(path, header_only=True) as m:
        o = m.header.origin
        return np.array([float(o.x), float(o.y), float(o.z)])


def write_outputs(result: dict, dataset_path, out_dir) -> list[Path]:
    """Write a case's volumes as MRC files and its orientations as RELION STAR files.

    ``<name>.mrc`` for every reconstruction on the true map's grid (the map's voxel size and
    origin, so it overlays the map in Chimera); ``gauge_as_reconstructed.mrc``, the gauge-free
    volume on the detector cube as it came out (possibly rotated or mirrored: no ground truth
    touched it), centred on the same point; ``orientations_aligned.star`` and
    ``orientations_gauge.star`` for the test projections (RELION convention, see
    :mod:`cryo_orient.data.relion`).
    """
    from cryo_orient import data
    from cryo_orient.data import relion

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = simulate.load_dataset(dataset_path, projections=False)
    voxel = result["voxel_size"]
    origin = _map_origin(dataset)
    written = []
    for name, volume in result["volumes"].items():
        written.append(data.write_volume(out / f"{name}.mrc", volume.astype(np.float32), voxel, origin=origin))
    cube = result["cube_volumes"]["gauge"]
    shift = (np.array(result["truth"].shape)[::-1] // 2 - np.array(cube.shape)[::-1] // 2) * voxel
    written.append(data.write_volume(out / "gauge_as_reconstructed.mrc", cube.astype(np.float32), voxel,
                                     origin=origin + shift))
    size = int(dataset["attrs"]["config"]["size"] or cube.shape[0])
    for name, q in (("aligned", result["q_aligned"]), ("gauge", result["q_gauge"])):
        written.append(relion.write_star(out / f"orientations_{name}.star", q, pixel_size=voxel, image_size=size))
    return written
