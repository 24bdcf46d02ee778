"""Rotations: quaternions, the paper's Euler angles, geodesic distance, sampling.

Conventions
-----------
These conventions hold for the whole of ``cryo_orient``; other modules refer here.

Quaternions
    Scalar-last ``(x, y, z, w)`` float64 arrays of shape ``(..., 4)``, the layout of
    :class:`scipy.spatial.transform.Rotation` and of tensorflow-graphics. A unit quaternion
    ``q`` and ``-q`` are the same rotation; :func:`canonical` picks ``w >= 0``. The product is
    the Hamilton product, so that ``quaternion_to_matrix(multiply(a, b)) == R_a @ R_b``.

Euler angles
    The paper's ZYZ convention, stored in the paper's column order
    ``(theta3, theta2, theta1)`` = (in-plane, tilt, azimuth), in radians, shape ``(..., 3)``.
    The rotation matrix is::

        R = Rz(theta3) @ Ry(theta2) @ Rz(theta1)

    i.e. ``Rotation.from_euler("ZYZ", [theta3, theta2, theta1])`` (intrinsic, upper case).
    Canonical ranges, as returned by :func:`quaternion_to_euler`: ``theta3, theta1`` in
    ``[0, 2 pi)`` and ``theta2`` in ``[0, pi]``. At gimbal lock (``theta2`` of 0 or pi) only
    ``theta3 +- theta1`` is defined; we return ``theta1 = 0``.

Projection geometry
    The projection of a volume ``V`` in orientation ``R`` is
    ``p(x, y) = integral V(R^T (x, y, z)) dz``. The viewing direction in the volume frame is
    therefore ``R^T e_z = Rz(-theta1) @ Ry(-theta2) @ e_z`` (:func:`viewing_direction`), which
    depends on ``(theta2, theta1)`` only: ``theta3`` turns the image in its plane.

Relation to the paper's code
    * The paper's ASTRA geometry used ``ray = R_A e_z``, ``u = R_A e_x``, ``v = R_A e_y`` with
      ``R_A = from_euler("ZYZ", angles).as_matrix().T``, which is ``R^T`` here, so the same
      angles give the same projections.
    * The paper's ``euler2quaternion`` is the *extrinsic* ``from_euler("zyz", angles)``, whose
      matrix is ``C @ R^T @ C`` with ``C = Rx(pi)``. That quaternion differs from ours, but
      geodesic distances are invariant under inversion and conjugation, so the paper's
      distance labels equal ours.
    * RELION's ``(rot, tilt, psi)`` are the ZYZ angles of ``R^T``; in the paper's angles
      ``(rot, tilt, psi) = (pi - theta1, theta2, pi - theta3)``. See :mod:`cryo_orient.data.relion`,
      whose tests pin it against RELION's ``Euler_angles2matrix``.

Nothing here imports TensorFlow at import time: only :func:`distance_tf` needs it, and it
imports it when called.
"""

import math
import operator

import numpy as np
from scipy.optimize import minimize

from cryo_orient import validation
from cryo_orient.validation import InputError, InputTypeError, as_rng

__all__ = [
    "axis_angle",
    "canonical",
    "conjugate",
    "distance",
    "distance_tf",
    "euler_to_matrix",
    "euler_to_quaternion",
    "matrix_to_quaternion",
    "multiply",
    "perturb",
    "quaternion_to_euler",
    "quaternion_to_matrix",
    "sample_orientations",
    "so3_grid",
    "uniform_euler",
    "uniform_so3",
    "uniform_so3_in_box",
    "viewing_direction",
]

TWO_PI = 2.0 * np.pi

# Upper bounds of (theta3, theta2, theta1), in units of pi: the canonical Euler box.
FULL_COVERAGE = (2.0, 1.0, 2.0)

# Below this acceptance rate, rejection needs over a million draws per kept sample: the user
# almost certainly wants uniform Euler sampling, or made a mistake in the box.
MIN_ACCEPTANCE = 1e-6

