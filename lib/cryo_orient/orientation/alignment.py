"""Alignment of recovered orientations to the ground truth, and the error ``E_OR``.

Orientations recovered from distances alone (the paper's Eq. 4) are defined only up to the
transforms of quaternions that preserve ``d_q(q_i, q_j) = 2 arccos |<q_i, q_j>|``: every
``T`` in O(4) acting on quaternions as 4-vectors, together with the per-quaternion sign
``q ~ -q``. The paper's error (Eq. 5) removes this ambiguity against the ground truth::

    E_OR = min_{T in O(4)} (1/n) sum_i d_q(q_i, T q_hat_i).

:func:`align` computes that minimum, and the minimising ``T``, in about 0.1 s for
n = 1,650 and without random restarts. Conventions (scalar-last quaternions, Hamilton
products, projection geometry) are those of :mod:`cryo_orient.geometry.rotations`.

The structure of O(4)
---------------------
Every ``T`` in SO(4) (det +1) is ``q -> a q b`` for unit quaternions ``a`` (left) and ``b``
(right), unique up to the joint sign ``(-a, -b)``. Every ``T`` with det -1 is
``q -> a conj(q) b``. :func:`transform_from_factors` and :func:`factors_of_transform` convert.
In rotation matrices, with ``H``, ``G`` the matrices of ``a``, ``b``: ``R -> H R G`` or, when
reflected, ``R -> H R^T G``. The paper's parametrisation (6 Givens angles times
``diag(1, 1, 1, m)``, ``m = +-1``) covers the same group: ``diag(1, 1, 1, -1)`` maps ``q`` to
``-conj(q)``, the same rotation as ``conj(q)``.

Which part of the transform is physical
---------------------------------------
With the projection ``p(x, y) = integral V(R^T (x, y, z)) dz`` (see :mod:`.rotations`):

* **Right factor** ``R_i -> R_i G`` (``q -> q b``): the same images come from the volume
  ``V(G .)`` seen in orientations ``R_i G``. This is a global rotation of the particle; it is
  physical and harmless: a reconstruction from such orientations is the right map, rotated.
* **Left factor** ``R_i -> H R_i`` (``q -> a q``): ``H`` acts in the lab/image frame. It rotates
  every image in its plane (``H`` about z) or tilts every viewing direction the same way in
  the microscope frame, which changes the images inconsistently with the data. It is not
  physical, and neither is the reflection ``R -> R^T`` (``q -> conj(q)``), which swaps the roles
  of the image and the particle frame. A reconstruction needs orientations in which only a
  right factor is left.
* **The exception: handedness.** Mirroring the volume, ``V -> V(J .)`` with
  ``J = diag(1, 1, -1)``, and using the orientations ``J R_i J`` gives exactly the same images,
  since ``J`` flips only the integrated coordinate ``z``. As ``J = -Rz(pi)``,
  ``J R J = Rz(pi) R Rz(pi)``: in quaternions ``q -> k q k`` with ``k = (0, 0, 1, 0)``, i.e.
  ``left = right = k``. So a left factor of ``Rz(pi)`` (with any right factor) *is* consistent
  with the data: it yields the mirror image of the particle. This is the classical handedness
  ambiguity of single-particle cryo-EM, which no image-only method can resolve.

The paper removed all of ``T`` (left, right and reflection) by aligning to the ground truth
before reconstruction (see the paper notes, §6 item 11): its reconstructions and FSCs used
ground-truth information that real data do not have.

What ``align`` can and cannot tell
----------------------------------
* It needs ``q_true``: it measures the intrinsic accuracy of the recovered orientations
  modulo the whole gauge (``E_OR`` of Eq. 5). That is a lower bound on the error after the
  best *physical* alignment (right factor only, plus the handedness flip), which minimises
  over a smaller set.
* ``left`` and ``reflected`` tell how far the raw recovered orientations are from being usable
  for a reconstruction as they are: with ``reflected`` False and ``left`` equal to ``+-1`` they
  are (the map comes out rotated by the right factor); with ``left`` equal to ``+-k`` they are
  too, but the map comes out mirrored. Anything else must be undone first.
* On real data there is no ``q_true``, so ``align`` cannot be used:
  :func:`cryo_orient.orientation.gauge.choose_gauge` fixes the left factor and the reflection
  from the images themselves (common lines).

Method
------
:func:`align` minimises the mean geodesic error on each of the two components of O(4)
(det +1 and det -1: no continuous path joins them, so both are always searched) and keeps the
better one. Everything is deterministic; there are no random restarts.

1. **Starting points.** ``sum_i (q_i^T T q_hat_i)^2`` is invariant to the signs of the
   quaternions and is the quadratic form ``vec(T)^T K vec(T)``, with
   ``K = sum_i x_i x_i^T`` and ``x_i = q_i (x) q_hat_i`` (row-major ``vec``). Its maximiser over
   ``||T||_F^2 = 4`` (the spectral relaxation) is the top eigenvector of the 16 x 16 matrix
   ``K``. For isotropic noiseless data, ``q_hat_i = A^T q_i``, the objective at ``T`` averages
   ``E[(q^T B q)^2] = (tr(B)^2 + ||B||_F^2 + tr(B^2)) / 24`` over S^3, with ``B = T A^T``: 1 at
   ``T = +-A`` (the truth), at most 1/2 for any ``T`` of the other handedness. The other 15
   eigenvectors (the other stationary points of the relaxation) are used as starts too: with
   few orientations or many outliers the top one can fall in a wrong basin. A last start
   synchronises the signs of each set with its principal axis and solves the Procrustes
   problem, which is exact for data concentrated in a cap of S^3. Each start is projected on
   the component by SVD.
2. **Sign-aware Procrustes** (an ICP) from each start: ``s_i = sign(q_i^T T q_hat_i)``, then
   ``T = polar(sum_i s_i q_i q_hat_i^T)`` restricted to the component. Each step decreases the
   chordal error ``sum_i (1 - |q_i^T T q_hat_i|)``; it stops when the signs no longer change
   (``T`` is then a fixed point). Duplicates among the resulting local minima are dropped.
3. **Geodesic refinement** by majorisation-minimisation (iteratively reweighted Procrustes,
   a Weiszfeld iteration on O(4)). ``d = 2 arccos |c|`` is concave in ``|c|`` on [0, 1], so
   its tangent at the current ``c_i`` bounds it from above; minimising the bound is the
   weighted Procrustes problem with weights ``w_i = 1 / sin(d_i / 2)`` and signs ``s_i``. Each
   step has a closed form, stays on the component, and never increases the mean geodesic
   error: no step size and no gradient of the non-smooth objective are needed. The first
   iterations use a smoothed error (weights ``1 / sqrt(sin(d_i / 2)^2 + e^2)``, ``e`` halving
   from 0.1 to 0) so that an iterate is not pinned to an orientation that it happens to fit
   exactly, the known trap of Weiszfeld iterations.
4. **Screening, then convergence.** The candidates of step 2 are refined for 40 iterations on
   at most 400 evenly spaced orientations, and only the best of each component is then
   refined to convergence on all of them (ICP, then step 3). With ``refine=False`` the
   candidates are ranked by chordal error and the result is the chordal minimum.

Checked against 10 to 25 random starts per component of the same local search (uniform,
Euler-box, so3-box and small-cap coverage; noise up to 1 rad; outlier rates up to 50 %): never
worse in 40 trials with n = 500 and 1,650; in 300 trials with n from 4 to 200, worse in 4 (by
2e-4 to 0.05 rad), all with 40 to 70 % actual outliers and mostly n <= 12, where the minimum
means little. A first version with only the top eigenvector and the synchronised start was
worse in about 10 % of those small-n trials. It takes 30 to 150 ms for n = 1,650 on one CPU
core. The paper's alignment instead ran 6 random starts of 300 FTRL steps on mini-batches
(about 50 minutes on a CPU), and chose the best run by an uninitialised loss value after an
early stop (paper notes, §6 item 12).
"""

