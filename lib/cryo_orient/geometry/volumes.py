"""Moving volumes rigidly (resampling under a rotation or reflection, rigid alignment), and
resampling a map to another voxel size and box.

Coordinates are ``(x, y, z)`` vectors about the voxel ``n // 2`` of each axis, as in
:mod:`cryo_orient.tomography.projection`; arrays are indexed ``[z, y, x]``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError

__all__ = ["transform_volume", "band_limit", "refine_alignment", "correlation", "resample_volume"]


def _check_matrix(matrix):
    M = np.asarray(matrix, dtype=np.float64)
    if M.shape != (3, 3) or not np.allclose(M @ M.T, np.eye(3), atol=1e-6):
        raise InputError(f"matrix must be a 3×3 orthogonal matrix (rotation or reflection), got {M!r}")
    return M


def transform_volume(volume, matrix, shape=None, *, order=1) -> np.ndarray:
    """``W(x) = V(M x)`` on a grid of ``shape`` (default: the volume's), zero outside.

    Parameters
    ----------
    volume : array_like, shape (nz, ny, nx)
        Not modified.
    matrix : array_like, shape (3, 3)
        Orthogonal ``M`` acting on ``(x, y, z)`` column vectors.
    shape : tuple of 3 ints, optional
        Output grid; both grids are centred at their ``n // 2`` voxels.
    order : int
        Spline order of the interpolation (1 = trilinear).
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise InputError(f"volume must be 3-D [z, y, x], got shape {v.shape}")
    M = _check_matrix(matrix)
    shape = v.shape if shape is None else tuple(int(n) for n in shape)
    flip = np.eye(3)[::-1]  # (x, y, z) <-> array order (z, y, x)
    A = flip @ M @ flip
    c_out = np.array(shape) // 2
    c_in = np.array(v.shape) // 2
    offset = c_in - A @ c_out
    return ndimage.affine_transform(
        v, A, offset=offset, output_shape=shape, order=order, mode="constant", cval=0.0, prefilter=order > 1
    )


def band_limit(volume) -> np.ndarray:
    """The volume without its Fourier coefficients beyond the Nyquist sphere, a new array.

    Coefficients with ``|k| > 1/2`` cycle per voxel (the corners of the Fourier cube, beyond the
    highest frequency resolved in every direction) are set to zero. A reconstruction from noisy
    images has noise there; resampling it onto another grid (a rotation, a crop to the map's box)
    folds that power back into the shells just below Nyquist, where an FSC with the true map
    reads it as lost signal. Measured on 5j0n at 65 px, SNR −5.8 dB: a refined map rotated onto
    the true map by trilinear interpolation had FSC 0.5 at 18.5 Å, and at 16.9 Å when
    band-limited first.

    Parameters
    ----------
    volume : array_like, shape (nz, ny, nx)
        Not modified.

    Returns
    -------
    ndarray
        float64, the volume's shape.
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise InputError(f"volume must be 3-D [z, y, x], got shape {v.shape}")
    kz, ky = np.fft.fftfreq(v.shape[0]), np.fft.fftfreq(v.shape[1])
    kx = np.fft.rfftfreq(v.shape[2])
    k2 = kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2
    spectrum = np.fft.rfftn(v)
    spectrum[k2 > 0.25] = 0.0
    return np.fft.irfftn(spectrum, s=v.shape, axes=(0, 1, 2))


def correlation(a, b, mask=None) -> float:
    """Pearson correlation of two volumes (optionally inside a mask)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if mask is not None:
        keep = np.asarray(mask, dtype=bool).ravel()
        a, b = a[keep], b[keep]
    a = a - a.mean()
    b = b - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def refine_alignment(volume, reference, matrix, *, max_iter=200):
    """Polish ``M`` (keeping its determinant) to maximise ``correlation(V(M x), reference)``.

    Local search (Nelder–Mead over a rotation vector applied on the left of ``M``) from a
    starting ``M``, e.g. :func:`cryo_orient.orientation.gauge.volume_frame`'s. Returns ``(M, correlation)``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    M0 = _check_matrix(matrix)

    def moved(vec):
        return Rotation.from_rotvec(vec).as_matrix() @ M0

    def negative(vec):
        return -correlation(transform_volume(volume, moved(vec), ref.shape), ref)

    res = rotations.local_rotation_search(negative, step=0.03, max_iter=max_iter, fatol=1e-6)
    start = -negative(np.zeros(3))
    if -res.fun <= start:
        return M0, start
    return moved(res.x), -float(res.fun)


def resample_volume(volume, voxel_size, new_voxel_size, box) -> np.ndarray:
    """A cubic map resampled to another voxel size, on a ``box``³ grid with the same centre.

    Parameters
    ----------
    volume : array_like, shape (n, n, n)
        The map, indexed ``[z, y, x]``, centre at voxel ``n // 2``. Not modified.
    voxel_size, new_voxel_size : float
        Å per voxel of the map and of the result.
    box : int
        Side of the result; the map is cropped or zero-padded about its centre.

    Returns
    -------
    ndarray, shape (box, box, box), float64

    Notes
    -----
    A coarser grid is first low-passed in Fourier space at its Nyquist frequency (a sharp
    spherical cut), so that it does not alias; the values are then cubic-spline interpolated
    at the new voxel centres. Equal voxel sizes only crop or pad.
    """
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"the map must be a cubic 3-D array, got shape {v.shape}; pad it to a cube first")
    if not (np.isfinite(voxel_size) and voxel_size > 0 and np.isfinite(new_voxel_size) and new_voxel_size > 0):
        raise ValueError(f"voxel sizes must be positive, got {voxel_size!r} and {new_voxel_size!r} Å")
    box = int(box)
    if box < 1:
        raise ValueError(f"box must be a positive integer, got {box!r}")
    n = v.shape[0]
    scale = new_voxel_size / voxel_size  # old voxels per new voxel
    if np.isclose(scale, 1.0, rtol=1e-6, atol=0):
        out = np.zeros((box,) * 3)
        lo_in, lo_out = max(n // 2 - box // 2, 0), max(box // 2 - n // 2, 0)
        m = min(n, box)
        out[lo_out : lo_out + m, lo_out : lo_out + m, lo_out : lo_out + m] = v[
            lo_in : lo_in + m, lo_in : lo_in + m, lo_in : lo_in + m
        ]
        return out
    if scale > 1:  # coarser: remove what the new grid cannot hold
        k = np.fft.fftfreq(n)
        kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
        keep = np.sqrt(kz**2 + ky**2 + kx**2) <= 0.5 / scale
        v = np.fft.ifftn(np.fft.fftn(v) * keep).real
    r = (np.arange(box) - box // 2) * scale + n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return ndimage.map_coordinates(v, [z, y, x], order=3, mode="constant", cval=0.0)
