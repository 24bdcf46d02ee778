"""Projector backends: the one place where "nufft" and "astra" are told apart.

A backend computes the projection operator ``A`` of :mod:`cryo_orient.tomography.projection`
(whose docstring states the convention), its adjoint ``Aᵀ``, and what least-squares
reconstruction needs from it (:mod:`cryo_orient.tomography.reconstruct`): either the normal
operator ``AᵀA`` and right-hand side ``Aᵀb`` for conjugate gradients, or a solver of its own.
:func:`resolve` chooses one by name (``"auto"``: ASTRA when a CUDA GPU is usable, else NUFFT),
and every caller goes through it.

``"nufft"`` (CPU): the Fourier slice theorem with finufft; ``AᵀA`` is applied as a convolution
(Toeplitz), exact once the detector's Nyquist row and column are left out of the data term. With
a CTF (:mod:`cryo_orient.tomography.ctf`) the forward model is ``A_i = C_i P_i``: the Toeplitz
weights are multiplied by ``C_i(k)²`` and ``Aᵀb`` backprojects the CTF-filtered images.
``"astra"`` has no CTF: ``resolve(..., needs={"ctf"})`` then picks NUFFT.
``"astra"`` (GPU only): ASTRA's ``parallel3d_vec`` geometry with CUDA forward and back projection
and its ``CGLS3D_CUDA`` solver, as in the paper. ASTRA's 3-D CUDA calls kill the process without
a GPU, so it is used only when :func:`astra_available` says so.

To add a backend: subclass :class:`ProjectorBackend` here, implement ``project`` and
``backproject`` (and ``normal_operator`` / ``normal_rhs`` or ``least_squares``), and add an
instance to :data:`BACKENDS`.
"""

from __future__ import annotations

import abc
import functools

import finufft
import numpy as np
import scipy.fft
from tqdm.auto import tqdm

from cryo_orient.geometry import rotations
from cryo_orient.tomography import ctf as ctf_model
from cryo_orient.validation import InputError, UnavailableError

__all__ = [
    "BACKENDS",
    "NAMES",
    "AstraBackend",
    "NufftBackend",
    "ProjectorBackend",
    "astra_available",
    "check_size",
    "default_size",
    "remove_detector_nyquist",
    "resolve",
    "rotation_matrices",
    "slice_frequencies",
    "slice_points",
]


def default_size(shape) -> int:
    """Detector side used by the paper: ``int(norm(volume.shape))`` (116 for 5j0n)."""
    return int(np.sqrt(np.sum(np.asarray(shape, dtype=np.float64) ** 2)))


def _astra():
    # ASTRA is optional (the gpu extra, absent from the CPU lock), so it is imported where it is
    # used; and it is used only once astra_available() has seen a GPU, since its 3-D CUDA calls
    # kill the process without one.
    import astra  # noqa: PLC0415

    return astra


@functools.cache
def astra_available() -> bool:
    """Whether ASTRA is importable and sees a CUDA GPU (its 3-D projectors need one)."""
    try:
        astra = _astra()
    except ImportError:
        return False
    try:
        return bool(astra.use_cuda())
    except Exception:  # a broken CUDA install must not take the CPU path down with it
        return False


def rotation_matrices(quaternions) -> np.ndarray:
    q = np.asarray(quaternions, dtype=np.float64)
    if q.ndim == 1:
        raise InputError(f"quaternions must have shape (N, 4), got {q.shape}; wrap a single one as q[None]")
    return rotations.quaternion_to_matrix(q)


def check_size(size, shape) -> int:
    if size is None:
        return default_size(shape)
    if int(size) != size or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    return int(size)