from dataclasses import dataclass

import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError, InputTypeError

__all__ = [
    "Alignment",
    "RigidAlignment",
    "align",
    "align_rigid",
    "apply_transform",
    "factors_of_transform",
    "orientation_errors",
    "summary",
    "transform_from_factors",
]

# Reflection q -> conj(q) as a 4 x 4 matrix acting on (x, y, z, w) column vectors.
CONJUGATION = np.diag([-1.0, -1.0, -1.0, 1.0])

# Tolerance on max |T^T T - I| for a matrix to be accepted as an element of O(4).
ORTHOGONALITY_ATOL = 1e-6

# The fewest orientations that can determine T: fewer than 4 quaternions span at most a 3-D
# subspace of R^4, and the reflection through that subspace leaves each of them fixed, so
# T and T times that reflection (of opposite handedness) fit equally well.
MIN_ORIENTATIONS = 4

# Floor on sin(d / 2) in the refinement weights: an orientation aligned exactly (d = 0) would
# get an infinite weight. 1e-12 is below the accuracy of any d that matters here.
_MIN_SIN_HALF = 1e-12

# The refinement first minimises a smoothed error (see _refine_geodesic) whose smoothing starts
# at SMOOTHING_START (in units of sin(d / 2)) and halves every iteration; below SMOOTHING_END it
# is set to 0 and the exact error is minimised. Smoothing keeps an iterate from being pinned
# to an orientation it happens to fit exactly, a known trap of Weiszfeld-type iterations.
SMOOTHING_START = 0.1
SMOOTHING_END = 1e-10

