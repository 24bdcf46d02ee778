"""ASPIRE-Python's rotation convention, and its conversion to cryo_orient's (plain numpy only).

Used by ``experiments/compare.py`` and the tests (main venv) on the rotations that
``aspire_orientations.py`` stores in ASPIRE's convention; numpy only, like everything in this folder.

ASPIRE 0.14.3 (``aspire.volume.Volume.project`` and ``rotated_grids``): a volume array is indexed
``[z, y, x]`` and an image ``[y, x]``, as ours (:mod:`cryo_orient.tomography.projection`), both centred at
index ``n // 2``. The image's 2-D Fourier transform at ``(kx, ky)`` is the volume's at
``R_A @ (kx, ky, 0)`` (frequencies in ``(x, y, z)`` order). Ours is at ``R.T @ (kx, ky, 0)``, so
the same images come from ``R_A = R.T``: no transpose or flip of the image axes. Checked
numerically: ``Volume.project(R.T)`` of a random asymmetric volume reproduces
``cryo_orient.tomography.projection.project(volume, q)`` with correlation 1.0000; every other of the 16
combinations (``R`` or ``R.T``, times the 8 transposes/flips of the image) gives <= 0.69.
The rotations that ``CLSyncVoting.estimate_rotations`` returns are in the convention of
``Volume.project`` (up to the global rotation and handedness common lines cannot fix).

What the O(4) alignment (``cryo_orient.orientation.alignment.align``) can and cannot tell here: it absorbs
``R`` against ``R.T`` (the reflection) and also any transpose or flip of all images *about their
centre* (index ``n // 2``): such images are exact projections of the mirrored map at
``G R_i G`` with a fixed rotation ``G``, which ``q -> g q g`` undoes. Measured on 150 noiseless
5j0n test images (58 px for ASPIRE): the identity and the transpose give E_OR 0.07 deg, and so do
the centred flips; the plain ``[::-1]`` flips of these even-sized images move the centre by one
pixel and give 5-9 deg. So E_OR cannot check the image orientation; the projection check above
does, and the reconstructions (from our untransformed images at the aligned orientations) agree.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aspire_to_matrices", "matrices_to_aspire", "nearest_rotation"]


def _as_matrices(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {R.shape}")
    return R


def aspire_to_matrices(R_aspire) -> np.ndarray:
    """Our rotation matrices ``R`` (see cryo_orient.geometry.rotations) of ASPIRE's ``R_A``: ``R = R_A.T``."""
    return np.swapaxes(_as_matrices(R_aspire), -1, -2).copy()


def matrices_to_aspire(R) -> np.ndarray:
    """ASPIRE's ``R_A`` of our rotation matrices ``R`` (the inverse of :func:`aspire_to_matrices`)."""
    return np.swapaxes(_as_matrices(R), -1, -2).copy()


def nearest_rotation(R) -> np.ndarray:
    """The rotation matrices nearest (Frobenius) to estimates ``R`` (SVD, determinant +1), so that
    cryo_orient's strict ``rotations.matrix_to_quaternion`` accepts them."""
    u, _, vt = np.linalg.svd(_as_matrices(R))
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, -1] *= d[..., None]
    return u @ vt
