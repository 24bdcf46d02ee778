"""One Siamese estimator for many proteins: training on pairs simulated on the fly from a map library.

:func:`train_general` trains the model of :mod:`cryo_orient.estimation.siamese` (its encoder, its
heads, its compile) on batches that ``OnTheFlyPairs``, a Keras ``PyDataset`` (:func:`pair_dataset`), simulates when
Keras asks for them (:func:`cryo_orient.simulation.onthefly.simulate_pairs`: random maps of the
library, orientations, scale, CTF, shifts and noise; phase-flipped and standardised images).
Batch ``k`` of epoch ``e`` is drawn from ``default_rng([seed, 3, e, k])`` alone, so it is the same
whichever worker computes it and whenever: a killed run resumes from its last checkpoint with the
same numbers, and no file holds the training set. The validation set is simulated once, from
``default_rng([seed, 4, k])``, from the same library.

The run folder is :func:`cryo_orient.estimation.siamese.train`'s (the same code writes it):
``run.json`` (the run's identity: the :class:`~cryo_orient.estimation.siamese.TrainingConfig`,
the simulation settings, the maps' hashes; and the provenance), per-epoch atomic checkpoints,
``model.keras`` and ``history.csv``; :meth:`SiameseEstimator.load` loads it, and its ``embed``
takes any :class:`~cryo_orient.data.dataset.Dataset` (give it CTF-corrected images:
:func:`cryo_orient.workflow.orient.corrected`, as the training's are phase-flipped).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cryo_orient import validation
from cryo_orient.artifacts import provenance
from cryo_orient.estimation import siamese
from cryo_orient.estimation.siamese import TrainingConfig, TrainingResult
from cryo_orient.simulation.onthefly import MapLibrary, OnTheFlyConfig, PairBatch, simulate_pairs
from cryo_orient.validation import InputError, InputTypeError

__all__ = ["TRAIN_STREAM", "VALIDATION_STREAM", "pair_dataset", "pairs_class", "train_general", "validation_pairs"]

#: The seed-sequence entries of the training batches and of the validation set.
TRAIN_STREAM = 3
VALIDATION_STREAM = 4

_CLASSES = {}


def pairs_class():
    """The ``PyDataset`` subclass, defined on first use so that importing this module does not
    import Keras (seconds, and an optional extra)."""
    if "OnTheFlyPairs" not in _CLASSES:
        keras = siamese._keras()

        class OnTheFlyPairs(keras.utils.PyDataset):
            """``steps`` batches of ``batch_size`` pairs, batch ``k`` from ``(seed, epoch, k)`` alone.

            ``batch(k)`` is the whole :class:`~cryo_orient.simulation.onthefly.PairBatch` (the
            orientations, maps, pixel sizes... of the labels); indexing gives Keras'
            ``((images_a, images_b), labels)`` with a channel axis. ``workers`` and
            ``use_multiprocessing`` go to Keras: any worker computes the same batch ``k``.
            """

            def __init__(self, library, simulation, *, size, batch_size, steps, seed, epoch, stream, **kwargs):
                super().__init__(**kwargs)
                self.library, self.simulation = library, simulation
                self.size, self.batch_size, self.steps = int(size), int(batch_size), int(steps)
                self.seed, self.epoch, self.stream = int(seed), int(epoch), int(stream)

            def __len__(self):
                return self.steps

            def batch(self, index) -> PairBatch:
                if not 0 <= index < self.steps:
                    raise IndexError(f"batch {index} of {self.steps}")
                rng = np.random.default_rng([self.seed, self.stream, self.epoch, int(index)])
                return simulate_pairs(self.library, self.batch_size, self.size, self.simulation, rng=rng)

            def __getitem__(self, index):
                b = self.batch(index)
                return (b.images_a[..., None], b.images_b[..., None]), b.labels

        _CLASSES["OnTheFlyPairs"] = OnTheFlyPairs
    return _CLASSES["OnTheFlyPairs"]


def pair_dataset(
    library: MapLibrary,
    simulation=None,
    *,
    size: int,
    batch_size: int,
    steps: int,
    seed: int = 0,
    epoch: int = 1,
    stream: int = TRAIN_STREAM,
    workers: int = 1,
    use_multiprocessing: bool = False,
):
    """An ``OnTheFlyPairs`` (a ``keras.utils.PyDataset``) of ``steps`` batches of simulated pairs.

    Parameters
    ----------
    library : MapLibrary
        The maps.
    simulation : OnTheFlyConfig or dict, optional
        What each batch draws (default :class:`~cryo_orient.simulation.onthefly.OnTheFlyConfig()`).
    size, batch_size, steps : int
        Image side (the model's input size), pairs per batch, batches per epoch.
    seed, epoch, stream : int
        Batch ``k`` is simulated from ``default_rng([seed, stream, epoch, k])``.
    workers, use_multiprocessing : int, bool
        Keras' parallel batch production (deterministic: a batch depends on its index only).
    """
    if not isinstance(library, MapLibrary):
        raise InputTypeError(f"library must be a MapLibrary, got {type(library).__name__}")
    simulation = _simulation_config(simulation)
    for name, value in (("size", size), ("batch_size", batch_size), ("steps", steps), ("workers", workers)):
        validation.integer(value, name, 1)
    validation.integer(seed, "seed", 0)
    return pairs_class()(
        library,
        simulation,
        size=size,
        batch_size=batch_size,
        steps=steps,
        seed=seed,
        epoch=epoch,
        stream=stream,
        workers=workers,
        use_multiprocessing=bool(use_multiprocessing),
    )


def _simulation_config(simulation) -> OnTheFlyConfig:
    if isinstance(simulation, OnTheFlyConfig):
        return simulation
    return OnTheFlyConfig.from_dict(dict(simulation or {}))


def validation_pairs(library: MapLibrary, n_pairs: int, size: int, simulation=None, *, seed=0, batch_size=256):
    """The fixed validation set: ``n_pairs`` pairs simulated once, in batches of ``batch_size``
    from ``default_rng([seed, VALIDATION_STREAM, k])``; returns ``(images_a, images_b, labels)``."""
    simulation = _simulation_config(simulation)
    n_pairs = validation.integer(n_pairs, "n_val_pairs", 2)
    parts = []
    for k, start in enumerate(range(0, n_pairs, batch_size)):
        rng = np.random.default_rng([seed, VALIDATION_STREAM, k])
        parts.append(simulate_pairs(library, min(batch_size, n_pairs - start), size, simulation, rng=rng))
    return tuple(np.concatenate([getattr(p, f) for p in parts]) for f in ("images_a", "images_b", "labels"))


def _pair_metrics(encoder, images_a, images_b, labels, kind, batch_size) -> dict:
    features_a = siamese.embed(encoder, images_a, batch_size=batch_size, progress=False)
    features_b = siamese.embed(encoder, images_b, batch_size=batch_size, progress=False)
    return siamese._error_metrics(siamese.feature_distances(features_a, features_b, kind), labels)


def train_general(
    maps,
    config=None,
    out_dir=None,
    *,
    n_pseudo_molecules: int = 0,
    simulation=None,
    steps_per_epoch: int = 100,
    n_val_pairs: int = 512,
    workers: int = 1,
    progress: bool = True,
) -> TrainingResult:
    """Train one Siamese distance estimator on pairs simulated on the fly from a library of maps.

    Parameters
    ----------
    maps : MapLibrary or sequence of str
        The library, or the names (:data:`cryo_orient.data.REGISTRY`) and MRC paths of its maps.
    config : TrainingConfig or dict, optional
        The network and its training (:class:`~cryo_orient.estimation.siamese.TrainingConfig`;
        ``batch_size`` is pairs per step). The pairs are drawn with a flat ``d_q`` histogram, so
        the run records ``regime = "uniform"``; ``"batch"`` (all pairs of a batch of images of
        one map) is not offered, and ``pair_fraction`` has no use.
    out_dir : path, optional
        The run folder (as :func:`cryo_orient.estimation.siamese.train`'s: an unfinished run of
        the same identity resumes from its checkpoint, a finished one is loaded, another one is
        an error). None: train in memory only.
    n_pseudo_molecules : int
        Pseudo-molecules added to ``maps`` (ignored when ``maps`` is a :class:`MapLibrary`),
        seeded by ``config.seed``.
    simulation : OnTheFlyConfig or dict, optional
        What each batch draws.
    steps_per_epoch : int
        Batches an epoch.
    n_val_pairs : int
        Pairs of the fixed validation set.
    workers : int
        Keras workers producing batches (threads; the numbers do not depend on it).
    progress : bool
        A progress bar over epochs.

    Returns
    -------
    TrainingResult
    """
    keras = siamese._keras()
    config = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(dict(config or {}))
    if config.regime == "batch":
        raise InputError('train_general trains on pairs; use regime "uniform" (the default here), not "batch"')
    config = dataclasses.replace(config, regime="uniform")
    simulation = _simulation_config(simulation)
    steps_per_epoch = validation.integer(steps_per_epoch, "steps_per_epoch", 1)
    workers = validation.integer(workers, "workers", 1)
    library = (
        maps
        if isinstance(maps, MapLibrary)
        else MapLibrary(maps, n_pseudo_molecules=n_pseudo_molecules, seed=config.seed)
    )

    val_a, val_b, val_labels = validation_pairs(
        library, n_val_pairs, config.input_size, simulation, seed=config.seed, batch_size=config.batch_size
    )
    identity = {
        "config": config.to_dict(),
        "trainer": "train_general",
        "simulation": simulation.to_dict(),
        "library": library.fingerprints,
        "steps_per_epoch": steps_per_epoch,
        "val_data": siamese._fingerprint(val_a, val_b, val_labels),
        "keras_backend": keras.backend.backend(),
    }
    pairs_per_epoch = steps_per_epoch * config.batch_size

    def epoch_data(epoch):
        data = pair_dataset(
            library,
            simulation,
            size=config.input_size,
            batch_size=config.batch_size,
            steps=steps_per_epoch,
            seed=config.seed,
            epoch=epoch,
            workers=workers,
        )
        return data, pairs_per_epoch, 2 * pairs_per_epoch

    def validate(encoder):
        return _pair_metrics(encoder, val_a, val_b, val_labels, config.feature_distance, config.batch_size)

    def loop(history, fit_model, done_reason, folder, *, state):
        return siamese._epoch_loop(
            config,
            history,
            fit_model,
            done_reason,
            folder,
            state=state,
            epoch_data=epoch_data,
            validate=validate,
            progress=progress,
            desc="training (on the fly)",
        )

    record = {"provenance": provenance(seed=config.seed, trainer="train_general")}
    return siamese._run_training(config, identity, out_dir, loop, record=record)
