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

import functools

import numpy as np

from cryo_orient.geometry import rotations

BACKENDS = ("auto", "nufft", "astra")


def default_size(shape) -> int:
    """Detector side used by the paper: ``int(norm(volume.shape))`` (116 for 5j0n)."""
    return int(np.sqrt(np.sum(np.asarray(shape, dtype=np.float64) ** 2)))


@functools.cache
def astra_available() -> bool:
    """Whether ASTRA is importable and sees a CUDA GPU (its 3-D projectors need one)."""
    try:
        import astra
    except ImportError:
        return False
    try:
        return bool(astra.use_cuda())
    except Exception:  # a broken CUDA install must not take the CPU path down with it
        return False


def resolve_backend(backend: str) -> str:
    """Turn ``"auto"`` into a concrete backend and check that the requested one can run here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown projection backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "astra" if astra_available() else "nufft"
    if backend == "astra" and not astra_available():
        raise RuntimeError(
            "backend='astra' needs ASTRA with a CUDA GPU, and none is usable here "
            "(astra.use_cuda() is False or astra is not installed); use backend='nufft' or 'auto'"
        )
    return backend


def _check_volume(volume) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be a 3-D array indexed [z, y, x], got shape {volume.shape}")
    if min(volume.shape) < 1:
        raise ValueError(f"volume has an empty axis: shape {volume.shape}")
    if not np.issubdtype(volume.dtype, np.floating):
        volume = volume.astype(np.float32)
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume contains NaN or inf values; clean the map before projecting")
    return volume


def _rotation_matrices(quaternions) -> np.ndarray:
    q = np.asarray(quaternions, dtype=np.float64)
    if q.ndim == 1:
        raise ValueError(
            f"quaternions must have shape (N, 4), got {q.shape}; wrap a single one as q[None]"
        )
    return rotations.quaternion_to_matrix(q)


def _check_size(size, shape) -> int:
    if size is None:
        return default_size(shape)
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _slice_frequencies(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies (radians per pixel) of the half spectrum that ``irfft2`` consumes.

    Returns ``ky`` (size,), ``kx`` (size // 2 + 1,) and the Hermitian weight of each ``kx``
    column (1 for the columns that stand for themselves, 2 for those that stand for a pair).
    """
    ky = 2 * np.pi * np.fft.fftfreq(size)
    kx = 2 * np.pi * np.fft.rfftfreq(size)
    weight = np.full(kx.shape, 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    return ky, kx, weight


def _slice_points(matrices: np.ndarray, size: int) -> np.ndarray:
    """Volume-frame frequencies ``Rᵀ (kx, ky, 0)`` of every slice, shape (3, N, size, size//2+1),
    ordered (z, y, x) to match the volume's array axes."""
    ky, kx, _ = _slice_frequencies(size)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    # Rᵀ (kx, ky, 0) = kx · R[0, :] + ky · R[1, :] (rows of R), components in (x, y, z) order.
    pts = kxx * matrices[:, 0, :, None, None] + kyy * matrices[:, 1, :, None, None]
    # pts[n, c] with c = x, y, z  ->  reorder to (z, y, x) and put the axis first.
    return np.moveaxis(pts[:, ::-1], 1, 0)


def _complex_dtype(real_dtype) -> np.dtype:
    return np.dtype(np.complex128) if np.dtype(real_dtype) == np.float64 else np.dtype(np.complex64)


def _nufft_eps(eps, real_dtype) -> float:
    if eps is not None:
        return float(eps)
    return 1e-12 if np.dtype(real_dtype) == np.float64 else 1e-6


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _progress(total, enabled, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="proj")


def _project_nufft(volume, matrices, size, eps, batch_size, nthreads, progress):
    import finufft

    real_dtype = np.float64 if volume.dtype == np.float64 else np.float32
    cdtype = _complex_dtype(real_dtype)
    coeffs = volume.astype(cdtype)
    out = np.empty((len(matrices), size, size), dtype=real_dtype)
    opts = {} if nthreads is None else {"nthreads": int(nthreads)}
    plan = finufft.Plan(2, volume.shape, eps=_nufft_eps(eps, real_dtype), isign=-1, dtype=cdtype, **opts)
    with _progress(len(matrices), progress, "project") as bar:
        for sl in _batches(len(matrices), batch_size):
            pts = _slice_points(matrices[sl], size).astype(real_dtype)
            plan.setpts(*(p.ravel() for p in pts))
            spectrum = plan.execute(coeffs).reshape(pts.shape[1:])
            images = np.fft.irfft2(spectrum, s=(size, size), axes=(-2, -1))
            out[sl] = np.fft.fftshift(images, axes=(-2, -1))
            bar.update(sl.stop - sl.start)
    return out


def _backproject_nufft(projections, matrices, shape, eps, batch_size, nthreads, progress):
    import finufft

    real_dtype = np.float64 if projections.dtype == np.float64 else np.float32
    cdtype = _complex_dtype(real_dtype)
    size = projections.shape[-1]
    _, _, weight = _slice_frequencies(size)
    scale = (weight / size**2).astype(real_dtype)
    out = np.zeros(shape, dtype=np.float64)
    opts = {"nthreads": 1 if nthreads is None else int(nthreads)}  # reproducible: see backproject
    plan = finufft.Plan(1, tuple(shape), eps=_nufft_eps(eps, real_dtype), isign=+1, dtype=cdtype, **opts)
    with _progress(len(matrices), progress, "backproject") as bar:
        for sl in _batches(len(matrices), batch_size):
            pts = _slice_points(matrices[sl], size).astype(real_dtype)
            # Adjoint of fftshift -> irfft2: ifftshift, then the forward real FFT with the
            # Hermitian weights that irfft2 applied implicitly.
            spectrum = np.fft.rfft2(np.fft.ifftshift(projections[sl], axes=(-2, -1)), axes=(-2, -1))
            spectrum = (spectrum * scale).astype(cdtype)
            plan.setpts(*(p.ravel() for p in pts))
            out += plan.execute(spectrum.ravel()).real
            bar.update(sl.stop - sl.start)
    return out.astype(real_dtype)


def _astra_geometry(matrices, size, shape):
    import astra

    nz, ny, nx = shape
    # ASTRA centres the grid at its geometric middle ((n - 1) / 2); shift the windows so that
    # index n // 2 sits at the origin, as in our convention.
    lo = [-(n // 2) - 0.5 for n in (nx, ny, nz)]
    vol_geom = astra.create_vol_geom(ny, nx, nz, lo[0], lo[0] + nx, lo[1], lo[1] + ny, lo[2], lo[2] + nz)
    ray, u, v = matrices[:, 2, :], matrices[:, 0, :], matrices[:, 1, :]
    offset = size // 2 - (size - 1) / 2  # 0.5 for even sizes: detector pixel size // 2 at origin
    d = -offset * (u + v)
    vectors = np.concatenate([ray, d, u, v], axis=1)
    proj_geom = astra.create_proj_geom("parallel3d_vec", size, size, vectors)
    return vol_geom, proj_geom


def _project_astra(volume, matrices, size, batch_size, progress):
    import astra

    out = np.empty((len(matrices), size, size), dtype=np.float32)
    vol = np.ascontiguousarray(volume, dtype=np.float32)
    with _progress(len(matrices), progress, "project (astra)") as bar:
        for sl in _batches(len(matrices), batch_size):
            vol_geom, proj_geom = _astra_geometry(matrices[sl], size, volume.shape)
            sino_id, sino = astra.create_sino3d_gpu(vol, proj_geom, vol_geom)
            astra.data3d.delete(sino_id)
            out[sl] = np.transpose(sino, (1, 0, 2))  # ASTRA: (row, angle, column)
            bar.update(sl.stop - sl.start)
    return out.astype(volume.dtype, copy=False)


def _backproject_astra(projections, matrices, shape, batch_size, progress):
    import astra

    out = np.zeros(shape, dtype=np.float64)
    size = projections.shape[-1]
    with _progress(len(matrices), progress, "backproject (astra)") as bar:
        for sl in _batches(len(matrices), batch_size):
            vol_geom, proj_geom = _astra_geometry(matrices[sl], size, shape)
            sino = np.ascontiguousarray(np.transpose(projections[sl], (1, 0, 2)), dtype=np.float32)
            vol_id, vol = astra.create_backprojection3d_gpu(sino, proj_geom, vol_geom)
            astra.data3d.delete(vol_id)
            out += vol
            bar.update(sl.stop - sl.start)
    return out.astype(projections.dtype, copy=False)


def project(volume, quaternions, size=None, backend="auto", *, eps=None, batch_size=128,
            nthreads=None, progress=False) -> np.ndarray:
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
    matrices = _rotation_matrices(quaternions)
    size = _check_size(size, volume.shape)
    backend = resolve_backend(backend)
    if backend == "astra":
        return _project_astra(volume, matrices, size, batch_size, progress)
    return _project_nufft(volume, matrices, size, eps, batch_size, nthreads, progress)


def project_real_space(volume, quaternions, size=None, *, order=1) -> np.ndarray:
    """Slow reference projector: sum of the volume interpolated along each ray (same convention).

    Samples ``V(Rᵀ (x, y, z))`` on the detector grid times ``size`` unit steps in ``z`` with
    spline interpolation of ``order`` (1 = trilinear, zero outside the volume) and sums them. It
    is independent of the Fourier machinery, so tests use it to check :func:`project` at
    arbitrary rotations, and ``make bench`` uses it as the baseline. Returns float64.
    """
    from scipy import ndimage

    volume = _check_volume(volume)
    matrices = _rotation_matrices(quaternions)
    size = _check_size(size, volume.shape)
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


def backproject(projections, quaternions, shape, backend="auto", *, eps=None, batch_size=128,
                nthreads=None, progress=False) -> np.ndarray:
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
        raise ValueError(f"projections must have shape (N, size, size), got {projections.shape}")
    if not np.issubdtype(projections.dtype, np.floating):
        projections = projections.astype(np.float32)
    matrices = _rotation_matrices(quaternions)
    if len(matrices) != len(projections):
        raise ValueError(
            f"got {len(projections)} projections but {len(matrices)} quaternions; "
            "pass one orientation per image"
        )
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers (nz, ny, nx), got {shape}")
    if not np.all(np.isfinite(projections)):
        raise ValueError("projections contain NaN or inf values")
    backend = resolve_backend(backend)
    if backend == "astra":
        return _backproject_astra(projections, matrices, shape, batch_size, progress)
    return _backproject_nufft(projections, matrices, shape, eps, batch_size, nthreads, progress)