# Per-batch cap on rejection draws, to bound memory (4 float64 per draw).
MAX_BATCH = 1 << 20


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_float_array(a, name, trailing, what, *, require_norm=False):
    """Return ``a`` as a float64 array with the given trailing shape, checked to be finite."""
    arr = validation.float_array(a, name, f"an array of real numbers ({what})")
    expected = "(..., " + ", ".join(str(t) for t in trailing) + ")"
    if arr.ndim < len(trailing) or arr.shape[arr.ndim - len(trailing) :] != tuple(trailing):
        raise InputError(
            f"{name} must have shape {expected} ({what}); got shape {arr.shape}."
            + (
                " Transpose it if the components are on the first axis."
                if arr.ndim >= 1 and arr.shape[0] == trailing[-1]
                else ""
            )
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name} must be finite; it has {bad} NaN or infinite value(s).")
    if require_norm:
        norms = np.linalg.norm(arr, axis=-1)
        if np.any(norms == 0):
            raise InputError(
                f"{name} contains {int(np.count_nonzero(norms == 0))} zero quaternion(s), "
                "which are not rotations; drop them or use (0, 0, 0, 1) for the identity."
            )
    return arr


def as_quaternions(q, name="q", *, require_norm=True):
    """``q`` as a float64 array of shape (..., 4), checked finite (and non-zero with ``require_norm``).

    Raises :class:`~cryo_orient.validation.InputError` (or ``InputTypeError``) naming ``name``.
    """
    return _as_float_array(q, name, (4,), "quaternions (x, y, z, w)", require_norm=require_norm)


def as_unit_quaternions(q, name="q"):
    """``q`` as a new ``(n, 4)`` array of canonical unit quaternions, one per projection."""
    q = canonical(as_quaternions(q, name))
    if q.ndim != 2:
        raise InputError(f"{name} must have shape (n, 4), one quaternion per projection; got shape {q.shape}.")
    return q


def _normalize(q):
    # Inputs are validated non-zero; dividing creates a new array so inputs are never touched.
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _as_count(n):
    try:
        if isinstance(n, bool):  # True would silently mean 1 sample.
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise InputTypeError(f"n must be a non-negative integer number of samples; got {n!r}.") from None
    if n < 0:
        raise InputError(f"n must be a non-negative integer number of samples; got {n}.")
    return n