# Candidate minima are ranked after this many refinement iterations (the smoothing is over by
# then), on at most SCREEN_SIZE evenly spaced orientations; only the best candidate of each
# determinant is refined to convergence on all of them. The gaps between the basins grow with
# n, so a subsample ranks them as well as the full set while costing a fixed amount.
SCREEN_ITERATIONS = 40
SCREEN_SIZE = 400

_BASIS = np.eye(4)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_quaternions(q, name, *, ndim=None):
    """Return ``q`` as a new float64 array of non-zero, finite quaternions, shape (..., 4)."""
    try:
        arr = np.array(q, dtype=np.float64)  # a copy: callers' arrays are never touched
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"{name} must be an array of quaternions (x, y, z, w) of real numbers; got {type(q).__name__}: {exc}"
        ) from None
    if arr.ndim < 1 or arr.shape[-1] != 4 or (ndim is not None and arr.ndim != ndim):
        shape = {1: "(4,)", 2: "(n, 4)"}.get(ndim, "(..., 4)")
        hint = " Transpose it if the components are on the first axis." if arr.ndim == 2 and arr.shape[0] == 4 else ""
        raise InputError(
            f"{name} must have shape {shape} (quaternions (x, y, z, w), scalar last); got shape {arr.shape}.{hint}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise InputError(
            f"{name} must be finite; it has {bad} NaN or infinite value(s). Drop those "
            "orientations (from both sets) before aligning."
        )
    norms = np.linalg.norm(arr, axis=-1)
    if np.any(norms == 0):
        raise InputError(
            f"{name} contains {int(np.count_nonzero(norms == 0))} zero quaternion(s), which "
            "are not rotations; drop them (from both sets) or use (0, 0, 0, 1) for the "
            "identity."
        )
    return arr / norms[..., None]


def _as_transform(T, name="T"):
    """Return ``T`` as a float64 (4, 4) array, checked to be in O(4)."""
    try:
        arr = np.array(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"{name} must be a 4 x 4 array of real numbers; got {type(T).__name__}: {exc}") from None
    if arr.shape != (4, 4):
        raise InputError(
            f"{name} must have shape (4, 4) (acting on quaternions (x, y, z, w) as column "
            f"vectors); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be finite; got {arr.tolist()}.")
    err = float(np.max(np.abs(arr.T @ arr - np.eye(4))))
    if err > ORTHOGONALITY_ATOL:
        raise InputError(
            f"{name} must be orthogonal (an element of O(4)); max |T^T T - I| = {err:.3g} "
            f"exceeds {ORTHOGONALITY_ATOL:g}. Project it first (U @ Vt from its SVD), or build "
            "it with transform_from_factors."
        )
    return arr


def _as_pair(q_true, q_est):
    q = _as_quaternions(q_true, "q_true", ndim=2)
    q_hat = _as_quaternions(q_est, "q_est", ndim=2)
    if q.shape != q_hat.shape:
        raise InputError(
            f"q_true and q_est must have the same shape (n, 4), one row per orientation in "
            f"the same order; got {q.shape} and {q_hat.shape}."
        )
    return q, q_hat


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _left_matrix(a):
    """Matrix of ``q -> a q`` (its columns are ``a e_k``)."""
    return rotations.multiply(a[None, :], _BASIS).T


def _right_matrix(b):
    """Matrix of ``q -> q b`` (its columns are ``e_k b``)."""
    return rotations.multiply(_BASIS, b[None, :]).T


# The 16 products L(e_k) R(e_l), flattened row-major. (k, l) -> L(e_k) R(e_l) is, up to the
# factor 2, an isometry of R^4 (x) R^4 onto R^{4x4}: these matrices are orthogonal with
# squared Frobenius norm 4 (checked in the tests), so the coordinates of L(a) R(b) in this
# basis are the 16 products a_k b_m.
_PRODUCT_BASIS = np.stack(
    [(_left_matrix(_BASIS[k]) @ _right_matrix(_BASIS[m])).ravel() for k in range(4) for m in range(4)]
)


