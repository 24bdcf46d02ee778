"""A trained estimator used as it is: the run folder of ``cryo-orient train-general`` (or
``cryo-orient train``) on any dataset, without training on it.

``PipelineConfig(estimator="pretrained", estimator_options={"path": DIR})`` runs the whole pipeline
with it: an estimator trained on other maps recovers the orientations of a protein it has never
seen (the leave-one-out experiment of ``experiments/generalization.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryo_orient.data.dataset import Dataset
from cryo_orient.estimation.base import DistanceEstimator, register
from cryo_orient.estimation.siamese import SiameseEstimator
from cryo_orient.validation import InputError

__all__ = ["PretrainedEstimator"]


@register
class PretrainedEstimator(DistanceEstimator):
    """The Siamese estimator of a finished run folder; :meth:`fit` loads it and trains nothing.

    Parameters
    ----------
    path : path
        The run folder (``run.json``, ``model.keras`` or a checkpoint, ``history.csv``).
    """

    name = "pretrained"

    def __init__(self, path=None):
        if path is None:
            raise InputError(
                "estimator 'pretrained' needs estimator_options.path: a training run folder "
                "(cryo-orient train-general --out DIR)"
            )
        self.path = Path(path)
        self.model: SiameseEstimator | None = None

    def fit(self, dataset: Dataset, *, cache_dir=None, progress: bool = True) -> PretrainedEstimator:
        self.model = SiameseEstimator.load(self.path)
        return self

    def _loaded(self) -> SiameseEstimator:
        if self.model is None:
            raise InputError("the pretrained estimator is not loaded yet; call fit(dataset) first")
        return self.model

    def embed(self, dataset: Dataset, *, progress: bool = False):
        return self._loaded().embed(dataset, progress=progress)

    def distance_function(self, features):
        return self._loaded().distance_function(features)

    @property
    def key(self) -> str:
        """Of the run's identity and history (what was trained, for how long): two folders holding
        the same run have the same key, a run trained further has another."""
        run = self._loaded().result
        h = hashlib.sha256((self.path / "run.json").read_bytes())
        h.update(repr((run.epochs, run.history["loss"][-1], run.history["val_mae"][-1])).encode())
        return f"pretrained-{h.hexdigest()[:16]}"

    def describe(self) -> dict:
        return {"name": self.name, "key": self.key, "path": str(self.path), **self._loaded().describe()}

    def log_line(self) -> str:
        return f"pretrained {self._loaded().log_line()}"