def _as_box(coverage, offset, *, allow_empty):
    """Validate an Euler box given in units of pi, in (theta3, theta2, theta1) order."""
    out = []
    for name, value in (("coverage", coverage), ("offset", offset)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputTypeError(
                f"{name} must be 3 numbers (theta3, theta2, theta1) in units of pi; got {value!r}."
            ) from None
        if arr.shape != (3,):
            raise InputError(
                f"{name} must be 3 numbers (theta3, theta2, theta1) in units of pi; got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} must be finite; got {arr.tolist()}.")
        out.append(arr)
    coverage, offset = out
    names = ("theta3", "theta2", "theta1")
    for k in range(3):
        if coverage[k] < 0 or (coverage[k] == 0 and not allow_empty):
            need = ">= 0" if allow_empty else "> 0 (a zero-width box has probability 0)"
            raise InputError(f"coverage of {names[k]} must be {need}; got coverage={coverage.tolist()} (units of pi).")
        if offset[k] < 0:
            raise InputError(
                f"offset of {names[k]} must be >= 0 (angles are in [0, 2pi) x [0, pi] x "
                f"[0, 2pi)); got offset={offset.tolist()} (units of pi)."
            )
        # A small tolerance so that e.g. offset 1.6 + coverage 0.4 is not rejected for rounding.
        if offset[k] + coverage[k] > FULL_COVERAGE[k] * (1 + 1e-12):
            raise InputError(
                f"the box for {names[k]} is [{offset[k]}, {offset[k] + coverage[k]}] pi, "
                f"beyond its range [0, {FULL_COVERAGE[k]:g}] pi; reduce offset or coverage "
                f"(got coverage={coverage.tolist()}, offset={offset.tolist()})."
            )
    return coverage, offset


# --------------------------------------------------------------------------------------------
# Quaternion algebra
# --------------------------------------------------------------------------------------------


def canonical(q):
    """Normalise quaternions and choose the sign with ``w >= 0``.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``.

    Returns
    -------
    ndarray, shape (..., 4)
        Unit quaternions of the same rotations, with ``w > 0``, or, where ``w == 0``, with the
        first non-zero of ``x, y, z`` positive (the rule of scipy's ``as_quat(canonical=True)``),
        so that every rotation has exactly one canonical quaternion.
    """
    q = _normalize(as_quaternions(q))
    x, y, z, w = np.moveaxis(q, -1, 0)
    flip = np.where(
        w != 0,
        w < 0,
        np.where(x != 0, x < 0, np.where(y != 0, y < 0, z < 0)),
    )
    return np.where(flip[..., None], -q, q)


def multiply(q1, q2):
    """Hamilton product of quaternions in scalar-last layout.

    Composition of rotations: ``quaternion_to_matrix(multiply(a, b))`` equals
    ``quaternion_to_matrix(a) @ quaternion_to_matrix(b)`` (apply ``b`` first), as scipy's
    ``Rotation.from_quat(a) * Rotation.from_quat(b)``.

    Parameters
    ----------
    q1, q2 : array_like, shape (..., 4)
        Quaternions ``(x, y, z, w)``; leading dimensions broadcast. They need not be unit.

    Returns
    -------
    ndarray, shape (..., 4)
        The product, not normalised.
    """
    a = as_quaternions(q1, "q1", require_norm=False)
    b = as_quaternions(q2, "q2", require_norm=False)
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def conjugate(q):
    """Quaternion conjugate ``(-x, -y, -z, w)``: the inverse rotation of a unit quaternion.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Quaternions ``(x, y, z, w)``.

    Returns
    -------
    ndarray, shape (..., 4)
    """
    q = as_quaternions(q, require_norm=False)
    return q * np.array([-1.0, -1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def _as_euler(angles):
    return _as_float_array(angles, "angles", (3,), "Euler angles (theta3, theta2, theta1)")


def euler_to_quaternion(angles):
    """Quaternions of the paper's ZYZ Euler angles.

    Parameters
    ----------
    angles : array_like, shape (..., 3)
        ``(theta3, theta2, theta1)`` in radians; ``R = Rz(theta3) Ry(theta2) Rz(theta1)``.

    Returns
    -------
    ndarray, shape (..., 4)
        Canonical unit quaternions ``(x, y, z, w)`` (see :func:`canonical`), equal to
        ``Rotation.from_euler("ZYZ", angles).as_quat(canonical=True)``.
    """
    t3, t2, t1 = np.moveaxis(_as_euler(angles), -1, 0)
    # Closed form of qz(theta3) * qy(theta2) * qz(theta1).
    c2, s2 = np.cos(t2 / 2), np.sin(t2 / 2)
    plus, minus = (t3 + t1) / 2, (t3 - t1) / 2
    q = np.stack(
        [-s2 * np.sin(minus), s2 * np.cos(minus), c2 * np.sin(plus), c2 * np.cos(plus)],
        axis=-1,
    )
    return canonical(q)


def _wrap_2pi(a):
    a = np.mod(a, TWO_PI)
    # mod of a tiny negative number rounds to exactly 2 pi, outside [0, 2 pi).
    return np.where(a >= TWO_PI, 0.0, a)


def quaternion_to_euler(q):
    """The paper's ZYZ Euler angles of quaternions, in canonical ranges.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``; they are normalised.

    Returns
    -------
    ndarray, shape (..., 3)
        ``(theta3, theta2, theta1)`` with ``theta3, theta1`` in ``[0, 2 pi)`` and ``theta2`` in
        ``[0, pi]``. At gimbal lock (``theta2`` within about 1e-12 rad of 0 or pi) ``theta1``
        is set to 0 and ``theta3`` carries the in-plane rotation.
    """
    x, y, z, w = np.moveaxis(_normalize(as_quaternions(q)), -1, 0)
    # From q = (-s sin((t3-t1)/2), s cos((t3-t1)/2), c sin((t3+t1)/2), c cos((t3+t1)/2)) with
    # c = cos(t2/2) >= 0, s = sin(t2/2) >= 0. Working on q rather than on R avoids arccos of
    # R[2, 2], which is inaccurate for small tilts.
    cos_half = np.hypot(w, z)
    sin_half = np.hypot(x, y)
    t2 = 2.0 * np.arctan2(sin_half, cos_half)
    half_sum = np.arctan2(z, w)
    half_diff = np.arctan2(-x, y)
    tol = 5e-13
    # theta1 = 0 at gimbal lock: t3 = 2 * half_sum (t2 = 0) or t3 = 2 * half_diff (t2 = pi).
    half_sum = np.where(cos_half < tol, half_diff, half_sum)
    half_diff = np.where(sin_half < tol, half_sum, half_diff)
    t3 = _wrap_2pi(half_sum + half_diff)
    t1 = _wrap_2pi(half_sum - half_diff)
    return np.stack([t3, t2, t1], axis=-1)


def quaternion_to_matrix(q):
    """Rotation matrices of quaternions.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``; they are normalised.

    Returns
    -------
    ndarray, shape (..., 3, 3)
        Rotation matrices ``R``, acting on column vectors (``R @ v``).
    """
    x, y, z, w = np.moveaxis(_normalize(as_quaternions(q)), -1, 0)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = [
        [1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)],
        [2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)],
        [2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quaternion(R, *, atol=1e-6):
    """Quaternions of rotation matrices.

    Parameters
    ----------
    R : array_like, shape (..., 3, 3)
        Rotation matrices (orthonormal, determinant +1).
    atol : float, optional
        Tolerance on ``max |R^T R - I|`` and ``|det R - 1|``; matrices further from a rotation
        raise, rather than being silently projected.

    Returns
    -------
    ndarray, shape (..., 4)
        Canonical unit quaternions ``(x, y, z, w)``.
    """
    R = _as_float_array(R, "R", (3, 3), "rotation matrices")
    if R.size:
        gram = np.swapaxes(R, -1, -2) @ R
        ortho_err = float(np.max(np.abs(gram - np.eye(3))))
        det_err = float(np.max(np.abs(np.linalg.det(R) - 1)))
        if ortho_err > atol or det_err > atol:
            raise InputError(
                "R must be rotation matrices (orthonormal with determinant +1); got "
                f"max |R^T R - I| = {ortho_err:.3g} and max |det R - 1| = {det_err:.3g} "
                f"(atol={atol:g}). Orthonormalise them (e.g. by SVD) or raise atol."
            )
    r = {(i, j): R[..., i, j] for i in range(3) for j in range(3)}
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    # Shepperd's method: build q from whichever of 4w^2, 4x^2, 4y^2, 4z^2 is largest, so the
    # square root and the divisions are never close to 0.
    cands = np.stack([r[0, 0], r[1, 1], r[2, 2], trace], axis=-1)
    pick = np.argmax(cands, axis=-1)
    out = np.empty(R.shape[:-2] + (4,))
    sq = {
        0: 1 + 2 * r[0, 0] - trace,
        1: 1 + 2 * r[1, 1] - trace,
        2: 1 + 2 * r[2, 2] - trace,
        3: 1 + trace,
    }
    # Each candidate gives (x, y, z, w) up to a common factor 4 * (its big component).
    forms = {
        0: (sq[0], r[1, 0] + r[0, 1], r[0, 2] + r[2, 0], r[2, 1] - r[1, 2]),
        1: (r[1, 0] + r[0, 1], sq[1], r[2, 1] + r[1, 2], r[0, 2] - r[2, 0]),
        2: (r[0, 2] + r[2, 0], r[2, 1] + r[1, 2], sq[2], r[1, 0] - r[0, 1]),
        3: (r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], sq[3]),
    }
    for k, comps in forms.items():
        mask = pick == k
        out[mask] = np.stack(comps, axis=-1)[mask]
    return canonical(out)


def euler_to_matrix(angles):
    """Rotation matrices ``Rz(theta3) @ Ry(theta2) @ Rz(theta1)`` of the paper's Euler angles.

    Parameters
    ----------
    angles : array_like, shape (..., 3)
        ``(theta3, theta2, theta1)`` in radians.

    Returns
    -------
    ndarray, shape (..., 3, 3)
        Rotation matrices; the paper's ASTRA matrix is their transpose.
    """
    t3, t2, t1 = np.moveaxis(_as_euler(angles), -1, 0)
    c3, s3 = np.cos(t3), np.sin(t3)
    c2, s2 = np.cos(t2), np.sin(t2)
    c1, s1 = np.cos(t1), np.sin(t1)
    rows = [
        [c3 * c2 * c1 - s3 * s1, -c3 * c2 * s1 - s3 * c1, c3 * s2],
        [s3 * c2 * c1 + c3 * s1, -s3 * c2 * s1 + c3 * c1, s3 * s2],
        [-s2 * c1, s2 * s1, c2],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def viewing_direction(q):
    """Viewing (projection) direction ``R^T e_z`` in the volume frame.

    This is the paper's ASTRA ray direction; it does not depend on the in-plane angle
    ``theta3`` and equals ``Rz(-theta1) @ Ry(-theta2) @ e_z``.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``.

    Returns
    -------
    ndarray, shape (..., 3)
        Unit vectors, e.g. to plot the distribution of directions on the sphere.
    """
    x, y, z, w = np.moveaxis(_normalize(as_quaternions(q)), -1, 0)
    # The third row of R.
    v = np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def distance(q1, q2):
    """Geodesic distance between rotations, ``2 arccos |<q1, q2>|``, computed stably.

    Parameters
    ----------
    q1, q2 : array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)``, normalised here; leading dimensions broadcast.

    Returns
    -------
    ndarray or float
        The angle of the rotation taking one to the other, in radians in ``[0, pi]``, of the
        broadcast leading shape.

    Notes
    -----
    ``arccos`` near 1 loses half of the significant digits (a 1e-7 rad angle comes out with
    about 1e-2 relative error in float64). Instead, with the angle between the unit 4-vectors
    ``phi = 2 atan2(|q1 - q2|, |q1 + q2|)``, which is accurate everywhere, the distance is
    ``2 min(phi, pi - phi)`` (the min accounts for ``q ~ -q``). The result is bi-invariant,
    ``d(a q1 b, a q2 b) = d(q1, q2)``, and invariant under inversion of both arguments.
    """
    a = _normalize(as_quaternions(q1, "q1"))
    b = _normalize(as_quaternions(q2, "q2"))
    phi = 2.0 * np.arctan2(np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1))
    d = 2.0 * np.minimum(phi, np.pi - phi)
    return d[()] if d.ndim == 0 else d


def distance_tf(q1, q2):
    """Geodesic distance between rotations in TensorFlow; see :func:`distance`.

    Differentiable, for float32 and float64 tensors; computed as in :func:`distance`, so it has
    no precision floor near 0. By contrast
    ``tensorflow_graphics.geometry.transformation.quaternion.relative_angle`` computes
    ``2 acos(<q1, q2>)`` after shrinking the dot product away from 1 by a few epsilon, which
    floors it in float32: any angle below about 3e-3 rad comes out as about 2.8e-3 rad.

    Parameters
    ----------
    q1, q2 : tf.Tensor or array_like, shape (..., 4)
        Non-zero quaternions ``(x, y, z, w)`` of the same floating dtype (float32 if built
        from Python lists); normalised here; leading dimensions broadcast.

    Returns
    -------
    tf.Tensor
        Distances in radians in ``[0, pi]``, of the broadcast leading shape.

    Notes
    -----
    The distance behaves like ``|q1 - q2|`` near ``q1 == q2`` (and near ``q1 == -q2``), a cone,
    so it has no derivative there. To keep training finite, norms are computed as
    ``sqrt(max(|v|^2, tiny))``: the gradient is 0 (a subgradient) where ``q1 == +-q2``
    exactly, and bounded nearby; the value changes by at most ``sqrt(tiny)`` (1e-19 in float32).
    Zero quaternions give NaN. Finiteness is not checked inside graphs; use :func:`distance`
    to validate data.
    """
    import tensorflow as tf  # noqa: PLC0415 (seconds to import; only the TF recovery and training need it)

    q1 = tf.convert_to_tensor(q1)
    q2 = tf.convert_to_tensor(q2)
    for name, t in (("q1", q1), ("q2", q2)):
        if not t.dtype.is_floating:
            raise InputTypeError(
                f"{name} must be a floating tensor (float32 or float64); got {t.dtype.name}. "
                f"Cast it with tf.cast({name}, tf.float32)."
            )
        if t.shape.rank == 0 or (t.shape.rank is not None and t.shape[-1] not in (None, 4)):
            raise InputError(f"{name} must have shape (..., 4) (quaternions (x, y, z, w)); got shape {t.shape}.")
    if q1.dtype != q2.dtype:
        raise InputTypeError(
            f"q1 and q2 must have the same dtype; got {q1.dtype.name} and {q2.dtype.name}. Cast one with tf.cast."
        )
    tiny = tf.constant(np.finfo(q1.dtype.as_numpy_dtype).tiny, dtype=q1.dtype)

    def safe_norm(v):
        return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(v), axis=-1), tiny))

    a = q1 / safe_norm(q1)[..., None]
    b = q2 / safe_norm(q2)[..., None]
    phi = 2.0 * tf.atan2(safe_norm(a - b), safe_norm(a + b))
    return 2.0 * tf.minimum(phi, np.pi - phi)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def uniform_so3(n, rng=None):
    """Rotations drawn uniformly (Haar measure) on SO(3).

    Parameters
    ----------
    n : int
        Number of rotations.
    rng : numpy.random.Generator, int or None, optional
        Random generator, or a seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    ndarray, shape (n, 4)
        Canonical unit quaternions ``(x, y, z, w)``.

    Notes
    -----
    A standard Gaussian in R^4 is isotropic, so its direction is uniform on S^3, which is the
    Haar measure on SO(3) after identifying ``q`` with ``-q``.
    """
    n = _as_count(n)
    return canonical(as_rng(rng).standard_normal((n, 4)))