def slice_frequencies(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def slice_points(matrices: np.ndarray, size: int) -> np.ndarray:
    """Volume-frame frequencies ``Rᵀ (kx, ky, 0)`` of every slice, shape (3, N, size, size//2+1),
    ordered (z, y, x) to match the volume's array axes."""
    ky, kx, _ = slice_frequencies(size)
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
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _progress(total, enabled, desc):
    return tqdm(total=total, disable=not enabled, desc=desc, unit="proj")


def _project_nufft(volume, matrices, size, eps, batch_size, nthreads, progress):
    real_dtype = np.float64 if volume.dtype == np.float64 else np.float32
    cdtype = _complex_dtype(real_dtype)
    coeffs = volume.astype(cdtype)
    out = np.empty((len(matrices), size, size), dtype=real_dtype)
    opts = {} if nthreads is None else {"nthreads": int(nthreads)}
    plan = finufft.Plan(2, volume.shape, eps=_nufft_eps(eps, real_dtype), isign=-1, dtype=cdtype, **opts)
    with _progress(len(matrices), progress, "project") as bar:
        for sl in _batches(len(matrices), batch_size):
            pts = slice_points(matrices[sl], size).astype(real_dtype)
            plan.setpts(*(p.ravel() for p in pts))
            spectrum = plan.execute(coeffs).reshape(pts.shape[1:])
            images = np.fft.irfft2(spectrum, s=(size, size), axes=(-2, -1))
            out[sl] = np.fft.fftshift(images, axes=(-2, -1))
            bar.update(sl.stop - sl.start)
    return out


def _backproject_nufft(projections, matrices, shape, eps, batch_size, nthreads, progress):
    real_dtype = np.float64 if projections.dtype == np.float64 else np.float32
    cdtype = _complex_dtype(real_dtype)
    size = projections.shape[-1]
    _, _, weight = slice_frequencies(size)
    scale = (weight / size**2).astype(real_dtype)
    out = np.zeros(shape, dtype=np.float64)
    opts = {"nthreads": 1 if nthreads is None else int(nthreads)}  # reproducible: see backproject
    plan = finufft.Plan(1, tuple(shape), eps=_nufft_eps(eps, real_dtype), isign=+1, dtype=cdtype, **opts)
    with _progress(len(matrices), progress, "backproject") as bar:
        for sl in _batches(len(matrices), batch_size):
            pts = slice_points(matrices[sl], size).astype(real_dtype)
            # Adjoint of fftshift -> irfft2: ifftshift, then the forward real FFT with the
            # Hermitian weights that irfft2 applied implicitly.
            spectrum = np.fft.rfft2(np.fft.ifftshift(projections[sl], axes=(-2, -1)), axes=(-2, -1))
            spectrum = (spectrum * scale).astype(cdtype)
            plan.setpts(*(p.ravel() for p in pts))
            out += plan.execute(spectrum.ravel()).real
            bar.update(sl.stop - sl.start)
    return out.astype(real_dtype)


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


def _kept_points(matrices, size, ctf=None, pixel_size=None, weights=None):
    """Slice frequencies and weights of the fitted (non-Nyquist) Fourier coefficients; with a CTF
    each weight is multiplied by the CTF² of its image at its frequency (the data term of C·P),
    with per-image ``weights`` by the image's weight."""
    ky, _, weight = slice_frequencies(size)
    pts = slice_points(matrices, size)  # (3, N, size, size//2+1), (z, y, x)
    w = np.broadcast_to(weight / size**2, pts.shape[1:]).copy()
    if ctf is not None:
        c = ctf_model.ctf_values(ctf, size, pixel_size)  # same (N, size, size//2+1) layout
        w *= c * c
    if weights is not None:
        w *= np.asarray(weights, dtype=np.float64)[:, None, None]
    if size % 2 == 0:
        w[:, size // 2, :] = 0
        w[:, :, -1] = 0
    keep = w.ravel() > 0
    return [p.ravel()[keep] for p in pts], w.ravel()[keep]


class _ToeplitzNormal:
    """``v ↦ AᵀA v`` as a linear convolution done with zero-padded real FFTs."""

    def __init__(self, matrices, size, shape, eps, nthreads, ctf=None, pixel_size=None, weights=None):
        self.shape = tuple(int(n) for n in shape)
        self.padded = tuple(scipy.fft.next_fast_len(2 * n - 1, real=True) for n in self.shape)
        self.workers = nthreads
        kernel_shape = tuple(2 * n - 1 for n in self.shape)  # r from -(N-1) to N-1
        pts, w = _kept_points(matrices, size, ctf, pixel_size, weights)
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

    @classmethod
    def combination(cls, operators, coefficients) -> _ToeplitzNormal:
        """``Σ c_i A_iᵀA_i``: the normal operator of the images of several operators together
        (coefficients 1) or of some without others (−1), from their kernels' spectra (added in
        double precision), without another NUFFT."""
        first = operators[0]
        if any(op.shape != first.shape for op in operators):
            raise ValueError("normal operators of different volume shapes cannot be combined")
        out = cls.__new__(cls)
        out.shape, out.padded, out.workers = first.shape, first.padded, first.workers
        transfer = sum(float(c) * op.transfer.astype(np.complex128) for op, c in zip(operators, coefficients) if c)
        out.transfer = transfer.astype(np.complex64)
        return out

    def __call__(self, v):
        spectrum = scipy.fft.rfftn(np.asarray(v, dtype=np.float32), s=self.padded, workers=self.workers)
        out = scipy.fft.irfftn(spectrum * self.transfer, s=self.padded, workers=self.workers)
        return out[tuple(slice(0, n) for n in self.shape)].astype(np.float64)


def _astra_geometry(matrices, size, shape):
    astra = _astra()
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
    astra = _astra()
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
    astra = _astra()
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


def _reconstruct_astra(p, matrices, shape, iterations):
    astra = _astra()
    vol_geom, proj_geom = _astra_geometry(matrices, p.shape[-1], shape)
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


class ProjectorBackend(abc.ABC):
    """The projection operator, its adjoint, and what least squares needs from them.

    Methods take rotation matrices (:func:`rotation_matrices`) and validated arrays; the checks
    of the public functions in :mod:`~cryo_orient.tomography.projection` come first.
    """

    #: The name callers choose it by.
    name: str = ""
    #: Options of :func:`cryo_orient.tomography.reconstruct.reconstruct` it honours beyond the
    #: iteration count: ``"tol"``, ``"regularization"``, ``"x0"``, ``"callback"``, ``"ctf"``.
    solver_options: frozenset = frozenset()

    def available(self) -> bool:
        """Whether it can run on this machine."""
        return True

    @abc.abstractmethod
    def project(self, volume, matrices, size, *, eps, batch_size, nthreads, progress) -> np.ndarray:
        """Images ``(N, size, size)`` of ``volume`` along ``matrices``."""

    @abc.abstractmethod
    def backproject(self, projections, matrices, shape, *, eps, batch_size, nthreads, progress) -> np.ndarray:
        """The adjoint of :meth:`project`."""

    def least_squares(self, projections, matrices, shape, iterations):
        """A solver of its own: the volume after ``iterations`` steps, or None to use CG on
        :meth:`normal_operator` and :meth:`normal_rhs`."""
        return None

    def normal_operator(self, matrices, size, shape, *, eps, nthreads, ctf=None, pixel_size=None, weights=None):
        """``v ↦ AᵀA v``, a callable; with ``ctf`` (a :class:`~cryo_orient.tomography.ctf.CTFParams`
        per image, and ``pixel_size`` in Å) ``A = C P``; with per-image ``weights`` ``w``,
        ``AᵀWA``."""
        raise NotImplementedError(f"the {self.name} backend has no normal operator")

    def normal_rhs(self, projections, matrices, shape, *, eps, nthreads, ctf=None, pixel_size=None, weights=None):
        """``Aᵀ b`` for the data term the normal operator fits (``A = C P`` with ``ctf``;
        ``AᵀWb`` with ``weights``)."""
        raise NotImplementedError(f"the {self.name} backend has no normal operator")


class NufftBackend(ProjectorBackend):
    """The Fourier slice theorem with finufft (CPU)."""

    name = "nufft"
    solver_options = frozenset({"tol", "regularization", "x0", "callback", "ctf", "weights"})

    def project(self, volume, matrices, size, *, eps=None, batch_size=128, nthreads=None, progress=False):
        return _project_nufft(volume, matrices, size, eps, batch_size, nthreads, progress)

    def backproject(self, projections, matrices, shape, *, eps=None, batch_size=128, nthreads=None, progress=False):
        return _backproject_nufft(projections, matrices, shape, eps, batch_size, nthreads, progress)

    def normal_operator(
        self, matrices, size, shape, *, eps=1e-9, nthreads=None, ctf=None, pixel_size=None, weights=None
    ):
        return _ToeplitzNormal(matrices, size, shape, eps, nthreads, ctf, pixel_size, weights)

    def normal_rhs(
        self, projections, matrices, shape, *, eps=1e-9, nthreads=None, ctf=None, pixel_size=None, weights=None
    ):
        p = projections.astype(np.float64)
        if ctf is not None:
            p = ctf_model.apply_ctf(p, ctf, pixel_size)  # Pᵀ C b: C is real and centro-symmetric
        if weights is not None:
            p = p * np.asarray(weights, dtype=np.float64)[:, None, None]
        return self.backproject(remove_detector_nyquist(p), matrices, shape, eps=eps, nthreads=nthreads)


class AstraBackend(ProjectorBackend):
    """ASTRA's CUDA projectors and CGLS solver (GPU only)."""

    name = "astra"

    def available(self) -> bool:
        return astra_available()

    def project(self, volume, matrices, size, *, eps=None, batch_size=128, nthreads=None, progress=False):
        return _project_astra(volume, matrices, size, batch_size, progress)

    def backproject(self, projections, matrices, shape, *, eps=None, batch_size=128, nthreads=None, progress=False):
        return _backproject_astra(projections, matrices, shape, batch_size, progress)

    def least_squares(self, projections, matrices, shape, iterations):
        return _reconstruct_astra(projections, matrices, shape, iterations)


#: The backends by name.
BACKENDS: dict[str, ProjectorBackend] = {b.name: b for b in (NufftBackend(), AstraBackend())}
#: What callers may ask for.
NAMES = ("auto", *BACKENDS)


def resolve(name: str, *, needs=()) -> ProjectorBackend:
    """The backend called ``name``, checked to run here; ``"auto"`` picks ASTRA when a CUDA GPU is
    usable and the call ``needs`` nothing it lacks (e.g. ``{"regularization"}``), else NUFFT."""
    if name != "auto" and name not in BACKENDS:
        raise InputError(f"unknown projection backend {name!r}; choose one of {('auto', *BACKENDS)}")
    needs = frozenset(needs)
    if name == "auto":
        # "auto" must not turn a call that works on a CPU into an error on a GPU machine.
        astra = BACKENDS["astra"]
        return astra if astra.available() and needs <= astra.solver_options else BACKENDS["nufft"]
    backend = BACKENDS[name]
    if not backend.available():
        raise UnavailableError(
            f"backend={name!r} needs ASTRA with a CUDA GPU, and none is usable here "
            "(astra.use_cuda() is False or astra is not installed); use backend='nufft' or 'auto'"
        )
    return backend
