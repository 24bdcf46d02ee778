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
    With a CTF (``ctf=``, a :class:`~cryo_orient.tomography.ctf.CTFParams` per image, and
    ``pixel_size``) the forward model is ``A_i = C_i P_i`` and the normal equations
    ``Σ P_iᵀ C_i² P_i v = Σ P_iᵀ C_i b_i``: the kernel's weights become ``w_k C_i(k)²`` and the
    right-hand side backprojects the CTF-filtered images, so the CTF's amplitudes are corrected
    where the images' CTFs together cover each frequency, and its zeros cost nothing but
    conditioning (the iteration count regularises them, as it does noise).
``"astra"`` (GPU)
    ASTRA's ``CGLS3D_CUDA`` with the paper's ``parallel3d_vec`` geometry (the paper ran 100
    iterations, 300 for 5a1a). It runs exactly ``iterations`` steps: ``tol``, ``eps``,
    ``nthreads`` and ``progress`` do not apply, and regularisation, ``x0`` and ``callback`` are
    errors, and so is a CTF.
``"auto"``
    ``"astra"`` when a CUDA GPU is usable, else ``"nufft"``; always ``"nufft"`` when
    regularisation, ``x0``, ``callback`` or ``ctf`` is given.

Stopping rule (NUFFT backend): stop when the normal-equation residual ``‖Aᵀb − (AᵀA + λI) v‖``
falls below ``tol × ‖Aᵀb‖``, or after ``iterations`` steps. On noisy or misoriented data CG
converges first on the well-determined low frequencies and later fits noise, so the iteration
count acts as a regulariser, as it did for the paper's fixed 100 CGLS iterations.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm.auto import tqdm

from cryo_orient.tomography import backends
from cryo_orient.tomography.backends import check_size, remove_detector_nyquist, rotation_matrices
from cryo_orient.tomography.ctf import CTFParams, check_pixel_size
from cryo_orient.validation import InputError, check_memory, float_array, integer

__all__ = [
    "FoldedNormalEquations",
    "Reconstruction",
    "conjugate_gradients",
    "normal_operator",
    "reconstruct",
    "reconstruct_folds",
    "remove_detector_nyquist",
]


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


def _check_ctf(ctf, pixel_size, n):
    """``(ctf, pixel_size)`` checked against ``n`` images; ``(None, None)`` without a CTF."""
    if ctf is None:
        return None, None
    if not isinstance(ctf, CTFParams):
        raise InputError(f"ctf must be a CTFParams (cryo_orient.tomography.ctf), got {type(ctf).__name__}")
    if len(ctf) not in (1, n):
        raise InputError(f"got {n} projections but CTF parameters for {len(ctf)}; give one set per image (or one)")
    if pixel_size is None:
        raise InputError("a CTF needs the pixel size: pass pixel_size= in Å per pixel")
    return ctf, check_pixel_size(pixel_size)


def normal_operator(quaternions, size, shape, ctf=None, pixel_size=None, *, eps=1e-9, nthreads=None):
    """The operator ``v ↦ AᵀA v`` of :func:`reconstruct`'s NUFFT backend, as a callable.

    Equal to ``backproject(remove_detector_nyquist(project(v)))`` up to the NUFFT tolerance and
    single-precision FFTs (about 1e-6 relative); with ``ctf`` (one
    :class:`~cryo_orient.tomography.ctf.CTFParams` set per orientation, or one for all) and
    ``pixel_size`` (Å), ``A = C P`` and it equals
    ``backproject(remove_detector_nyquist(apply_ctf(apply_ctf(project(v)))))``.
    """
    matrices = rotation_matrices(quaternions)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, len(matrices))
    return backends.BACKENDS["nufft"].normal_operator(
        matrices, check_size(size, shape), shape, eps=eps, nthreads=nthreads, ctf=ctf, pixel_size=pixel_size
    )


def _check_weights(weights, n):
    """Per-image least-squares weights checked against ``n`` images; None stays None."""
    if weights is None:
        return None
    what = f"{n} finite numbers >= 0, not all zero (one per image)"
    w = float_array(weights, "weights", what)
    if w.shape != (n,):
        raise InputError(f"weights must be {what}; got shape {w.shape}")
    bad = int(np.sum(~(np.isfinite(w) & (w >= 0))))
    if bad:
        raise InputError(f"weights must be {what}; {bad} are NaN, infinite or < 0")
    if not np.any(w > 0):
        raise InputError(f"weights must be {what}; all are zero")
    return w