def so3_grid(step_deg: float) -> np.ndarray:
    """A deterministic, near-uniform grid on SO(3) with about ``step_deg`` degrees between neighbours.

    Viewing directions on a Fibonacci sphere (``ceil(4π / s²)`` points, ``s`` the step in radians:
    equal areas of ``s²``) times ``ceil(2π / s)`` equally spaced in-plane angles, as the paper's
    Euler angles ``(theta3, theta2, theta1)`` = (in-plane, polar angle of the direction, its
    azimuth). Uniform directions and uniform in-plane angles are uniform on SO(3) (the Haar
    measure in ZYZ angles is ``sin(theta2) dtheta1 dtheta2 dtheta3``); the grid is its
    deterministic counterpart, as RELION's HEALPix directions times psi are.

    Parameters
    ----------
    step_deg : float
        Degrees, in (0, 90].

    Returns
    -------
    ndarray, shape (M, 4)
        Canonical unit quaternions; ``M ≈ 8π² / s³`` (about 30,000 at 7.5°, 120,000 at 5°).
    """
    if isinstance(step_deg, bool) or not isinstance(step_deg, (int, float, np.floating, np.integer)):
        raise InputTypeError(f"step_deg must be a number of degrees, got {type(step_deg).__name__}")
    if not (np.isfinite(step_deg) and 0 < step_deg <= 90):
        raise InputError(f"step_deg must be in (0, 90] degrees, got {step_deg!r}")
    s = np.radians(float(step_deg))
    n_dir, n_psi = math.ceil(4 * np.pi / s**2), math.ceil(2 * np.pi / s)
    i = np.arange(n_dir)
    theta2 = np.arccos(1 - (2 * i + 1) / n_dir)
    theta1 = np.mod(i * np.pi * (3 - np.sqrt(5)), TWO_PI)  # the golden angle
    theta3 = TWO_PI * np.arange(n_psi) / n_psi
    angles = np.stack(
        [
            np.repeat(theta3[None, :], n_dir, 0),
            np.repeat(theta2[:, None], n_psi, 1),
            np.repeat(theta1[:, None], n_psi, 1),
        ],
        axis=-1,
    )
    return euler_to_quaternion(angles.reshape(-1, 3))


