"""Distances from the true orientations: exact, or with Gaussian errors (the paper's Fig. 7 and 14).

They stand in for a learned estimator where the question is the recovery alone: how well
orientations are recovered from distances of a known quality. :func:`exact_distances` and
:func:`perturbed_distances` return callables ``d(i, j)`` for
:func:`cryo_orient.orientation.recovery.recover`; :class:`ExactDistances` and
:class:`PerturbedDistances` are the same as estimators of :mod:`cryo_orient.estimation.base`, so
the pipeline can run on them by name (``estimator = "exact"`` or ``"perturbed"``).
"""

from __future__ import annotations

import numpy as np

from cryo_orient import validation
from cryo_orient.data.dataset import Dataset
from cryo_orient.estimation.base import DistanceEstimator, register
from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError, InputTypeError, as_rng

__all__ = ["ExactDistances", "PerturbedDistances", "exact_distances", "perturbed_distances"]


def exact_distances(q):
    """Distances from known orientations, as a callable for :func:`cryo_orient.orientation.recovery.recover`.

    Parameters
    ----------
    q : array_like, shape (n, 4)
        Orientations ``(x, y, z, w)``; copied and normalised, so later changes to ``q`` have no
        effect.

    Returns
    -------
    callable
        ``f(i, j) -> rotations.distance(q[i], q[j])`` for integer index arrays of equal shape.
    """
    q = rotations.as_unit_quaternions(q)
    n = len(q)

    def exact(i, j):
        i, j = validation.index_pairs(i, j, n)
        return rotations.distance(q[i], q[j])

    return exact


# splitmix64 constants (Steele, Lea & Flood 2014): a bijective 64-bit mixer whose outputs pass
# BigCrush, so hashing the pair index gives independent-looking uniform bits per pair.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x):
    # Wrap-around uint64 arithmetic is intended (NumPy does not warn on arrays).
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _pair_normal(i, j, seed):
    """A standard normal value per unordered pair {i, j}, a pure function of (pair, seed)."""
    shape = np.shape(i)
    # Arrays, never NumPy scalars, whose wrap-around would warn about overflow.
    lo = np.atleast_1d(np.minimum(i, j)).astype(np.uint64)
    hi = np.atleast_1d(np.maximum(i, j)).astype(np.uint64)
    # Indices below 2^32 (n <= 4e9) make (lo, hi) -> key injective.
    key = (lo << np.uint64(32)) | hi
    h1 = _splitmix64(key ^ np.uint64(seed))
    h2 = _splitmix64(h1)
    # Top 53 bits -> u1 in (0, 1] (log never sees 0) and u2 in [0, 1); then Box-Muller.
    scale = 2.0**-53
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 1.0) * scale
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * scale
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).reshape(shape)


def perturbed_distances(q, sigma, *, redrawn=True, rng=None, clip=None):
    """True distances plus Gaussian errors, as a callable for :func:`cryo_orient.orientation.recovery.recover` (Fig. 7).

    Parameters
    ----------
    q : array_like, shape (n, 4)
        True orientations ``(x, y, z, w)`` (copied).
    sigma : float
        Standard deviation of the error, in radians. (Fig. 7's axis says "sigma^2", but the
        paper's code passes this value as ``stddev``; README section 2, Fig. 7.)
    redrawn : bool, optional
        ``True`` (the paper's way): ``d_q + N(0, sigma^2)`` drawn anew at every call, so the same
        pair gets a different value each time it is sampled and the errors average out over
        training; the optimum stays at the truth and the final loss is about ``sigma^2``.
        ``False`` (realistic, like a learned estimator): one fixed error per unordered pair, the
        same every time ``(i, j)`` or ``(j, i)`` is queried. It is a deterministic hash of
        ``(min(i, j), max(i, j), seed)`` mapped to a Gaussian, so no ``n x n`` table is stored
        and it works for n = 100,000 and beyond.
    rng : numpy.random.Generator, int or None, optional
        Source of the redrawn errors (used at every call, in order), or of the one seed of the
        fixed errors (drawn here, once).
    clip : bool or None, optional
        Clip the result to ``[0, pi]``. ``None`` (default): ``False`` when ``redrawn`` (as the
        paper, whose perturbed distances can be negative), ``True`` otherwise, since a real
        estimator returns distances in ``[0, pi]`` (clipping biases the errors near 0 and pi).

    Returns
    -------
    callable
        ``f(i, j) -> d_hat`` for integer index arrays of equal shape. For the fixed errors the
        diagonal ``(i, i)`` gets an error too (like an estimator, it is not forced to 0).
    """
    q = rotations.as_unit_quaternions(q)
    n = len(q)
    sigma = validation.real(sigma, "sigma", minimum=0.0)
    if not isinstance(redrawn, (bool, np.bool_)):
        raise InputTypeError(f"redrawn must be True or False; got {redrawn!r}.")
    clip = (not redrawn) if clip is None else bool(clip)
    rng = as_rng(rng)
    seed = None if redrawn else np.uint64(rng.integers(0, 2**63, dtype=np.uint64))

    def perturbed(i, j):
        i, j = validation.index_pairs(i, j, n)
        d = rotations.distance(q[i], q[j])
        noise = rng.standard_normal(d.shape) if redrawn else _pair_normal(i, j, seed)
        d = d + sigma * noise
        return np.clip(d, 0.0, np.pi) if clip else d

    return perturbed


@register
class ExactDistances(DistanceEstimator):
    """The true distances ``d_q(q_i, q_j)``: what a perfect estimator would return."""

    name = "exact"

    def fit(self, dataset: Dataset, *, cache_dir=None, progress: bool = True) -> ExactDistances:
        return self

    def embed(self, dataset: Dataset, *, progress: bool = False) -> np.ndarray:
        """The true orientations themselves (the features distances from the truth need)."""
        if dataset.quaternions is None:
            raise InputError(
                f"{dataset.path.name} has no known orientations, which exact and perturbed distances need; "
                "use a trained estimator (estimator = 'siamese')"
            )
        return np.array(dataset.quaternions, dtype=np.float64)

    def distance_function(self, features):
        return exact_distances(features)

    @property
    def key(self) -> str:
        return "exact"


@register
class PerturbedDistances(ExactDistances):
    """True distances plus Gaussian errors of standard deviation ``sigma`` (see :func:`perturbed_distances`);
    fitted and embedded as :class:`ExactDistances`, the errors added when distances are queried."""

    name = "perturbed"

    def __init__(self, sigma: float = 0.1, *, redrawn: bool = False, clip=None, seed: int = 0):
        self.sigma = validation.real(sigma, "sigma", minimum=0.0)
        self.redrawn, self.clip, self.seed = bool(redrawn), clip, validation.integer(seed, "seed", 0)

    def distance_function(self, features):
        return perturbed_distances(features, self.sigma, redrawn=self.redrawn, clip=self.clip, rng=self.seed)

    @property
    def key(self) -> str:
        return f"perturbed-{self.sigma:g}-{'redrawn' if self.redrawn else 'fixed'}-{self.clip}-{self.seed}"
