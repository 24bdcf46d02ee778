"""The tomographic projection operator and its adjoint.

Convention (the one place it is written down)
---------------------------------------------
A volume ``V`` is an array indexed ``[z, y, x]`` (as ``mrcfile`` gives it); a projection image is
indexed ``[y, x]``. Voxel and pixel have the same size, and the centre of each axis is at index
``n // 2``. For a rotation ``R`` (the matrix of a unit quaternion, see :mod:`cryo_orient.geometry.rotations`)
the projection is the line integral

    p(x, y) = ∫ V(Rᵀ (x, y, z)) dz,

i.e. the volume is rotated by ``R`` and integrated along ``z``. The rays travel along ``Rᵀ e_z`` in
the volume frame and the image axes ``x`` and ``y`` are ``Rᵀ e_x`` and ``Rᵀ e_y``. This is the
geometry of the paper's ASTRA ``parallel3d_vec`` vectors (ray = R_A e_z, u = R_A e_x,
v = R_A e_y with R_A = Rᵀ). The identity gives ``V.sum(axis=0)``.

Backends
--------
``"nufft"`` (CPU, default without a GPU)
    The Fourier slice theorem: the 2-D Fourier transform of ``p`` at frequency ``k = (kx, ky)`` is
    the 3-D discrete-time Fourier transform of ``V`` at ``Rᵀ (kx, ky, 0)``, evaluated with a
    type-2 NUFFT (finufft), then an inverse real FFT. It is exact for the trigonometric
    interpolant of ``V``: frequencies that a rotation carries beyond the volume's Nyquist cube are
    its periodic images, which matters only for maps with energy at Nyquist. The adjoint is the
    type-1 NUFFT of the same points.
``"astra"`` (GPU only)
    ASTRA's ``parallel3d_vec`` geometry with CUDA forward and back projection, as in the paper.
    ASTRA has no CPU 3-D projector and its CUDA calls kill the process without a GPU, so every
    call is guarded by :func:`astra_available`. ASTRA interpolates linearly along rays, so the two
    backends agree to interpolation error, not to rounding.
``"auto"``
    ``"astra"`` when a CUDA GPU is usable, else ``"nufft"``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryo_orient.tomography import backends
from cryo_orient.tomography.backends import astra_available, check_size, default_size, rotation_matrices
from cryo_orient.validation import InputError

__all__ = [
    "BACKENDS",
    "astra_available",
    "backproject",
    "default_size",
    "project",
    "project_real_space",
    "resolve_backend",
]

#: The backend names callers may ask for (see :mod:`cryo_orient.tomography.backends`).
BACKENDS = backends.NAMES


def resolve_backend(backend: str) -> str:
    """Turn ``"auto"`` into a concrete backend name and check that the requested one can run here."""
    return backends.resolve(backend).name


def _check_volume(volume) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"volume must be a 3-D array indexed [z, y, x], got shape {volume.shape}")
    if min(volume.shape) < 1:
        raise InputError(f"volume has an empty axis: shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.floating):
        volume = volume.astype(np.float32)
    if not np.all(np.isfinite(volume)):
        raise InputError("volume contains NaN or inf values; clean the map before projecting")
    return volume


def project(
    volume, quaternions, size=None, backend="auto", *, eps=None, batch_size=128, nthreads=None, progress=False
) -> np.ndarray:
    """Project a volume along the orientations given as unit quaternions.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
        Density indexed ``[z, y, x]``. Not modified.
    quaternions : array_like, shape (N, 4)
        Orientations, scalar-last ``(x, y, z, w)``; normalised here.
    size : int, optional
        Detector side in pixels (voxel = pixel). Default :func:`default_size` of the volume.
    backend : {"auto", "nufft", "astra"}
        See the module docstring.
    eps : float, optional
        NUFFT tolerance; default 1e-12 for float64 volumes and 1e-6 for float32.
    batch_size : int
        Projections computed per NUFFT (or ASTRA) call; bounds the memory used.
    nthreads : int, optional
        Threads for finufft (default: all cores).
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray, shape (N, size, size)
        Images indexed ``[y, x]``, float64 for a float64 volume and float32 otherwise.
    """
    volume = _check_volume(volume)
    matrices = rotation_matrices(quaternions)
    size = check_size(size, volume.shape)
    return backends.resolve(backend).project(
        volume, matrices, size, eps=eps, batch_size=batch_size, nthreads=nthreads, progress=progress
    )


def project_real_space(volume, quaternions, size=None, *, order=1) -> np.ndarray:
    """Slow reference projector: sum of the volume interpolated along each ray (same convention).

    Samples ``V(Rᵀ (x, y, z))`` on the detector grid times ``size`` unit steps in ``z`` with
    spline interpolation of ``order`` (1 = trilinear, zero outside the volume) and sums them. It
    is independent of the Fourier machinery, so tests use it to check :func:`project` at
    arbitrary rotations, and ``make bench`` uses it as the baseline. Returns float64.
    """
    volume = _check_volume(volume)
    matrices = rotation_matrices(quaternions)
    size = check_size(size, volume.shape)
    r = np.arange(size) - size // 2
    y, x, z = np.meshgrid(r, r, r, indexing="ij")  # image [y, x], z along the ray
    lab = np.stack([x.ravel(), y.ravel(), z.ravel()]).astype(np.float64)
    centre = (np.array(volume.shape) // 2)[:, None]
    out = np.empty((len(matrices), size, size))
    for n, R in enumerate(matrices):
        xyz = R.T @ lab  # volume-frame (x, y, z) of every sample
        coords = xyz[::-1] + centre  # array order (z, y, x), centre at n // 2
        values = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0, prefilter=order > 1)
        out[n] = values.reshape(size, size, size).sum(axis=2)
    return out


def backproject(
    projections, quaternions, shape, backend="auto", *, eps=None, batch_size=128, nthreads=None, progress=False
) -> np.ndarray:
    """The adjoint of :func:`project`: ``<project(v), p> == <v, backproject(p)>``.

    Parameters
    ----------
    projections : ndarray, shape (N, size, size)
        Images indexed ``[y, x]``.
    quaternions : array_like, shape (N, 4)
        The orientations the images were projected along.
    shape : tuple of 3 ints
        The volume shape ``(nz, ny, nx)``.
    backend, eps, batch_size, progress
        As in :func:`project`.
    nthreads : int, optional
        Threads for finufft's spreading (default 1). finufft adds the threads' contributions to
        the grid in an order that depends on timing, so with more than one thread the result
        changes in the last digits from run to run; one thread keeps reruns bit-identical.

    Returns
    -------
    ndarray, shape ``shape``
        float64 for float64 images, float32 otherwise.
    """
    projections = np.asarray(projections)
    if projections.ndim != 3 or projections.shape[1] != projections.shape[2]:
        raise InputError(f"projections must have shape (N, size, size), got {projections.shape}")
    if not np.issubdtype(projections.dtype, np.floating):
        projections = projections.astype(np.float32)
    matrices = rotation_matrices(quaternions)
    if len(matrices) != len(projections):
        raise InputError(
            f"got {len(projections)} projections but {len(matrices)} quaternions; pass one orientation per image"
        )
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must be three positive integers (nz, ny, nx), got {shape}")
    if not np.all(np.isfinite(projections)):
        raise InputError("projections contain NaN or inf values")
    return backends.resolve(backend).backproject(
        projections, matrices, shape, eps=eps, batch_size=batch_size, nthreads=nthreads, progress=progress
    )