def axis_angle(axis, angle) -> np.ndarray:
    """Unit quaternions ``(x, y, z, w)`` of rotations by ``angle`` (radians) about ``axis``.

    ``axis`` (shape (n, 3), any non-zero length: it is normalised) and ``angle`` (shape (n,))
    are not modified; the result is not canonicalised (``w = cos(angle / 2)``).
    """
    axis = np.asarray(axis, dtype=np.float64)
    half = np.asarray(angle, dtype=np.float64) / 2
    unit = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    return np.concatenate([unit * np.sin(half)[..., None], np.cos(half)[..., None]], axis=-1)


def perturb(q, angle_deg, rng=None):
    """Each orientation rotated by exactly ``angle_deg`` degrees about its own random axis.

    ``q' = δ ⊗ q`` with ``δ`` a rotation by ``angle_deg`` about an axis drawn uniformly on the
    sphere, so that ``distance(q, q') = angle_deg`` (in radians) for every orientation: a start
    of known error for a refinement.

    Parameters
    ----------
    q : array_like, shape (n, 4)
        Unit quaternions ``(x, y, z, w)``; not modified.
    angle_deg : float
        Degrees, in [0, 180].
    rng : numpy.random.Generator, int or None, optional

    Returns
    -------
    ndarray, shape (n, 4)
        Canonical unit quaternions.
    """
    q = as_unit_quaternions(q).reshape(-1, 4)
    angle = float(angle_deg)
    if not 0.0 <= angle <= 180.0:
        raise InputError(f"angle_deg must be in [0, 180] degrees, got {angle_deg!r}")
    axis = as_rng(rng).standard_normal((len(q), 3))
    return canonical(multiply(axis_angle(axis, np.full(len(q), np.radians(angle))), q))


