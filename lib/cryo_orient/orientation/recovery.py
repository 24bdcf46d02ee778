"""Orientation recovery: orientations from (estimated) pairwise distances (the paper's step 2).

Given distances ``d_hat(i, j)`` between the unknown orientations of ``n`` projections,
:func:`recover` returns unit quaternions ``q_hat`` that minimise the paper's Eq. 4,

    L_OR = sum_{i, j} | d_hat(i, j) - d_q(q_hat_i, q_hat_j) |^2,

by mini-batch gradient descent (Adam) over randomly sampled pairs, in TensorFlow. The
distances are either an ``(n, n)`` array or a callable ``f(i, j) -> d_hat`` on index arrays (the
learned estimator plugs in there; at n = 100,000 no ``n x n`` matrix is ever formed).

The solution is defined only up to the isometries of SO(3) (left and right multiplication and
inversion; see the paper README, section 6 item 11): compare it with the truth after
:func:`cryo_orient.orientation.alignment.align`, or through pairwise distances.

Two modes
---------
``mode="faithful"`` reproduces the settings of the paper's ``train_angle_recovery``
(README section 4.3):

* one free 4-vector per projection, normalised only inside ``d_q`` (implemented as one
  ``(n, 4)`` variable whose rows are updated *lazily*: a row that is not in the batch is not
  touched, as a ``tf.Variable`` left out of the paper's variable list was not);
* Adam (beta1 0.9, beta2 0.999, epsilon 1e-7, the Keras defaults), learning rate 0.5;
* batches of 256 ordered pairs ``(i, j)`` drawn uniformly with replacement (so ``i == j``
  happens); a row appearing ``k`` times in a batch gets ``k`` successive Adam updates with its
  total gradient, our reading of ``apply_gradients`` on the list ``q1 + q2`` with repeated
  variables (untested against the original, which is TF 2.0-2.2 only);
* squared loss with the arccos form ``2 acos(min(|<a, b>|, 1) (1 - 2 eps))`` of ``d_q``, in
  float64 (the shrink by ``1 - 2 eps`` mimics the paper's ``safe_shrink``; with the clip to 1,
  which rounding needs, it keeps the gradient finite at ``i == j``);
* initialisation from Euler angles uniform in the box ``(2, 0.4, 2) pi`` (the paper's default
  ``high_ang_const``, not uniform on SO(3));
* at most 30,000 steps; stop early when mean(last 1000 losses) < 1e-8 or
  |mean(last 1000) - mean(previous 1000)| < 1e-7 (checked after every step, once 1000,
  respectively 2000, losses exist).

``mode="improved"`` (the default) changes what our measurements showed to matter (see
"Measured" below):

* initialisation uniform on SO(3), pairs with ``i != j`` (a pair ``(i, i)`` carries no
  information), batches of ``n`` pairs (at least 1,024, at most 65,536);
* the stable geodesic :func:`cryo_orient.geometry.rotations.distance_tf` (atan2 form), finite with useful
  gradients at ``d = 0`` and ``d = pi``;
* dense Adam on the whole ``(n, 4)`` variable, rows renormalised after every step (a retraction
  onto the sphere, so that the learning rate is an angle and does not shrink as the norms grow,
  as it silently does in the faithful mode);
* learning rate 0.1, halved when the loss stops improving (windowed mean not 1 % below the best
  for 2 windows of 50 steps), down to 0.1 / 64; then stop ("plateau"). Plateaus count only once
  the loss is below half its first window (or after 2,000 steps): from a random start it first
  sits near its initial level while the configuration organises;
* stop when the mean of the last 50 losses (or of all, before step 50) is below 1e-10 rad^2
  ("tolerance"), or at 20,000 steps;
* one XLA-compiled step (gathers, distance, gradient, Adam, renormalisation).

Measured
--------
On 2 CPU cores, exact distances, orientations uniform on SO(3) (``benchmarks/recovery.py`` and
development runs; float64, which costs about as much as float32 here since XLA fuses the step):

* n = 1,650: improved ~1.4 s to a training loss below 1e-10 (seeds 0-39, none stuck); faithful
  ~10,000 steps and ~16 s (the paper's Fig. 14 needed about 7,000 steps).
* n = 100,000 (callable, no matrix): improved ~1,100 steps of 65,536 pairs, ~35 s.
* Local minima: a single improved run stays stuck (final loss ~0.1) in about 1 % of runs at
  n = 200 to 1,650, in 3 of 30 at n = 100 and 17 of 30 at n = 40; use ``restarts``.
* Perturbed distances (n = 1,650, Fig. 7's setting), E_OR mean after alignment, improved vs
  faithful: sigma 0.1: 0.015 vs 0.077; sigma 0.4: 0.048 vs 0.144; sigma 0.8: 0.090 vs 0.200
  (redrawn noise); fixed noise: 0.017 vs 0.075, 0.058 vs 0.142, 0.108 vs 0.182. Faithful
  reproduces the paper's values (0.069, 0.128, 0.194 for redrawn noise); the gain of the
  improved mode comes from its learning-rate decay, which averages the noise instead of
  stopping on a noisy plateau, and it takes 2-6 s instead of 20-40 s.

Randomness
----------
All random draws (initialisation, pairs, redrawn noise) come from the NumPy ``rng``; no
TensorFlow random op is used, so no TensorFlow seed is needed. On CPU the same seed gives the
same result bit for bit (tested); TensorFlow's global op-determinism flag is not touched.

Noise models for experiments (Fig. 7)
-------------------------------------
:func:`cryo_orient.estimation.exact.perturbed_distances` builds the paper's perturbed distances
(fresh Gaussian noise at every call, unclipped) and a harder, realistic variant (a fixed error per
unordered pair, clipped to ``[0, pi]`` by default).
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from types import MappingProxyType

import numpy as np

from cryo_orient import validation
from cryo_orient.artifacts import jsonable
from cryo_orient.geometry import rotations
from cryo_orient.orientation import engine, topology
from cryo_orient.validation import InputError, InputTypeError, as_rng

__all__ = [
    "FAITHFUL",
    "IMPROVED",
    "INITS",
    "MODES",
    "RecoveryResult",
    "check_coverage",
    "pairwise_loss",
    "recover",
]

# The paper's settings (README section 4.3), for mode="faithful".
FAITHFUL = MappingProxyType(
    {
        "mode": "faithful",
        "batch_size": 256,
        "learning_rate": 0.5,
        "max_steps": 30_000,
        "init": "uniform_euler",
        "init_coverage": (2.0, 0.4, 2.0),
        "pairs": "ordered, with replacement, i == j allowed",
        "distance_form": "arccos",
        "dtype": "float64",
        "normalise_rows": False,
        "adam": MappingProxyType(
            {
                "beta1": 0.9,
                "beta2": 0.999,
                "epsilon": 1e-7,
                "rows": "lazy: only drawn rows, k updates for k appearances",
            }
        ),
        "window": 1000,
        "tol": 1e-8,
        "plateau_tol": 1e-7,
        "plateau_rule": "absolute difference of consecutive window means",
        "schedule": "constant",
    }
)

# The defaults of mode="improved"; measured in benchmarks/recovery.py (see the module docstring).
IMPROVED = MappingProxyType(
    {
        "mode": "improved",
        "batch_size": None,  # None: n, at least 1024 and at most 65536
        "learning_rate": 0.1,
        "max_steps": 20_000,
        "init": "uniform_so3",
        "pairs": "ordered, with replacement, i != j",
        "distance_form": "atan2",
        "dtype": "float64",
        "normalise_rows": True,
        "adam": MappingProxyType({"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7, "rows": "dense"}),
        "window": 50,
        "tol": 1e-10,
        "plateau_tol": 1e-2,
        "plateau_rule": "relative improvement of the window mean over the best window",
        "schedule": "halve the learning rate after 2 windows without improvement, 6 times at most",
        "patience": 2,
        "decay": 0.5,
        "max_decays": 6,
        "arm_fraction": 0.5,
        "arm_steps": 2000,
    }
)

MODES = MappingProxyType({"faithful": FAITHFUL, "improved": IMPROVED})
#: The named starts of ``recover(init=...)`` (an (n, 4) array is the other kind).
INITS = ("uniform_so3", "uniform_euler")

# Tolerances of the (n, n) array checks: distances computed in float32 (e.g. by a network, or
# rounding of pi) overshoot their range by a few 1e-7.
RANGE_TOL = 1e-6
SYMMETRY_TOL = 1e-6

# Rows of an (n, n) block evaluated at once by pairwise_loss (bounds memory to ~block * n * 64 B).
_BLOCK_PAIRS = 1 << 20

# Show the loss on the progress bar every this many steps (set_postfix is slow).
_POSTFIX_EVERY = 50


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecoveryResult:
    """Outcome of :func:`recover`.

    Attributes
    ----------
    quaternions : ndarray, shape (n, 4)
        Recovered orientations, canonical unit quaternions ``(x, y, z, w)`` (read-only).
    losses : ndarray, shape (steps,)
        Mean squared mismatch of each training batch, in rad^2 (read-only).
    steps : int
        Optimisation steps taken.
    converged : bool
        Whether a stopping rule other than ``max_steps`` ended the run.
    stop_reason : str
        ``"tolerance"`` (loss below ``tol``), ``"plateau"`` (the loss stopped improving) or
        ``"max_steps"``.
    seconds : float
        Wall-clock time of the whole call, compilation included.
    settings : dict
        The settings used (JSON-serialisable), e.g. for records of experiments.
    topology : dict or None
        :func:`cryo_orient.orientation.topology.check_topology` of the recovered orientations
        (``frustrated_fraction``, ``unwound``, ...): whether they are likely "unwound", a wrong
        configuration that the truth (full in-plane loops) cannot be.
    """

    quaternions: np.ndarray
    losses: np.ndarray
    steps: int
    converged: bool
    stop_reason: str
    seconds: float
    settings: dict
    topology: dict | None = None

    @property
    def final_loss(self) -> float:
        """Mean of the last ``settings["window"]`` training losses (NaN if no step was run)."""
        window = int(self.settings.get("window", 10))
        return float(np.mean(self.losses[-window:])) if self.steps else float("nan")

    def as_arrays(self) -> dict:
        """What a cache keeps of it: ``quaternions``, ``losses``, ``seconds``, ``final_loss``."""
        return {
            "quaternions": self.quaternions,
            "losses": self.losses,
            "seconds": np.array(self.seconds),
            "final_loss": np.array(self.final_loss),
        }


# --------------------------------------------------------------------------------------------
# Distance input
# --------------------------------------------------------------------------------------------


def _validate_matrix(d, n):
    """Check an (n, n) distance matrix; return it as float64 (the input is never modified)."""
    arr = validation.float_array(d, "distances", "an (n, n) array of real numbers or a callable f(i, j)")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InputError(
            f"distances must be a square (n, n) matrix of pairwise distances; got shape "
            f"{arr.shape}. For a subset of pairs, pass a callable f(i, j) instead."
        )
    if arr.shape[0] != n:
        raise InputError(
            f"distances is {arr.shape[0]} x {arr.shape[1]} but n = {n}; pass "
            f"n={arr.shape[0]}, or the matrix of the {n} projections to recover."
        )
    nan = int(np.count_nonzero(np.isnan(arr)))
    if nan:
        raise InputError(
            f"distances has {nan} NaN entr{'y' if nan == 1 else 'ies'}; every pair needs a "
            "distance. Fix the estimator, or pass a callable that only queries valid pairs."
        )
    inf = int(np.count_nonzero(np.isinf(arr)))
    if inf:
        raise InputError(
            f"distances has {inf} infinite entr{'y' if inf == 1 else 'ies'}; geodesic distances lie in [0, pi]."
        )
    low = int(np.count_nonzero(arr < -RANGE_TOL))
    high = int(np.count_nonzero(arr > np.pi + RANGE_TOL))
    if low or high:
        found = []
        if low:
            found.append(f"{low} entr{'y is' if low == 1 else 'ies are'} negative (min {arr.min():.6g})")
        if high:
            found.append(f"{high} entr{'y is' if high == 1 else 'ies are'} above pi (max {arr.max():.6g})")
        raise InputError(
            "distances must lie in [0, pi] (geodesic distances between rotations, in radians); "
            + " and ".join(found)
            + ". If they are in degrees, convert with np.deg2rad; if they "
            "are noisy estimates, clip with np.clip(d, 0, np.pi)."
        )
    asym = np.abs(arr - arr.T) > SYMMETRY_TOL
    bad = int(np.count_nonzero(asym)) // 2
    if bad:
        worst = float(np.max(np.abs(arr - arr.T)))
        raise InputError(
            f"distances must be symmetric (d[i, j] == d[j, i]); {bad} pair(s) differ by more than "
            f"{SYMMETRY_TOL:g} (worst {worst:.3g}). Symmetrise with (d + d.T) / 2."
        )
    return arr


def _lookup(matrix):
    """Callable f(i, j) -> matrix[i, j] (reads only)."""

    def f(i, j):
        return matrix[i, j]

    return f


def _as_distance_fn(distances, n):
    """(callable, is_matrix) for either input form."""
    if callable(distances):
        return distances, False
    return _lookup(_validate_matrix(distances, n)), True


# --------------------------------------------------------------------------------------------
# Loss evaluation
# --------------------------------------------------------------------------------------------


def pairwise_loss(distances, q, n_pairs=None, rng=None):
    """L_OR of orientations: the mean squared mismatch ``|d_hat - d_q|^2`` over pairs.

    Independent of the training batches, to report L_OR of a result (or of the truth, as a
    noise floor).

    Parameters
    ----------
    distances : array_like, shape (n, n), or callable
        As for :func:`recover`.
    q : array_like, shape (n, 4)
        Orientations ``(x, y, z, w)``.
    n_pairs : int or None, optional
        Number of random pairs ``(i, j)``, ``i != j``, drawn uniformly with replacement. ``None``
        (default): all ``n (n - 1) / 2`` pairs ``i < j`` for an array, 1,000,000 random pairs
        for a callable.
    rng : numpy.random.Generator, int or None, optional
        Source of the random pairs (and of a perturbed callable's noise).

    Returns
    -------
    float
        Mean squared mismatch, in rad^2.
    """
    q = rotations.as_unit_quaternions(q)
    n = len(q)
    if n < 2:
        raise InputError(f"need at least 2 orientations to form pairs; got {n}.")
    fn, is_matrix = _as_distance_fn(distances, n)
    rng = as_rng(rng)
    if n_pairs is None and is_matrix:
        total, count = 0.0, 0
        rows = max(1, _BLOCK_PAIRS // n)
        for start in range(0, n - 1, rows):
            i, j = _triu_block(n, start, min(start + rows, n - 1))
            r = fn(i, j) - rotations.distance(q[i], q[j])
            total += float(np.dot(r, r))
            count += r.size
        return total / count
    n_pairs = 1_000_000 if n_pairs is None else validation.integer(n_pairs, "n_pairs", 1)
    total = 0.0
    for start in range(0, n_pairs, _BLOCK_PAIRS):
        size = min(_BLOCK_PAIRS, n_pairs - start)
        i, j = engine.sample_distinct_pairs(rng, n, size)
        r = engine.query(fn, i, j, None) - rotations.distance(q[i], q[j])
        total += float(np.dot(r, r))
    return total / n_pairs


def _triu_block(n, start, stop):
    """Pairs (i, j), i < j, with start <= i < stop."""
    rows = np.arange(start, stop)
    counts = n - 1 - rows
    i = np.repeat(rows, counts)
    # j runs from i + 1 to n - 1 in each row: offsets within the row plus i + 1.
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    j = i + 1 + offsets
    return i, j


# --------------------------------------------------------------------------------------------
# Recovery
# --------------------------------------------------------------------------------------------


def _default_batch(n):
    # Measured with exact distances (times to loss < 1e-10 on 2 CPU cores, seeds 0-39):
    # * n = 200: batch 1024 and lr 0.1 never got stuck in 60 runs; batch 4096 (20 n) got stuck in
    #   a local minimum in 1 of 60 runs (3 of 40 with lr 0.05): the gradient noise of batches
    #   that are small relative to n helps escape them.
    # * n = 1650: batch 1650, 2048, 4096 all converge in ~1.4-1.5 s (fewer, dearer steps).
    # * n = 100,000: batch 65,536 converges in ~34 s; 131,072 in 44 s; 32,768 leaves the random
    #   start far more slowly (175 s), as each row then gets too few samples per step.
    # Hence about one pair per orientation and step, at least 1024 and at most 65,536 (beyond
    # n ~ 100,000 untested: raise batch_size if the loss stays near its start).
    return int(max(1024, min(n, 65536)))


def _resolve_settings(mode, n, overrides):
    if mode not in MODES:
        raise InputError(f"mode must be one of {sorted(MODES)}; got {mode!r}.")
    s = {k: (dict(v) if isinstance(v, MappingProxyType) else v) for k, v in MODES[mode].items()}
    for key, value in overrides.items():
        if value is not None:
            s[key] = value
    if s["batch_size"] is None:
        s["batch_size"] = _default_batch(n)
    s["batch_size"] = validation.integer(s["batch_size"], "batch_size", 1)
    s["max_steps"] = validation.integer(s["max_steps"], "max_steps", 1)
    s["window"] = validation.integer(s["window"], "window", 1)
    s["learning_rate"] = validation.real(s["learning_rate"], "learning_rate", minimum=0.0, strict=True)
    s["tol"] = validation.real(s["tol"], "tol", minimum=0.0)
    s["plateau_tol"] = validation.real(s["plateau_tol"], "plateau_tol", minimum=0.0)
    if s["dtype"] not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64'; got {s['dtype']!r}.")
    s["n"] = n
    return s


def check_coverage(value):
    """``init_coverage`` as 3 floats in (0, 2] x (0, 1] x (0, 2] (units of pi), or None."""
    if value is None:
        return None
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        box = ()
    limits = (2.0, 1.0, 2.0)
    if len(box) != 3 or not all(np.isfinite(b) and 0 < b <= top for b, top in zip(box, limits)):
        raise InputError(
            f"init_coverage must be 3 widths (theta3, theta2, theta1) in units of pi, each > 0 and at most "
            f"(2, 1, 2); got {value!r}."
        )
    return box


def _initial(init, n, rng, settings):
    if isinstance(init, str):
        if init == "uniform_so3":
            return rotations.uniform_so3(n, rng)
        if init == "uniform_euler":
            coverage = settings.get("init_coverage", (2.0, 0.4, 2.0))
            settings["init_coverage"] = tuple(coverage)
            return rotations.uniform_euler(n, coverage, rng=rng)
        raise InputError(f"init must be 'uniform_so3', 'uniform_euler' or an (n, 4) array; got {init!r}.")
    q0 = rotations.as_unit_quaternions(init, "init")
    if q0.shape != (n, 4):
        raise InputError(f"init must have shape (n, 4) = ({n}, 4); got {q0.shape}.")
    settings["init"] = "array"
    return q0


def recover(
    distances,
    n,
    *,
    mode="improved",
    rng=None,
    batch_size=None,
    learning_rate=None,
    max_steps=None,
    init=None,
    init_coverage=None,
    tol=None,
    plateau_tol=None,
    window=None,
    dtype=None,
    restarts=1,
    progress=True,
    callback=None,
):
    """Recover orientations from pairwise distances by minimising Eq. 4.

    Parameters
    ----------
    distances : array_like, shape (n, n), or callable
        Either a symmetric matrix of distances in ``[0, pi]`` (checked: square, ``n x n``,
        finite, symmetric and in range within 1e-6), or a callable ``f(i, j) -> d_hat`` taking
        two integer index arrays of equal shape and returning one float distance per pair (not
        checked up front; its output is checked for NaN and infinities at every step).
    n : int
        Number of orientations to recover (>= 2).
    mode : {"improved", "faithful"}, optional
        ``"faithful"``: the paper's settings (:data:`FAITHFUL`); ``"improved"`` (default): the
        settings of :data:`IMPROVED`. See the module docstring for both.
    rng : numpy.random.Generator, int or None, optional
        Source of all randomness (initialisation, pairs). A fixed seed gives the same result.
    batch_size, learning_rate, max_steps : optional
        Override the mode's pairs per step, (peak) Adam learning rate and step limit.
    init : {"uniform_so3", "uniform_euler"} or array_like of shape (n, 4), optional
        Initial orientations (``"uniform_euler"`` draws from the paper's box (2, 0.4, 2) pi).
        An array is used by every restart; a start at an exact solution stops at step 1, but
        one merely near it first moves away by about the learning rate (Adam has no gradient
        history to scale its first steps by), so pass a smaller ``learning_rate`` to refine.
    init_coverage : sequence of 3 floats, optional
        The box of ``init="uniform_euler"``: widths of ``(theta3, theta2, theta1)`` in units of
        pi (default the paper's ``(2, 0.4, 2)``). On restricted coverage, a start in such a box
        keeps recovery on the data's topology where a uniform SO(3) start can find a better
        fitting "unwound" minimum of the paper's head (:mod:`cryo_orient.orientation.topology`).
    tol : float, optional
        Stop when the mean of the last ``window`` losses is below ``tol`` (rad^2).
    plateau_tol : float, optional
        Faithful mode: stop when consecutive window means differ by less than this (absolute).
        Improved mode: a window whose mean is not ``plateau_tol`` (relative) below the best so
        far counts towards a plateau (learning-rate decay, then stop).
    window : int, optional
        Steps per window of the stopping rules.
    dtype : {"float32", "float64"}, optional
        Precision of the optimisation.
    restarts : int, optional
        Independent runs from fresh initialisations (consecutive draws of ``rng``); the one with
        the lowest final loss (mean of its last ``window`` losses) is returned. With exact
        distances and default settings a single improved run ends in a local minimum in about
        1 % of cases at n = 200 to 1,650, but ~10 % at n = 100 and ~50 % at n = 40 (measured;
        see the module docstring); small problems are cheap to restart.
    progress : bool, optional
        Show a tqdm progress bar with the step and the loss.
    callback : callable, optional
        Called as ``callback(step, loss)`` after every step (``step`` from 1, and from 1 again
        at each restart).

    Returns
    -------
    RecoveryResult
        Canonical unit quaternions (up to the gauge of Eq. 4: compare them with the truth after
        :func:`cryo_orient.orientation.alignment.align`), per-step losses, how and why the run
        stopped, and a check of their topology (a :class:`UserWarning` says when they are likely
        unwound, see :mod:`cryo_orient.orientation.topology`).

    Raises
    ------
    ValueError
        For an invalid matrix (with the count of offending entries), an ``n`` that does not
        match, or a callable returning NaN or infinite values (with the step).
    RuntimeError
        If the loss itself becomes non-finite.
    """
    started = time.perf_counter()
    n = validation.integer(n, "n", 2)
    fn, is_matrix = _as_distance_fn(distances, n)
    if callback is not None and not callable(callback):
        raise InputTypeError(f"callback must be callable as callback(step, loss); got {callback!r}.")
    seed = rng if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) else None
    rng = as_rng(rng)
    s = _resolve_settings(
        mode,
        n,
        {
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_steps": max_steps,
            "init": init if isinstance(init, str) or init is None else "array",
            "init_coverage": check_coverage(init_coverage),
            "tol": tol,
            "plateau_tol": plateau_tol,
            "window": window,
            "dtype": dtype,
        },
    )
    s["distances"] = "matrix" if is_matrix else "callable"
    s["rng_seed"] = None if seed is None else int(seed)
    s["restarts"] = validation.integer(restarts, "restarts", 1)
    init = init if init is not None else s["init"]

    import tensorflow as tf  # noqa: PLC0415 (seconds to import; only recovery and training need it)

    best, finals, opt = None, [], None
    for run in range(s["restarts"]):
        q0 = _initial(init, n, rng, s)
        if opt is None:
            opt = engine.TensorFlowAdam(q0, s, tf)
        else:
            opt.reset(q0)  # reuse the compiled step
        label = f"recover ({mode}, n={n})" + (f" {run + 1}/{s['restarts']}" if s["restarts"] > 1 else "")
        out = engine.run(opt, fn, n, s, rng, progress, callback, label)
        finals.append(out["final"])
        # The lowest final loss wins; a run stuck in a local minimum ends visibly higher.
        if best is None or out["final"] < best["final"]:
            best = out
    if s["restarts"] > 1:
        s["restart_final_losses"] = finals
        s["restart_chosen"] = finals.index(best["final"])
    s["final_learning_rate"] = best["learning_rate"]
    # A better fit than the truth can be a wrong topology (orientation/topology.py): say so.
    check = topology.warn_if_unwound(topology.check_topology(best["q"]))
    best["q"].setflags(write=False)
    best["losses"].setflags(write=False)
    return RecoveryResult(
        quaternions=best["q"],
        losses=best["losses"],
        steps=best["steps"],
        converged=best["reason"] != "max_steps",
        stop_reason=best["reason"],
        seconds=time.perf_counter() - started,
        settings=jsonable(s),
        topology=check.as_dict(),
    )
