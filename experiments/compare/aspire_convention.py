"""ASPIRE-Python's rotation convention, and its conversion to cryo_orient's (plain numpy only).

Imported by ``aspire_orientations.py`` (in ``.venv-compare``, which has no cryo_orient) and by
``experiments/compare.py`` and the tests (in the main venv); it needs only numpy.

ASPIRE 0.14.3 (``aspire.volume.Volume.project`` and ``rotated_grids``): a volume array is indexed
``[z, y, x]`` and an image ``[y, x]``, as ours (:mod:`cryo_orient.projection`), both centred at
index ``n // 2``. The image's 2-D Fourier transform at ``(kx, ky)`` is the volume's at
``R_A @ (kx, ky, 0)`` (frequencies in ``(x, y, z)`` order). Ours is at ``R.T @ (kx, ky, 0)``, so
the same images come from ``R_A = R.T``: no transpose or flip of the image axes. Checked
numerically: ``Volume.project(R.T)`` of a random asymmetric volume reproduces
``cryo_orient.projection.project(volume, q)`` with correlation 1.0000; every other of the 16
combinations (``R`` or ``R.T``, times the 8 transposes/flips of the image) gives <= 0.68.
The rotations that ``CLSyncVoting.estimate_rotations`` returns are in the convention of
``Volume.project`` (up to the global rotation and handedness common lines cannot fix).
"""

from __future__ import annotations

import numpy as np

__all__ = ["aspire_to_matrices", "matrices_to_aspire", "aspire_to_quaternions", "matrix_to_quaternion"]


def _as_matrices(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {R.shape}")
    return R


def aspire_to_matrices(R_aspire) -> np.ndarray:
    """Our rotation matrices ``R`` (see cryo_orient.rotations) of ASPIRE's ``R_A``: ``R = R_A.T``."""
    return np.swapaxes(_as_matrices(R_aspire), -1, -2).copy()


def matrices_to_aspire(R) -> np.ndarray:
    """ASPIRE's ``R_A`` of our rotation matrices ``R`` (the inverse of :func:`aspire_to_matrices`)."""
    return np.swapaxes(_as_matrices(R), -1, -2).copy()


def matrix_to_quaternion(R) -> np.ndarray:
    """Scalar-last unit quaternions ``(x, y, z, w)`` with ``w >= 0`` of rotation matrices (Shepperd).

    Nearly orthogonal input (an estimate) is projected on SO(3) by SVD first.
    """
    R = _as_matrices(R)
    u, _, vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    R = u @ vt
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # The four candidates, each accurate where its own diagonal term is large.
    cand = np.stack([
        np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1],
                  1 + m00 + m11 + m22], -1),
        np.stack([1 + m00 - m11 - m22, R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0],
                  R[..., 2, 1] - R[..., 1, 2]], -1),
        np.stack([R[..., 0, 1] + R[..., 1, 0], 1 - m00 + m11 - m22, R[..., 1, 2] + R[..., 2, 1],
                  R[..., 0, 2] - R[..., 2, 0]], -1),
        np.stack([R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1], 1 - m00 - m11 + m22,
                  R[..., 1, 0] - R[..., 0, 1]], -1),
    ], -2)
    pick = np.argmax(np.stack([m00 + m11 + m22, m00, m11, m22], -1), axis=-1)
    q = np.take_along_axis(cand, pick[..., None, None], axis=-2)[..., 0, :]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:] < 0, -q, q)


def aspire_to_quaternions(R_aspire) -> np.ndarray:
    """Our quaternions (scalar-last, ``w >= 0``) of ASPIRE rotation matrices."""
    return matrix_to_quaternion(aspire_to_matrices(R_aspire))