def _acceptance(coverage, offset):
    """Haar probability of the Euler box: the Haar density in ZYZ angles is sin(theta2)/(8 pi^2)."""
    c3, c2, c1 = coverage
    o2 = offset[1]
    tilt = (math.cos(o2 * math.pi) - math.cos((o2 + c2) * math.pi)) / 2
    return (c3 / 2) * (c1 / 2) * max(tilt, 0.0)


def uniform_euler(n, coverage=FULL_COVERAGE, offset=(0.0, 0.0, 0.0), rng=None, *, return_euler=False):
    """Rotations with Euler angles drawn uniformly in a box (the paper's ``uniform_angles``).

    ``theta_k = (offset_k + coverage_k * U(0, 1)) * pi`` for ``k`` in
    ``(theta3, theta2, theta1)`` order. This is *not* uniform on SO(3): viewing directions
    crowd at the poles (``theta2`` near 0 and pi).

    Parameters
    ----------
    n : int
        Number of rotations.
    coverage : sequence of 3 floats, optional
        Widths of the box, in units of pi (the paper's ``AngCoverage``); each >= 0 (0 fixes
        that angle at its offset).
    offset : sequence of 3 floats, optional
        Lower corner of the box, in units of pi (the paper's ``AngShift``); each >= 0, with
        ``offset + coverage <= (2, 1, 2)``.
    rng : numpy.random.Generator, int or None, optional
        Random generator, or a seed for :func:`numpy.random.default_rng`.
    return_euler : bool, optional
        Also return the sampled angles.

    Returns
    -------
    q : ndarray, shape (n, 4)
        Canonical unit quaternions ``(x, y, z, w)``.
    angles : ndarray, shape (n, 3)
        Only if ``return_euler``: ``(theta3, theta2, theta1)`` in radians, as drawn (and thus
        in the box; they are the canonical angles except at gimbal lock).
    """
    n = _as_count(n)
    coverage, offset = _as_box(coverage, offset, allow_empty=True)
    u = as_rng(rng).random((n, 3))
    angles = (offset + coverage * u) * np.pi
    # Guard the rounding of (offset + coverage * u) * pi up to exactly 2 pi.
    angles[:, [0, 2]] = np.where(angles[:, [0, 2]] >= TWO_PI, 0.0, angles[:, [0, 2]])
    angles[:, 1] = np.minimum(angles[:, 1], np.pi)
    q = euler_to_quaternion(angles)
    return (q, angles) if return_euler else q