def transform_from_factors(left, right, reflect=False):
    """The matrix of ``q -> left q right``, or of ``q -> left conj(q) right``.

    Parameters
    ----------
    left, right : array_like, shape (4,)
        Non-zero quaternions ``(x, y, z, w)``, normalised here. ``(-left, -right)`` gives the
        same transform.
    reflect : bool, optional
        Conjugate ``q`` first: the transform then has determinant -1.

    Returns
    -------
    ndarray, shape (4, 4)
        Orthogonal ``T`` acting on quaternions as column vectors: ``T @ q`` equals
        ``multiply(multiply(left, q), right)`` (with ``conjugate(q)`` when ``reflect``).
        In rotation matrices: ``R -> H R G`` (or ``H R^T G``), with ``H``, ``G`` the matrices of
        ``left``, ``right``.
    """
    a = _as_quaternions(left, "left", ndim=1)
    b = _as_quaternions(right, "right", ndim=1)
    T = _left_matrix(a) @ _right_matrix(b)
    return T @ CONJUGATION if reflect else T


def factors_of_transform(T):
    """Split ``T`` in O(4) into a left factor, a right factor and a reflection.

    Parameters
    ----------
    T : array_like, shape (4, 4)
        Orthogonal matrix acting on quaternions as column vectors
        (``max |T^T T - I| <= 1e-6``).

    Returns
    -------
    left, right : ndarray, shape (4,)
        Unit quaternions with ``T q = left q right`` (or ``left conj(q) right``); ``left`` is
        canonical (``w >= 0``, see :func:`.rotations.canonical`), which fixes the joint sign
        ``(-left, -right)``.
    reflect : bool
        Whether ``det T = -1``, i.e. ``T q = left conj(q) right``.
    """
    T = _as_transform(T)
    reflect = bool(np.linalg.det(T) < 0)
    # CONJUGATION is its own inverse: T = L(a) R(b) C  <=>  T C = L(a) R(b).
    proper = T @ CONJUGATION if reflect else T
    # Coordinates in the product basis are a_k b_l: a rank-one 4 x 4 matrix a b^T.
    outer = (_PRODUCT_BASIS @ proper.ravel() / 4.0).reshape(4, 4)
    U, s, Vt = np.linalg.svd(outer)
    left, right = U[:, 0], s[0] * Vt[0]
    if np.dot(rotations.canonical(left), left) < 0:  # canonical() flipped it: flip both
        left, right = -left, -right
    return left / np.linalg.norm(left), right / np.linalg.norm(right), reflect


def apply_transform(T, q):
    """Apply ``T`` in O(4) to quaternions viewed as column vectors.

    Parameters
    ----------
    T : array_like, shape (4, 4)
        Orthogonal matrix (``max |T^T T - I| <= 1e-6``), e.g. ``Alignment.transform``.
    q : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``; normalised here.

    Returns
    -------
    ndarray, shape (..., 4)
        Canonical unit quaternions (``w >= 0``) of ``T @ q``, i.e. ``q @ T.T``.
    """
    T = _as_transform(T)
    q = _as_quaternions(q, "q")
    return rotations.canonical(q @ T.T)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def orientation_errors(q_true, q_est):
    """Per-orientation geodesic errors ``d_q(q_i, q_hat_i)``, without any alignment.

    Parameters
    ----------
    q_true, q_est : array_like, shape (n, 4)
        Non-zero quaternions ``(x, y, z, w)``, in the same order; normalised here.

    Returns
    -------
    ndarray, shape (n,)
        Angles in radians in ``[0, pi]`` (:func:`.rotations.distance`).
    """
    q, q_hat = _as_pair(q_true, q_est)
    return rotations.distance(q, q_hat)


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


# The local searches below work on a stack of K candidate transforms at once, T of shape
# (K, 4, 4): screening some 30 candidates then costs a few array operations per iteration
# rather than a few per candidate, which the Python overhead of 4 x 4 SVDs would dominate.


def _nearest_on_component(M, det):
    """The elements of O(4) with determinant ``det`` closest to ``M`` (Frobenius), (..., 4, 4):
    the polar factor, with the last singular vector flipped where needed to land on the
    component."""
    U, _, Vt = np.linalg.svd(M)
    flip = np.linalg.det(U) * np.linalg.det(Vt) * det < 0
    U = U.copy()
    U[..., :, -1] *= np.where(flip, -1.0, 1.0)[..., None]
    return U @ Vt


def _spectral_starts(q, q_hat):
    """Eigenvectors of K as 4 x 4 matrices, shape (16, 4, 4), in decreasing eigenvalue.

    The first maximises ``sum_i (q_i^T M q_hat_i)^2`` over ``||M||_F = 2``: the spectral
    relaxation. The others are its other stationary points; they seed the other basins, which
    matters for few or badly outlying orientations, where the relaxation alone can miss.
    """
    # Row-major vec: q^T M q_hat = sum_jk q_j M_jk q_hat_k = vec(M) . (q (x) q_hat).
    x = (q[:, :, None] * q_hat[:, None, :]).reshape(len(q), 16)
    _, vecs = np.linalg.eigh(x.T @ x)
    return 2.0 * vecs[:, ::-1].T.reshape(16, 4, 4)


