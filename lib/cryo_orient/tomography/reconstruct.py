"""Least-squares reconstruction of a volume from its projections at known orientations.

The forward model is :func:`cryo_orient.tomography.projection.project` (same geometry, same conventions:
see that module), so a reconstruction from simulated projections at the true orientations is the
"inverse crime" the paper's pipeline also commits (it used ASTRA for both).

Backends
--------
``"nufft"`` (CPU)
    Conjugate gradients on the normal equations ``(AᵀA + λI) v = Aᵀb``. ``AᵀA`` is applied as a
    convolution (the Toeplitz formulation of the Fourier-slice operator): with slice frequencies
    ``k`` and Hermitian weights ``w_k``, ``AᵀA v = K * v`` with the kernel
    ``K(r) = Re Σ_k w_k e^{i k·r} / S²`` on ``r ∈ [-(N-1), N-1]`` per axis, computed once with a
    type-1 NUFFT; each iteration is then two real FFTs of the zero-padded volume, independent of
    the number of projections. The detector's Nyquist row and column (even sizes) are left out of
    the data term: their Fourier values are not Hermitian-consistent, so keeping them would make
    the Toeplitz operator differ from ``backproject ∘ project``. Without them it is exact (tested).
``"astra"`` (GPU)
    ASTRA's ``CGLS3D_CUDA`` with the paper's ``parallel3d_vec`` geometry (the paper ran 100
    iterations, 300 for 5a1a). It runs exactly ``iterations`` steps: ``tol``, ``eps``,
    ``nthreads`` and ``progress`` do not apply, and regularisation, ``x0`` and ``callback`` are
    errors.
``"auto"``
    ``"astra"`` when a CUDA GPU is usable, else ``"nufft"``; always ``"nufft"`` when
    regularisation, ``x0`` or ``callback`` is given.

Stopping rule (NUFFT backend): stop when the normal-equation residual ``‖Aᵀb − (AᵀA + λI) v‖``
falls below ``tol × ‖Aᵀb‖``, or after ``iterations`` steps. On noisy or misoriented data CG
converges first on the well-determined low frequencies and later fits noise, so the iteration
count acts as a regulariser, as it did for the paper's fixed 100 CGLS iterations.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from cryo_orient.tomography import projection

__all__ = ["Reconstruction", "conjugate_gradients", "reconstruct", "normal_operator", "remove_detector_nyquist"]


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """A reconstructed volume and how it was obtained.

    ``residuals[k]`` is the relative normal-equation residual after ``k`` iterations (empty for
    ASTRA); ``stop_reason`` is ``"tolerance"`` or ``"iterations"``.
    """

    volume: np.ndarray
    backend: str
    iterations: int
    residuals: np.ndarray
    stop_reason: str
    seconds: float
    regularization: float


def remove_detector_nyquist(projections) -> np.ndarray:
    """Remove the Nyquist row and column of each image's spectrum (even sizes; odd: a copy).

    Those Fourier coefficients stand for two frequencies at once (±π) and the Fourier-slice
    model cannot give them consistent values; the NUFFT backend leaves them out of the fit.
    """
    p = np.asarray(projections)
    size = p.shape[-1]
    if size % 2:
        return p.copy()
    spectrum = np.fft.rfft2(np.fft.ifftshift(p, axes=(-2, -1)), axes=(-2, -1))
    spectrum[..., size // 2, :] = 0
    spectrum[..., :, -1] = 0
    out = np.fft.irfft2(spectrum, s=(size, size), axes=(-2, -1))
    return np.fft.fftshift(out, axes=(-2, -1)).astype(p.dtype, copy=False)


def _kept_points(matrices, size):
    """Slice frequencies and weights of the fitted (non-Nyquist) Fourier coefficients."""
    ky, _, weight = projection._slice_frequencies(size)
    pts = projection._slice_points(matrices, size)  # (3, N, size, size//2+1), (z, y, x)
    w = np.broadcast_to(weight / size**2, pts.shape[1:]).copy()
    if size % 2 == 0:
        w[:, size // 2, :] = 0
        w[:, :, -1] = 0
    keep = w.ravel() > 0
    return [p.ravel()[keep] for p in pts], w.ravel()[keep]


class _ToeplitzNormal:
    """``v ↦ AᵀA v`` as a linear convolution done with zero-padded real FFTs."""

    def __init__(self, matrices, size, shape, eps, nthreads):
        import finufft
        import scipy.fft

        self.shape = tuple(int(n) for n in shape)
        self.padded = tuple(scipy.fft.next_fast_len(2 * n - 1, real=True) for n in self.shape)
        self.workers = nthreads
        kernel_shape = tuple(2 * n - 1 for n in self.shape)  # r from -(N-1) to N-1
        pts, w = _kept_points(matrices, size)
        # One spreading thread unless asked: multithreaded spreading is not bit-reproducible.
        opts = {"nthreads": 1 if nthreads is None else int(nthreads)}
        kernel = finufft.nufft3d1(*pts, w.astype(np.complex128), kernel_shape, eps=eps, isign=+1, **opts).real
        circulant = np.zeros(self.padded)
        # Put K(r) at index r mod L on each axis (negative offsets wrap to the end).
        index = [np.arange(-(n - 1), n) % length for n, length in zip(self.shape, self.padded)]
        circulant[np.ix_(*index)] = kernel
        # Single precision halves the cost of the FFTs that dominate each iteration; the
        # operator stays accurate to ~1e-6 relative, far below what CG's iterates resolve.
        self.transfer = scipy.fft.rfftn(circulant, workers=self.workers).astype(np.complex64)

    def __call__(self, v):
        import scipy.fft

        spectrum = scipy.fft.rfftn(np.asarray(v, dtype=np.float32), s=self.padded, workers=self.workers)
        out = scipy.fft.irfftn(spectrum * self.transfer, s=self.padded, workers=self.workers)
        return out[tuple(slice(0, n) for n in self.shape)].astype(np.float64)


def normal_operator(quaternions, size, shape, *, eps=1e-9, nthreads=None):
    """The operator ``v ↦ AᵀA v`` of :func:`reconstruct`'s NUFFT backend, as a callable.

    Equal to ``backproject(remove_detector_nyquist(project(v)))`` up to the NUFFT tolerance and
    single-precision FFTs (about 1e-6 relative).
    """
    matrices = projection._rotation_matrices(quaternions)
    return _ToeplitzNormal(matrices, projection._check_size(size, shape), shape, eps, nthreads)


def _check_inputs(projections, quaternions, shape):
    p = np.asarray(projections)
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise ValueError(f"projections must have shape (N, size, size), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("projections contain NaN or infinite values; fix or drop those images first")
    q = np.asarray(quaternions, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"quaternions must have shape (N, 4), got {q.shape}")
    if len(q) != len(p):
        raise ValueError(f"got {len(p)} projections but {len(q)} quaternions; pass one orientation per image")
    if not np.all(np.isfinite(q)) or np.any(np.linalg.norm(q, axis=1) < 1e-12):
        raise ValueError("quaternions must be finite and non-zero")
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be 3 positive integers (nz, ny, nx), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive integers (nz, ny, nx), got {shape}")
    return p, q, shape


def _reconstruct_nufft(p, q, shape, iterations, tol, regularization, x0, eps, nthreads, progress, callback):
    matrices = projection._rotation_matrices(q)
    size = p.shape[-1]
    normal = _ToeplitzNormal(matrices, size, shape, eps, nthreads)
    rhs = projection.backproject(remove_detector_nyquist(p.astype(np.float64)), q, shape, "nufft",
                                 eps=eps, nthreads=nthreads)

    def apply(v):
        return normal(v) + regularization * v

    return conjugate_gradients(apply, rhs, x0=x0, iterations=iterations, tol=tol, callback=callback,
                               progress=progress)


def conjugate_gradients(apply, rhs, *, x0=None, iterations=100, tol=0.0, callback=None, progress=False):
    """Conjugate gradients for ``apply(x) = rhs`` with ``apply`` symmetric positive semi-definite.

    Stops after ``iterations`` steps or when ``‖rhs − apply(x)‖ ≤ tol ‖rhs‖``; calls
    ``callback(k, x)`` (a copy) after step ``k``. Returns ``(x, relative residuals per step,
    stop reason, steps)``. With ``rhs = 0`` the minimum-norm solution 0 is returned, whatever ``x0``.
    """
    from tqdm.auto import tqdm

    shape = np.shape(rhs)
    rhs_norm = np.linalg.norm(rhs)
    if rhs_norm == 0:
        return np.zeros(shape), np.zeros(1), "tolerance", 0
    x = np.zeros(shape) if x0 is None else np.array(x0, dtype=np.float64)
    r = rhs - apply(x) if x0 is not None else np.array(rhs, dtype=np.float64)
    d = r.copy()
    rr = float(np.vdot(r, r))
    residuals = [np.sqrt(rr) / rhs_norm]
    stop, k = "iterations", 0
    with tqdm(total=iterations, disable=not progress, desc="reconstruct (CG)", unit="it") as bar:
        while k < iterations:
            if residuals[-1] <= tol:
                stop = "tolerance"
                break
            Ad = apply(d)
            alpha = rr / float(np.vdot(d, Ad))
            x += alpha * d
            r -= alpha * Ad
            rr_new = float(np.vdot(r, r))
            d = r + (rr_new / rr) * d
            rr = rr_new
            k += 1
            residuals.append(np.sqrt(rr) / rhs_norm)
            if callback is not None:
                callback(k, x.copy())
            bar.update(1)
            bar.set_postfix(residual=f"{residuals[-1]:.2e}")
    if residuals[-1] <= tol:
        stop = "tolerance"
    return x, np.asarray(residuals), stop, k


def _reconstruct_astra(p, q, shape, iterations):
    import astra

    matrices = projection._rotation_matrices(q)
    vol_geom, proj_geom = projection._astra_geometry(matrices, p.shape[-1], shape)
    sino = np.ascontiguousarray(np.transpose(p, (1, 0, 2)), dtype=np.float32)  # (row, angle, column)
    sino_id = astra.data3d.create("-proj3d", proj_geom, sino)
    vol_id = astra.data3d.create("-vol", vol_geom, 0.0)
    alg_id = None
    try:
        cfg = astra.astra_dict("CGLS3D_CUDA")
        cfg["ReconstructionDataId"] = vol_id
        cfg["ProjectionDataId"] = sino_id
        alg_id = astra.algorithm.create(cfg)
        astra.algorithm.run(alg_id, int(iterations))
        return np.asarray(astra.data3d.get(vol_id), dtype=np.float64)
    finally:
        if alg_id is not None:
            astra.algorithm.delete(alg_id)
        astra.data3d.delete([sino_id, vol_id])


def reconstruct(projections, quaternions, shape, backend="auto", *, iterations=100, tol=1e-4,
                regularization=0.0, x0=None, eps=1e-9, nthreads=None, progress=False,
                callback=None) -> Reconstruction:
    """Reconstruct a volume from projections at known orientations (least squares).

    Parameters
    ----------
    projections : array_like, shape (N, size, size)
        Raw (not standardised) images indexed ``[y, x]``, centred at pixel ``size // 2``.
        Not modified.
    quaternions : array_like, shape (N, 4)
        Their orientations, scalar-last ``(x, y, z, w)`` (convention of
        :mod:`cryo_orient.tomography.projection`).
    shape : tuple of 3 ints
        The volume grid ``(nz, ny, nx)``, voxel = pixel.
    backend : {"auto", "nufft", "astra"}
        See the module docstring.
    iterations : int
        Maximum number of CG (or CGLS) iterations.
    tol : float
        NUFFT backend: stop when the relative normal-equation residual is below ``tol``.
    regularization : float
        Tikhonov weight ``λ ≥ 0`` (NUFFT backend), in the units of ``AᵀA`` (whose largest
        eigenvalue is about the number of projections times the detector side).
    x0 : array_like, optional
        Starting volume (NUFFT backend; default zeros).
    eps : float
        NUFFT tolerance.
    nthreads : int, optional
        Threads for finufft and the FFTs. By default the two type-1 transforms (the Toeplitz kernel
        and ``Aᵀp``) spread with one thread, so that reruns are bit-identical (finufft's
        multithreaded spreading adds in a timing-dependent order), and the FFTs use one worker.
    progress : bool
        Show a progress bar per iteration.
    callback : callable, optional
        NUFFT backend: called as ``callback(iteration, volume)`` after every iteration (a copy of
        the iterate), e.g. to follow the FSC.

    Returns
    -------
    Reconstruction
        ``.volume`` (float64, ``shape``) and the residual history.
    """
    p, q, shape = _check_inputs(projections, quaternions, shape)
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be a non-negative number, got {regularization!r}")
    if x0 is not None and np.shape(x0) != shape:
        raise ValueError(f"x0 must have the volume shape {shape}, got {np.shape(x0)}")
    nufft_only = bool(regularization) or x0 is not None or callback is not None
    # "auto" must not turn a call that works on a CPU into an error on a GPU machine.
    backend = "nufft" if backend == "auto" and nufft_only else projection.resolve_backend(backend)
    start = time.perf_counter()
    if backend == "astra":
        if nufft_only:
            raise ValueError("the ASTRA backend (CGLS3D_CUDA) supports neither regularization, x0 nor callback; "
                             "use backend='nufft' for those")
        volume = _reconstruct_astra(p, q, shape, iterations)
        return Reconstruction(volume, backend, int(iterations), np.empty(0), "iterations",
                              time.perf_counter() - start, 0.0)
    volume, residuals, stop, k = _reconstruct_nufft(p, q, shape, int(iterations), float(tol),
                                                    float(regularization), x0, eps, nthreads, progress, callback)
    return Reconstruction(volume, backend, k, residuals, stop, time.perf_counter() - start, float(regularization))