def uniform_so3_in_box(n, coverage=FULL_COVERAGE, offset=(0.0, 0.0, 0.0), rng=None, *, return_euler=False):
    """Haar-uniform rotations restricted to an Euler box (the paper's ``uniform_S2``).

    Uniform rotations are drawn in batches, converted to canonical Euler angles, and those
    with ``offset_k pi <= theta_k <= (offset_k + coverage_k) pi`` for all ``k`` kept, until
    exactly ``n`` are accepted. (The paper's version could return fewer than asked.)

    Parameters
    ----------
    n : int
        Number of rotations.
    coverage : sequence of 3 floats, optional
        Widths of the box in ``(theta3, theta2, theta1)`` order, in units of pi (the paper's
        ``AngCoverage``); each > 0.
    offset : sequence of 3 floats, optional
        Lower corner of the box, in units of pi; each >= 0, with
        ``offset + coverage <= (2, 1, 2)``.
    rng : numpy.random.Generator, int or None, optional
        Random generator, or a seed for :func:`numpy.random.default_rng`.
    return_euler : bool, optional
        Also return the canonical Euler angles of the samples.

    Returns
    -------
    q : ndarray, shape (n, 4)
        Canonical unit quaternions ``(x, y, z, w)``.
    angles : ndarray, shape (n, 3)
        Only if ``return_euler``: canonical ``(theta3, theta2, theta1)`` in radians.

    Raises
    ------
    ValueError
        If the box is empty or outside the canonical ranges, or if its Haar probability is
        below 1e-6 (over a million draws per sample).
    """
    n = _as_count(n)
    coverage, offset = _as_box(coverage, offset, allow_empty=False)
    rng = as_rng(rng)
    if np.all(offset == 0) and np.all(coverage >= FULL_COVERAGE):
        # Every canonical Euler triple is in the full box: no rejection needed.
        q = uniform_so3(n, rng)
        return (q, quaternion_to_euler(q)) if return_euler else q
    p = _acceptance(coverage, offset)
    if p < MIN_ACCEPTANCE:
        raise InputError(
            f"the Euler box coverage={coverage.tolist()}, offset={offset.tolist()} (units of pi) "
            f"has Haar probability {p:.3g}, below {MIN_ACCEPTANCE:g}: rejection sampling would "
            "need over a million draws per sample. Enlarge the box, or use uniform_euler."
        )
    lo = offset * np.pi
    hi = (offset + coverage) * np.pi
    kept_q, kept_e, count = [], [], 0
    # A generous cap; with the exact acceptance rate known this is never reached in practice.
    max_draws = int(50 * (n + 100) / p)
    drawn = 0
    while count < n:
        if drawn > max_draws:
            raise RuntimeError(
                f"rejection sampling accepted {count} of {n} after {drawn} draws, far fewer "
                f"than the expected rate {p:.3g}; this is a bug, please report it."
            )
        # Ask for ~10% more than expected, so that one batch usually suffices.
        batch = min(MAX_BATCH, int(math.ceil((n - count) / p * 1.1)) + 16)
        q = uniform_so3(batch, rng)
        e = quaternion_to_euler(q)
        ok = np.all((e >= lo) & (e <= hi), axis=-1)
        kept_q.append(q[ok])
        kept_e.append(e[ok])
        count += int(ok.sum())
        drawn += batch
    q = np.concatenate(kept_q)[:n] if kept_q else np.empty((0, 4))
    e = np.concatenate(kept_e)[:n] if kept_e else np.empty((0, 3))
    return (q, e) if return_euler else q