def _principal_signs(q):
    """Signs that put every quaternion on the side of the principal axis of the set."""
    _, vecs = np.linalg.eigh(q.T @ q)
    return np.where(q @ vecs[:, -1] >= 0, 1.0, -1.0)


def _synchronised_start(q, q_hat):
    """Procrustes matrix after choosing the signs of each set consistently (exact for data in
    a cap of S^3, where the principal axis separates q from -q)."""
    return (q * _principal_signs(q)[:, None]).T @ (q_hat * _principal_signs(q_hat)[:, None])


def _moved(q_hat, T):
    """``T_k q_hat_i`` for a stack of transforms: shape (K, n, 4)."""
    return q_hat @ np.swapaxes(T, 1, 2)  # a batched BLAS product, much faster than einsum


def _signs(q, moved):
    return np.where(np.einsum("ni,kni->kn", q, moved) >= 0, 1.0, -1.0)


def _weighted_procrustes(q, q_hat, weights, det):
    """Maximiser of sum_i w_ki q_i^T T_k q_hat_i on one component, for each row of weights."""
    return _nearest_on_component(np.swapaxes(weights[:, :, None] * q, 1, 2) @ q_hat, det)


def _procrustes_signs(q, q_hat, T, det, max_iter):
    """Sign-aware Procrustes: minimise the chordal error on one component of O(4).

    ``T`` has shape (K, 4, 4); each is iterated until its signs no longer change (then it is a
    fixed point) or for ``max_iter`` steps.
    """
    signs = None
    for _ in range(max_iter):
        new = _signs(q, _moved(q_hat, T))
        if signs is not None and np.array_equal(new, signs):
            break  # same signs give the same T: every candidate is at a fixed point
        signs = new
        T = _weighted_procrustes(q, q_hat, signs, det)
    return T


def _signed_errors(q, moved):
    """Signs ``s_ki`` of ``<q_i, moved_ki>``, chords ``|q_i - s_ki moved_ki|`` and errors.

    The refinement evaluates this hundreds of times on inputs already validated and of unit
    norm, where :func:`.rotations.distance` would spend most of its time re-validating. The
    formula is as stable: the chord ``2 sin(d / 4)`` is computed from the difference vector,
    so small errors keep their relative precision. Reported errors use ``rotations.distance``.
    """
    signs = _signs(q, moved)
    diff = q - signs[..., None] * moved
    chord = np.sqrt(np.einsum("kni,kni->kn", diff, diff))
    return signs, chord, 4.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))


def _refine_geodesic(q, q_hat, T, det, max_iter, tol, smoothing=SMOOTHING_START):
    """Minimise the mean geodesic error on one component of O(4), from each ``T_k``.

    Majorisation-minimisation: the tangent of the concave ``h(|c|)`` at the current ``c_i``
    bounds it from above, and minimising the bound is a weighted Procrustes problem. With
    ``h(x) = 2 arccos(x)`` (the error itself) the weights are ``1 / sin(d_i / 2)``; while
    ``smoothing = e > 0`` they are ``1 / sqrt(sin(d_i / 2)^2 + e^2)``, the exact weights of the
    smooth surrogate ``h_e(x) = 2 (arcsin(1 / r) - arcsin(x / r))``, ``r = sqrt(1 + e^2)``,
    which has no kink where an error is 0. ``e`` halves every iteration and ends at 0.

    Parameters
    ----------
    T : ndarray, shape (K, 4, 4)
        Starting transforms, all of determinant ``det``.

    Returns
    -------
    mean : ndarray, shape (K,)
        For each start, the smallest mean error met (the exact phase never increases it).
    T : ndarray, shape (K, 4, 4)
        The transforms that have them.
    """
    signs, chord, err = _signed_errors(q, _moved(q_hat, T))
    mean = err.mean(axis=1)
    best_mean, best_T = mean.copy(), T.copy()
    active = np.ones(len(T), dtype=bool)
    for _ in range(max_iter):
        # sin(d / 2) = chord * sqrt(1 - chord^2 / 4), with chord = 2 sin(d / 4).
        sin_half = chord * np.sqrt(np.maximum(1.0 - chord * chord / 4.0, 0.0))
        scale = np.sqrt(sin_half * sin_half + smoothing * smoothing)
        T_new = _weighted_procrustes(q, q_hat, signs / np.maximum(scale, _MIN_SIN_HALF), det)
        signs_new, chord_new, err_new = _signed_errors(q, _moved(q_hat, T_new))
        mean_new = err_new.mean(axis=1)
        if smoothing == 0:
            # Only rounding can increase an exact MM objective: those are at their minimum.
            active &= mean_new <= mean
        step = np.max(np.abs(T_new - T), axis=(1, 2))
        T = np.where(active[:, None, None], T_new, T)
        signs = np.where(active[:, None], signs_new, signs)
        chord = np.where(active[:, None], chord_new, chord)
        mean = np.where(active, mean_new, mean)
        better = mean < best_mean
        best_mean = np.where(better, mean, best_mean)
        best_T = np.where(better[:, None, None], T, best_T)
        if smoothing > 0:
            smoothing = smoothing / 2 if smoothing / 2 >= SMOOTHING_END else 0.0
        else:
            active &= step >= tol
            if not active.any():
                break
    return best_mean, best_T