def _check_inputs(projections, quaternions, shape):
    p = np.asarray(projections)
    if p.ndim != 3 or p.shape[1] != p.shape[2]:
        raise InputError(f"projections must have shape (N, size, size), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError("projections contain NaN or infinite values; fix or drop those images first")
    q = np.asarray(quaternions, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise InputError(f"quaternions must have shape (N, 4), got {q.shape}")
    if len(q) != len(p):
        raise InputError(f"got {len(p)} projections but {len(q)} quaternions; pass one orientation per image")
    if not np.all(np.isfinite(q)) or np.any(np.linalg.norm(q, axis=1) < 1e-12):
        raise InputError("quaternions must be finite and non-zero")
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise InputError(f"shape must be 3 positive integers (nz, ny, nx), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must be 3 positive integers (nz, ny, nx), got {shape}")
    return p, q, shape


def _normal_equations_cg(
    backend, p, matrices, shape, iterations, tol, regularization, x0, eps, nthreads, progress, callback, model_args
):
    """CG on ``(AᵀWA + λI) v = AᵀWb`` with the backend's normal operator (``W`` the per-image
    weights in ``model_args``, else the identity)."""
    normal = backend.normal_operator(matrices, p.shape[-1], shape, eps=eps, nthreads=nthreads, **model_args)
    rhs = backend.normal_rhs(p, matrices, shape, eps=eps, nthreads=nthreads, **model_args)

    def apply(v):
        return normal(v) + regularization * v

    return conjugate_gradients(apply, rhs, x0=x0, iterations=iterations, tol=tol, callback=callback, progress=progress)


def conjugate_gradients(apply, rhs, *, x0=None, iterations=100, tol=0.0, callback=None, progress=False):
    """Conjugate gradients for ``apply(x) = rhs`` with ``apply`` symmetric positive semi-definite.

    Stops after ``iterations`` steps or when ``‖rhs − apply(x)‖ ≤ tol ‖rhs‖``; calls
    ``callback(k, x)`` (a copy) after step ``k``. Returns ``(x, relative residuals per step,
    stop reason, steps)``. With ``rhs = 0`` the minimum-norm solution 0 is returned, whatever ``x0``.
    """
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


def reconstruct(
    projections,
    quaternions,
    shape,
    backend="auto",
    *,
    iterations=100,
    tol=1e-4,
    regularization=0.0,
    x0=None,
    eps=1e-9,
    nthreads=None,
    progress=False,
    callback=None,
    ctf=None,
    pixel_size=None,
    weights=None,
) -> Reconstruction:
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
    ctf : CTFParams, optional
        The images' CTFs (:mod:`cryo_orient.tomography.ctf`, one set per image or one for all):
        fit ``C_i P_i v`` to the images instead of ``P_i v`` (NUFFT backend). The images are then
        the CTF-modulated ones, not phase-flipped.
    pixel_size : float, optional
        Å per pixel; required with ``ctf``, unused without.
    weights : array_like, shape (N,), optional
        Non-negative weight of each image in the least-squares fit (NUFFT backend):
        ``Σ_i w_i ‖A_i v − b_i‖²``. An image given at several orientations with weights summing
        to 1 is then fitted at all of them, as a marginalisation over its pose posterior
        (:class:`cryo_orient.orientation.refine.RefineConfig`'s ``marginalise``). Default: all 1.

    Returns
    -------
    Reconstruction
        ``.volume`` (float64, ``shape``) and the residual history.
    """
    p, q, shape = _check_inputs(projections, quaternions, shape)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, len(p))
    weights = _check_weights(weights, len(p))
    iterations = integer(iterations, "iterations", 0)
    if iterations == 0 and x0 is None:
        raise InputError("iterations=0 without x0 would return the all-zero start; give iterations >= 1")
    side = max(max(shape), p.shape[-1])
    check_memory(
        16 * (2 * side) ** 3 + 12 * 8 * int(np.prod(shape)) + 3 * p.nbytes,
        f"reconstructing a {'×'.join(map(str, shape))} map from {len(p):,} images",
        "reconstruct a smaller box (--box detector) or bin the images",
    )
    if not (np.isfinite(tol) and tol >= 0):
        raise InputError(f"tol must be a non-negative number, got {tol!r}")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise InputError(f"regularization must be a non-negative number, got {regularization!r}")
    if x0 is not None and np.shape(x0) != shape:
        raise InputError(f"x0 must have the volume shape {shape}, got {np.shape(x0)}")
    needs = {
        name
        for name, given in (
            ("regularization", bool(regularization)),
            ("x0", x0 is not None),
            ("callback", callback is not None),
            ("ctf", ctf is not None),
            ("weights", weights is not None),
        )
        if given
    }
    chosen = backends.resolve(backend, needs=needs)
    unsupported = sorted(needs - chosen.solver_options)
    if unsupported:
        raise InputError(
            f"the {chosen.name} backend supports no {', '.join(unsupported)}; use backend='nufft' for those"
        )
    start = time.perf_counter()
    matrices = rotation_matrices(q)
    volume = chosen.least_squares(p, matrices, shape, int(iterations))
    if volume is not None:
        return Reconstruction(
            volume, chosen.name, int(iterations), np.empty(0), "iterations", time.perf_counter() - start, 0.0
        )
    volume, residuals, stop, k = _normal_equations_cg(
        chosen,
        p,
        matrices,
        shape,
        int(iterations),
        float(tol),
        float(regularization),
        x0,
        eps,
        nthreads,
        progress,
        callback,
        {
            **({} if ctf is None else {"ctf": ctf, "pixel_size": pixel_size}),
            **({} if weights is None else {"weights": weights}),
        },
    )
    return Reconstruction(volume, chosen.name, k, residuals, stop, time.perf_counter() - start, float(regularization))


def _check_folds(folds, n):
    """Fold labels checked against ``n`` images: integers 0 … K−1, K ≥ 2, every fold used."""
    labels = np.asarray(folds)
    what = f"{n} integer labels 0, 1, …, K−1 (K ≥ 2 folds, each used; one per image)"
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"folds must be {what}; got {labels.dtype} of shape {labels.shape}")
    k = int(labels.max()) + 1 if n else 0
    if n == 0 or labels.min() < 0 or k < 2 or len(np.unique(labels)) != k:
        raise InputError(f"folds must be {what}; got labels {sorted(set(labels.tolist()))[:10]}")
    return labels.astype(np.int64), k


def reconstruct_folds(
    projections,
    quaternions,
    shape,
    folds,
    *,
    iterations=100,
    tol=1e-4,
    eps=1e-9,
    nthreads=None,
    ctf=None,
    pixel_size=None,
    weights=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The map of all projections and, for each fold of them, the map of all the others.

    Each leave-one-fold-out map is what :func:`reconstruct` (NUFFT backend, the same settings)
    gives from the projections outside that fold, to the NUFFT tolerance and single-precision
    FFTs. The normal equations are sums over images, so the kernel and right-hand side of each
    fold are computed once and every map is solved from their sums and differences: ``K + 1``
    CG solves for the NUFFT work of one reconstruction. :func:`cryo_orient.orientation.refine.refine`
    (``search_folds``) searches each image against a map it did not contribute to.

    Parameters
    ----------
    projections, quaternions, shape
        As :func:`reconstruct`.
    folds : array_like of int, shape (N,)
        Each projection's fold, ``0 … K−1`` (``K ≥ 2``, each fold non-empty).
    iterations, tol, eps, nthreads, ctf, pixel_size, weights
        As :func:`reconstruct` (per projection).

    Returns
    -------
    volume : ndarray, shape ``shape``
        The map of all projections.
    without : ndarray, shape ``(K,) + shape``
        ``without[k]``: the map of the projections outside fold ``k``.
    """
    p, q, shape = _check_inputs(projections, quaternions, shape)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, len(p))
    weights = _check_weights(weights, len(p))
    labels, k = _check_folds(folds, len(p))
    if weights is not None:
        empty = [fold for fold in range(k) if not np.any(weights[labels == fold] > 0)]
        if empty:
            raise InputError(
                f"every weight of fold {', '.join(map(str, empty))} is zero, so the fold holds no data; give each "
                "fold an image of weight > 0, or label the images into fewer folds"
            )
    system = FoldedNormalEquations(shape, k, iterations=iterations, tol=tol, eps=eps, nthreads=nthreads)
    side = max(max(shape), p.shape[-1])
    check_memory(
        (k + 6) * 4 * (2 * side) ** 3 + (2 * k + 14) * 8 * int(np.prod(shape)) + 3 * p.nbytes,
        f"reconstructing {k + 1} maps of {'×'.join(map(str, shape))} from {len(p):,} images",
        "use fewer folds, reconstruct a smaller box or bin the images",
    )
    for fold in range(k):
        index = np.flatnonzero(labels == fold)
        model = {
            **({} if ctf is None else {"ctf": ctf.of_images(index), "pixel_size": pixel_size}),
            **({} if weights is None else {"weights": weights[index]}),
        }
        system.set_fold(fold, p[index], q[index], **model)
    return system.solve(), np.stack([system.solve(without=fold) for fold in range(k)])


class FoldedNormalEquations:
    """The least-squares normal equations of a map from K folds of images, kept fold by fold,
    so that one fold's images (or poses) can be replaced and any fold left out of a solve.

    The NUFFT backend's ``AᵀA`` (its Toeplitz kernel) and ``Aᵀb`` are sums over images:
    :meth:`set_fold` computes a fold's two terms (the NUFFT work of its images alone) and
    :meth:`solve` adds those of the folds kept and runs conjugate gradients, as
    :func:`reconstruct` (NUFFT backend, the same settings) does on those images.
    :func:`reconstruct_folds` sets every fold and solves once per fold (what
    :func:`cryo_orient.orientation.refine.refine` uses for ``search_folds``).

    Parameters
    ----------
    shape : tuple of 3 ints
        The map's grid.
    k : int
        The number of folds (≥ 2); each must be set before a solve.
    iterations, tol, eps, nthreads
        As :func:`reconstruct`.
    """

    def __init__(self, shape, k, *, iterations=100, tol=1e-4, eps=1e-9, nthreads=None):
        self.shape = tuple(int(n) for n in shape)
        self.k = integer(k, "k", 2)
        self.iterations = integer(iterations, "iterations", 1)
        if not (np.isfinite(tol) and tol >= 0):
            raise InputError(f"tol must be a non-negative number, got {tol!r}")
        self.tol, self.eps, self.nthreads = float(tol), eps, nthreads
        self._operators = [None] * self.k
        self._rhs = [None] * self.k

    def set_fold(self, fold, projections, quaternions, *, ctf=None, pixel_size=None, weights=None):
        """Replace fold ``fold``'s images and poses (arguments as :func:`reconstruct`'s)."""
        fold = integer(fold, "fold", 0)
        if fold >= self.k:
            raise InputError(f"fold must be below the number of folds ({self.k}), got {fold}")
        p, q, _ = _check_inputs(projections, quaternions, self.shape)
        ctf, pixel_size = _check_ctf(ctf, pixel_size, len(p))
        weights = _check_weights(weights, len(p))
        model = {
            "eps": self.eps,
            "nthreads": self.nthreads,
            **({} if ctf is None else {"ctf": ctf, "pixel_size": pixel_size}),
            **({} if weights is None else {"weights": weights}),
        }
        nufft, matrices = backends.BACKENDS["nufft"], rotation_matrices(q)
        self._operators[fold] = nufft.normal_operator(matrices, p.shape[-1], self.shape, **model)
        self._rhs[fold] = nufft.normal_rhs(p, matrices, self.shape, **model)

    def solve(self, without=None) -> np.ndarray:
        """The map of every fold's images, or of all but fold ``without``."""
        if without is not None:
            without = integer(without, "without", 0)
            if without >= self.k:
                raise InputError(f"without must be a fold below {self.k} (or None), got {without}")
        missing = [f for f in range(self.k) if self._rhs[f] is None]
        if missing:
            raise InputError(f"folds {missing} have no images yet; call set_fold for each before solving")
        total = np.sum(self._rhs, axis=0)
        if without is None:
            operator, rhs = backends._ToeplitzNormal.combination(self._operators, [1.0] * self.k), total
        else:
            keep = [0.0 if j == without else 1.0 for j in range(self.k)]
            operator, rhs = backends._ToeplitzNormal.combination(self._operators, keep), total - self._rhs[without]
        return conjugate_gradients(operator, rhs, iterations=self.iterations, tol=self.tol)[0]