_METHODS = {
    "uniform_so3": "uniform_so3",
    "uniform_S2": "uniform_so3",
    "uniform_euler": "uniform_euler",
    "uniform_angles": "uniform_euler",
}


def sample_orientations(
    n, method="uniform_so3", coverage=FULL_COVERAGE, offset=(0.0, 0.0, 0.0), rng=None, *, return_euler=False
):
    """Sample orientations by name, as the paper's ``angles_gen_mode``.

    Parameters
    ----------
    n : int
        Number of orientations.
    method : {"uniform_so3", "uniform_euler", "uniform_S2", "uniform_angles"}
        ``"uniform_so3"`` (alias ``"uniform_S2"``, the paper's name): Haar-uniform, restricted
        to the Euler box by rejection when the box is not the full range
        (:func:`uniform_so3_in_box`). ``"uniform_euler"`` (alias ``"uniform_angles"``):
        Euler angles uniform in the box (:func:`uniform_euler`).
    coverage, offset : sequence of 3 floats, optional
        The Euler box in ``(theta3, theta2, theta1)`` order, in units of pi.
    rng : numpy.random.Generator, int or None, optional
        Random generator, or a seed for :func:`numpy.random.default_rng`.
    return_euler : bool, optional
        Also return the Euler angles ``(theta3, theta2, theta1)``.

    Returns
    -------
    q : ndarray, shape (n, 4)
        Canonical unit quaternions ``(x, y, z, w)``.
    angles : ndarray, shape (n, 3)
        Only if ``return_euler``.
    """
    kind = _METHODS.get(method) if isinstance(method, str) else None
    if kind is None:
        raise InputError(
            f"unknown sampling method {method!r}; valid methods are "
            + ", ".join(repr(m) for m in _METHODS)
            + " ('uniform_S2' and 'uniform_angles' are the paper's names)."
        )
    if kind == "uniform_euler":
        return uniform_euler(n, coverage, offset, rng, return_euler=return_euler)
    return uniform_so3_in_box(n, coverage, offset, rng, return_euler=return_euler)


def local_rotation_search(objective, *, step: float, max_iter: int, fatol: float, xatol: float = 1e-4):
    """Minimise ``objective(rotvec)`` over rotation vectors near 0 (Nelder–Mead).

    The local search that polishes a rotation found on a grid: the caller's ``objective`` applies
    the rotation vector to its starting rotation (on the left, its own way). The simplex starts
    at 0 with edges of ``step`` radians along each axis. Returns scipy's ``OptimizeResult``
    (``.x`` the best rotation vector, ``.fun`` its value).
    """
    return minimize(
        objective,
        np.zeros(3),
        method="Nelder-Mead",
        options={
            "maxiter": max_iter,
            "xatol": xatol,
            "fatol": fatol,
            "initial_simplex": np.vstack([np.zeros(3), step * np.eye(3)]),
        },
    )