def _chordal_errors(q, q_hat, T):
    # Mean of 1 - |<q_i, T_k q_hat_i>| for each k: what the sign-aware Procrustes minimises.
    return np.mean(1.0 - np.abs(np.einsum("ni,kni->kn", q, _moved(q_hat, T))), axis=1)


def _distinct(T, atol=1e-9):
    """The transforms of the stack that differ from all earlier ones (T ~ -T)."""
    # Orthogonal 4 x 4 matrices have |<A, B>_F| <= 4, with equality iff A = +-B, and
    # 4 - |<A, B>_F| = ||A -+ B||_F^2 / 2.
    close = 4.0 - np.abs(np.einsum("kij,lij->kl", T, T)) < atol * atol / 2
    kept = []
    for k in range(len(T)):
        if not close[k, kept].any():
            kept.append(k)
    return T[kept]


def _statistic(reduce, field: str, *, degrees: bool = False, doc: str | None = None) -> property:
    """A read-only property: ``reduce`` of the array attribute ``field``, in radians or degrees."""

    def get(self) -> float:
        value = float(reduce(getattr(self, field)))
        return float(np.degrees(value)) if degrees else value

    what = "median" if reduce is np.median else "mean"
    unit = "degrees" if degrees else "radians"
    return property(get, doc=doc or f"{what.capitalize()} of ``{field}`` ({unit}).")


@dataclass(frozen=True, eq=False)
class Alignment:
    """Result of :func:`align`. Arrays are read-only; angles are in radians unless ``_deg``.

    Attributes
    ----------
    aligned : ndarray, shape (n, 4)
        ``apply_transform(transform, q_est)``: canonical quaternions in the frame of ``q_true``.
    transform : ndarray, shape (4, 4)
        The minimiser ``T`` in O(4) of the mean geodesic error, acting on column vectors.
        ``T`` and ``-T`` act identically on rotations; the sign is the one that makes both
        factors canonical.
    left, right : ndarray, shape (4,)
        Canonical unit quaternions (``w >= 0``) with ``T q = left q right``
        (``left conj(q) right`` if ``reflected``); see :func:`factors_of_transform`. Only
        ``right`` is physical (see the module notes).
    reflected : bool
        Whether ``det T = -1`` (the recovered orientations are conjugated, ``R -> R^T``).
    errors : ndarray, shape (n,)
        ``d_q(q_true_i, aligned_i)``.
    errors_before : ndarray, shape (n,)
        ``d_q(q_true_i, q_est_i)``, without alignment (Fig. 15 "before").
    branch_mean_errors : tuple of float
        Best mean error found with ``det T = +1`` and with ``det T = -1``.
    """

    aligned: np.ndarray
    transform: np.ndarray
    left: np.ndarray
    right: np.ndarray
    reflected: bool
    errors: np.ndarray
    errors_before: np.ndarray
    branch_mean_errors: tuple

    mean_error = _statistic(np.mean, "errors", doc="Mean error after alignment: E_OR of the paper's Eq. 5 (radians).")
    median_error = _statistic(
        np.median, "errors", doc="Median error after alignment (radians): the paper's Figs 10, 13, 15."
    )
    mean_error_deg = _statistic(np.mean, "errors", degrees=True)
    median_error_deg = _statistic(np.median, "errors", degrees=True)
    mean_error_before = _statistic(np.mean, "errors_before")
    median_error_before = _statistic(np.median, "errors_before")
    mean_error_before_deg = _statistic(np.mean, "errors_before", degrees=True)
    median_error_before_deg = _statistic(np.median, "errors_before", degrees=True)


