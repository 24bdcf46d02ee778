"""The distance-estimator interface, and the registry that chooses an estimator by name.

An estimator of the rotation distance ``d(q_i, q_j)`` between the orientations of two projections
works in three steps, which the pipeline calls in turn:

1. :meth:`DistanceEstimator.fit` on a dataset (trained estimators use its ``"train"`` and
   ``"val"`` splits; the others need nothing);
2. :meth:`DistanceEstimator.embed` the images whose orientations are to be recovered, once each,
   into one row of features per image;
3. :meth:`DistanceEstimator.distance_function` of those features: a function ``d(i, j)`` of index
   arrays that the recovery (:func:`cryo_orient.orientation.recovery.recover`) queries for as many
   pairs as it needs.

:attr:`DistanceEstimator.key` identifies the fitted estimator (what it was fitted on and with
which settings), so that the stages after it can be cached under it.

To add an estimator: subclass :class:`DistanceEstimator`, decorate it with :func:`register`,
import its module in ``cryo_orient/estimation/__init__.py``; the pipeline then takes its name as
``estimator``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np

from cryo_orient.data.dataset import Dataset
from cryo_orient.validation import InputError, InputTypeError

__all__ = ["ESTIMATORS", "DistanceEstimator", "make_estimator", "register"]

#: Estimator classes by name (filled by :func:`register`).
ESTIMATORS: dict[str, type[DistanceEstimator]] = {}


class DistanceEstimator(abc.ABC):
    """Estimates the rotation distance between the orientations of two projections."""

    #: The name the pipeline config chooses it by.
    name: str = ""

    @abc.abstractmethod
    def fit(self, dataset: Dataset, *, cache_dir=None, progress: bool = True) -> DistanceEstimator:
        """Fit on ``dataset`` (a trained estimator caches its run under ``cache_dir``); returns self."""

    @abc.abstractmethod
    def embed(self, dataset: Dataset, *, progress: bool = False) -> np.ndarray:
        """Features of every image of ``dataset``, one row per image."""

    @abc.abstractmethod
    def distance_function(self, features: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``d(i, j)``: the estimated distances between the images of rows ``i`` and ``j`` of ``features``."""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """A short string that changes whenever the fitted estimator's distances may change."""

    def describe(self) -> dict:
        """JSON-able facts about the fitted estimator, for summaries and logs."""
        return {"name": self.name, "key": self.key}

    def log_line(self) -> str:
        """One line that says what was fitted."""
        return f"estimator {self.name} ({self.key})"


def register(cls: type[DistanceEstimator]) -> type[DistanceEstimator]:
    """Class decorator: make an estimator available by its ``name``."""
    if not cls.name:
        raise InputTypeError(f"{cls.__name__} needs a class attribute `name` to be registered")
    ESTIMATORS[cls.name] = cls
    return cls


def make_estimator(name: str, **options) -> DistanceEstimator:
    """A new, unfitted estimator of the registered class ``name`` with ``options``."""
    if name not in ESTIMATORS:
        raise InputError(f"unknown distance estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    try:
        return ESTIMATORS[name](**options)
    except TypeError as err:
        raise InputError(f"estimator {name!r}: {err}") from None