def _read_only(a):
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def align(q_true, q_est, *, refine=True, max_iter=1000, tol=1e-12):
    """Align recovered orientations to the truth: minimise the mean geodesic error over O(4).

    Finds ``T`` in O(4) minimising ``(1/n) sum_i d_q(q_true_i, T q_est_i)`` (the paper's Eq. 5),
    trying both determinants, from deterministic starts (see the module notes for the method
    and for what the result means physically).

    Parameters
    ----------
    q_true : array_like, shape (n, 4)
        Ground-truth quaternions ``(x, y, z, w)``, non-zero (normalised here), any signs.
    q_est : array_like, shape (n, 4)
        Recovered quaternions in the same order, any signs.
    refine : bool, optional
        Minimise the mean geodesic error (default). If False, stop at the minimiser of the
        chordal error ``sum_i (2 - 2 |<q_true_i, T q_est_i>|)``, which is close to it and
        exact for noiseless data.
    max_iter : int, optional
        Cap on the iterations of each local search (each is a 4 x 4 SVD and an O(n) pass).
    tol : float, optional
        Stop refining when no entry of ``T`` changes by more than this.

    Returns
    -------
    Alignment
        ``aligned``, ``transform``, ``left``, ``right``, ``reflected``, ``errors``,
        ``errors_before`` and the mean/median errors in radians and degrees.

    Raises
    ------
    ValueError
        If the inputs do not have the same shape ``(n, 4)``, if ``n < 4`` (fewer than 4
        quaternions cannot determine ``T``: they lie in a 3-D subspace, and the reflection
        through it fits equally well), or if they contain non-finite or zero quaternions.

    Notes
    -----
    ``T`` is unique (up to its sign, which acts as the per-quaternion sign) only if the
    recovered quaternions span R^4; with noisy data the minimiser itself fits part of the
    noise, so ``mean_error`` is slightly below the error at the true transform.
    """
    q, q_hat = _as_pair(q_true, q_est)
    n = len(q)
    if n < MIN_ORIENTATIONS:
        raise InputError(
            f"align needs at least {MIN_ORIENTATIONS} orientations to determine T in O(4); got "
            f"{n}. Fewer quaternions span at most a 3-D subspace of R^4, and the reflection "
            "through it fits them equally well, so even the handedness would be undetermined."
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer; got {max_iter!r}.")
    if not (np.isfinite(tol) and tol >= 0):
        raise InputError(f"tol must be a finite number >= 0; got {tol!r}.")

    starts = np.concatenate([_spectral_starts(q, q_hat), _synchronised_start(q, q_hat)[None]])
    # Rank the candidate minima on an evenly spaced (deterministic) subsample.
    screen = np.unique(np.linspace(0, n - 1, min(n, SCREEN_SIZE)).round().astype(int))
    q_s, q_hat_s = q[screen], q_hat[screen]
    best = {}
    for det in (1, -1):
        # Many starts reach the same chordal minimum: keep each once.
        candidates = _distinct(_procrustes_signs(q_s, q_hat_s, _nearest_on_component(starts, det), det, max_iter))
        if refine:
            scores, candidates = _refine_geodesic(q_s, q_hat_s, candidates, det, SCREEN_ITERATIONS, tol)
        else:
            scores = _chordal_errors(q_s, q_hat_s, candidates)
        T = candidates[np.argmin(scores)][None]
        # Converge on all orientations from the best candidate.
        T = _procrustes_signs(q, q_hat, T, det, max_iter)
        if refine:
            T = _refine_geodesic(q, q_hat, T, det, max_iter, tol)[1]
        T = T[0]
        best[det] = (float(rotations.distance(q, q_hat @ T.T).mean()), T)
    # Ties go to the proper branch: with data that cannot tell, do not claim a reflection.
    det = -1 if best[-1][0] < best[1][0] else 1
    T = best[det][1]
    left, right, reflected = factors_of_transform(T)
    # T and -T act identically on rotations; pick the sign that makes both factors canonical,
    # so that left, right and transform are unique for a given set of rotations.
    if np.dot(rotations.canonical(right), right) < 0:
        T, right = -T, -right
    aligned = rotations.canonical(q_hat @ T.T)
    return Alignment(
        aligned=_read_only(aligned),
        transform=_read_only(T),
        left=_read_only(left),
        right=_read_only(right),
        reflected=reflected,
        errors=_read_only(rotations.distance(q, aligned)),
        errors_before=_read_only(rotations.distance(q, q_hat)),
        branch_mean_errors=(best[1][0], best[-1][0]),
    )


def summary(alignment):
    """Plain-Python record of an :class:`Alignment`, for JSON.

    Parameters
    ----------
    alignment : Alignment
        The result of :func:`align`.

    Returns
    -------
    dict
        ``n``; ``mean_error_rad``, ``median_error_rad``, ``mean_error_deg``,
        ``median_error_deg`` after alignment; the same with ``_before`` (no alignment);
        ``reflected`` (bool); ``left``, ``right`` (lists of 4 floats, scalar last); and
        ``mean_error_proper_branch_rad``, ``mean_error_reflected_branch_rad`` (the best mean
        error found with det +1 and with det -1).
    """
    if not isinstance(alignment, Alignment):
        raise InputTypeError(f"summary expects the Alignment returned by align(); got {type(alignment).__name__}.")
    a = alignment
    return {
        "n": int(len(a.errors)),
        "mean_error_rad": a.mean_error,
        "median_error_rad": a.median_error,
        "mean_error_deg": a.mean_error_deg,
        "median_error_deg": a.median_error_deg,
        "mean_error_before_rad": a.mean_error_before,
        "median_error_before_rad": a.median_error_before,
        "mean_error_before_deg": a.mean_error_before_deg,
        "median_error_before_deg": a.median_error_before_deg,
        "reflected": bool(a.reflected),
        "left": [float(v) for v in a.left],
        "right": [float(v) for v in a.right],
        "mean_error_proper_branch_rad": float(a.branch_mean_errors[0]),
        "mean_error_reflected_branch_rad": float(a.branch_mean_errors[1]),
    }


# --------------------------------------------------------------------------------------------
# The physical alignment: a rotation of the particle and its handedness only
# --------------------------------------------------------------------------------------------

# q -> k q k with k = (0, 0, 1, 0): R -> J R J, the orientations of the mirrored particle.
_MIRROR_K = np.array([0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True, eq=False)
class RigidAlignment:
    """Result of :func:`align_rigid`; angles in radians unless ``_deg``.

    Attributes
    ----------
    aligned : ndarray, shape (n, 4)
        ``mirror(q_est) · right`` (canonical): the estimate in the frame of ``q_true``.
    right : ndarray, shape (4,)
        The rotation of the particle (the right factor), canonical.
    mirrored : bool
        Whether the estimate is of the mirrored particle (``q -> k q k``).
    errors : ndarray, shape (n,)
        ``d_q(q_true_i, aligned_i)``.
    """

    aligned: np.ndarray
    right: np.ndarray
    mirrored: bool
    errors: np.ndarray

    median_error = _statistic(np.median, "errors")
    mean_error = _statistic(np.mean, "errors")
    median_error_deg = _statistic(np.median, "errors", degrees=True)
    mean_error_deg = _statistic(np.mean, "errors", degrees=True)


def align_rigid(q_true, q_est, *, max_iter=50) -> RigidAlignment:
    """Align orientations by what a reconstruction cannot tell: a rotation of the particle and its hand.

    Unlike :func:`align` (all of O(4), the paper's E_OR), this allows only ``R_i -> R_i G`` (the
    map rotated by ``G``) and the mirror ``R_i -> J R_i J`` (the map's handedness), the two
    ambiguities of orientations estimated from images alone (see the module notes). So a wrong
    Euler convention or a transposed rotation is not forgiven here.

    ``G`` starts from the orthogonal Procrustes solution of ``Σ R_estᵀ R_true`` and is polished by
    re-weighting away outliers (pairs more than 3 median errors off); the mirror is the one
    with the lower median error.
    """
    q, q_hat = _as_pair(q_true, q_est)
    R_true = rotations.quaternion_to_matrix(q)
    best = None
    for mirrored in (False, True):
        est = rotations.multiply(rotations.multiply(_MIRROR_K, q_hat), _MIRROR_K) if mirrored else q_hat
        R_est = rotations.quaternion_to_matrix(est)
        weights = np.ones(len(q))
        for _ in range(max_iter):
            M = np.einsum("n,nji,njk->ik", weights, R_est, R_true)  # Σ w R_estᵀ R_true
            U, _, Vt = np.linalg.svd(M)
            G = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
            aligned = rotations.canonical(rotations.multiply(est, rotations.matrix_to_quaternion(G)))
            errors = rotations.distance(q, aligned)
            new = (errors <= 3 * np.median(errors) + 1e-12).astype(float)
            if np.array_equal(new, weights):
                break
            weights = new
        if best is None or np.median(errors) < np.median(best.errors):
            best = RigidAlignment(
                aligned=_read_only(aligned),
                right=_read_only(rotations.canonical(rotations.matrix_to_quaternion(G))),
                mirrored=mirrored,
                errors=_read_only(errors),
            )
    return best
