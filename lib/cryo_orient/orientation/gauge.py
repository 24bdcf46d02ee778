"""Fixing the gauge of recovered orientations from the projections alone (no ground truth).

The recovery loss depends on orientations only through the distances ``d(q_i, q_j)``, which are
invariant under ``q ↦ a q b`` and ``q ↦ a q̄ b`` for any unit quaternions ``a, b`` (the group
O(4) acting on quaternions; see :mod:`cryo_orient.orientation.alignment`). Of that ambiguity only the right
factor ``b`` is physical: reconstructing with ``R_i R_b`` gives the same volume rotated by
``R_bᵀ``. The left factor ``a`` (three degrees of freedom) and the choice between ``q`` and
``q̄`` change which images are said to share which lines, and must be chosen from the data. The
paper chose them by aligning to the true orientations; this module chooses them by
**common-line consistency**.

Common lines: by the Fourier slice theorem, the 2-D spectra of images ``i`` and ``j`` agree
along one central line, the intersection of their slices. With rotations ``R_i`` (convention of
:mod:`cryo_orient.tomography.projection`), the line's 3-D direction is ``c = R_iᵀ e_z × R_jᵀ e_z`` and it
lies in image ``i`` along ``R_i c`` (and in image ``j`` along ``R_j c``). For candidate
orientations ``R'_i = A R_i`` (or ``A R_iᵀ``) the score is the mean, over random pairs, of the
normalised correlation of the two images' spectra along the lines the candidate predicts. It is
largest for the right left factor, and equally large for ``Rz(π) A``: that is the handedness
ambiguity, which gives the mirror image of the volume (physical and undecidable from
projections). The search is a grid over SO(3) for both branches, then a local refinement of the
best candidates.
"""

from __future__ import annotations

import dataclasses

import finufft
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm.auto import tqdm

from cryo_orient import validation
from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError, as_rng

__all__ = ["CommonLines", "GaugeChoice", "common_lines", "common_line_score", "choose_gauge"]


@dataclasses.dataclass(frozen=True)
class CommonLines:
    """Central lines of image spectra, sampled at ``n_angles`` directions and ``radii``.

    ``lines[i, l, k]`` is image ``i``'s spectrum at frequency ``2π radii[k] / size`` along
    ``(cos θ_l, sin θ_l)`` in image ``(x, y)`` coordinates, ``θ_l = 2π l / n_angles``; each
    line is normalised to unit norm.
    """

    lines: np.ndarray
    radii: np.ndarray
    size: int

    @property
    def n_angles(self) -> int:
        return self.lines.shape[1]


@dataclasses.dataclass(frozen=True)
class GaugeChoice:
    """The chosen gauge: ``quaternions = left · q`` (or ``left · q̄`` when ``conjugated``)."""

    quaternions: np.ndarray
    left: np.ndarray
    conjugated: bool
    score: float
    branch_scores: dict
    images_used: int
    pairs_used: int

    def as_arrays(self) -> dict:
        """What a cache keeps of it: the orientations, the left factor, the branch and the scores."""
        kept = {"quaternions": self.quaternions, "left": self.left, "conjugated": np.array(self.conjugated)}
        kept["score"] = np.array(self.score)
        return kept | {f"score_{branch}": np.array(s) for branch, s in self.branch_scores.items()}


def _check_images(images):
    return validation.image_stack(images, square=True)


def common_lines(images, *, n_angles=360, max_radius=None, nthreads=None) -> CommonLines:
    """Sample every image's spectrum along ``n_angles`` central lines (radii 1 to ``max_radius``).

    Parameters
    ----------
    images : array_like, shape (N, size, size)
        Images indexed ``[y, x]`` with their centre at pixel ``size // 2``.
    n_angles : int
        Directions in ``[0, 2π)``.
    max_radius : int, optional
        Highest radius in Fourier pixels (default ``size // 4``: half of Nyquist, where the
        signal of noisy, imperfectly oriented images still dominates).
    nthreads : int, optional
        Threads for finufft.
    """
    p = _check_images(images)
    size = p.shape[-1]
    max_radius = size // 4 if max_radius is None else int(max_radius)
    if not 1 <= max_radius <= size // 2:
        raise InputError(f"max_radius must be between 1 and size // 2 = {size // 2}, got {max_radius}")
    if n_angles < 8:
        raise InputError(f"n_angles must be at least 8, got {n_angles}")
    radii = np.arange(1, max_radius + 1, dtype=np.float64)
    theta = 2 * np.pi * np.arange(n_angles) / n_angles
    omega = 2 * np.pi * radii / size
    wx = (np.cos(theta)[:, None] * omega).ravel()
    wy = (np.sin(theta)[:, None] * omega).ravel()
    opts = {} if nthreads is None else {"nthreads": int(nthreads)}
    # Type 2 with the image as the mode array: pixel m sits at offset m - size // 2 (finufft's
    # mode order), so the phase is relative to the image centre, as in the projector.
    values = finufft.nufft2d2(wy, wx, p.astype(np.complex128), isign=-1, eps=1e-9, **opts)
    lines = values.reshape(len(p), n_angles, len(radii))
    norms = np.linalg.norm(lines, axis=-1, keepdims=True)
    lines = lines / np.where(norms > 0, norms, 1.0)
    return CommonLines(lines.astype(np.complex64), radii, size)


def _line_angles(matrices_i, matrices_j):
    """Angles of the common line in each image, and a mask of pairs that have a defined one."""
    zi = matrices_i[..., 2, :]  # R_iᵀ e_z: viewing directions (rows of R)
    zj = matrices_j[..., 2, :]
    c = np.cross(zi, zj)
    norm = np.linalg.norm(c, axis=-1)
    ci = np.einsum("...ab,...b->...a", matrices_i, c)
    cj = np.einsum("...ab,...b->...a", matrices_j, c)
    return np.arctan2(ci[..., 1], ci[..., 0]), np.arctan2(cj[..., 1], cj[..., 0]), norm > 0.05


def _gather(lines, images, angles, interpolate):
    n = lines.shape[1]
    position = np.mod(angles, 2 * np.pi) * n / (2 * np.pi)
    if not interpolate:
        return lines[images, np.rint(position).astype(int) % n]
    lo = np.floor(position).astype(int)
    t = (position - lo)[..., None]
    return (1 - t) * lines[images, lo % n] + t * lines[images, (lo + 1) % n]


def _scores(cl, matrices, pairs, interpolate):
    """Mean common-line correlation for stacks of candidate orientations.

    ``matrices`` has shape (C, n, 3, 3) (candidates × images); returns (C,).
    """
    i, j = pairs[:, 0], pairs[:, 1]
    ti, tj, valid = _line_angles(matrices[:, i], matrices[:, j])
    li = _gather(cl.lines, i, ti, interpolate)
    lj = _gather(cl.lines, j, tj, interpolate)
    corr = np.real(np.sum(li * np.conj(lj), axis=-1))
    return np.sum(corr * valid, axis=1) / np.maximum(valid.sum(axis=1), 1)


def _candidate_matrices(left_matrices, base):
    """``A R_i`` for every left factor ``A`` (C, 3, 3) and image rotation ``R_i`` (n, 3, 3)."""
    return np.einsum("cab,nbd->cnad", left_matrices, base)


def common_line_score(lines: CommonLines, quaternions, pairs=None, *, rng=None, n_pairs=4000) -> float:
    """Mean normalised common-line correlation of images under the given orientations.

    ``pairs`` (M, 2) of image indices; default ``n_pairs`` random distinct pairs.
    """
    q = np.asarray(quaternions, dtype=np.float64)
    if q.shape != (len(lines.lines), 4):
        raise InputError(f"need one quaternion per image: ({len(lines.lines)}, 4), got {q.shape}")
    if pairs is None:
        pairs = _random_pairs(len(q), n_pairs, as_rng(rng))
    m = rotations.quaternion_to_matrix(q)
    return float(_scores(lines, m[None], np.asarray(pairs), interpolate=True)[0])


def _random_pairs(n, n_pairs, rng):
    if n < 2:
        raise InputError("need at least 2 images to compare common lines")
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n
    return np.stack([i, j], axis=1)


def _refine(cl, base, pairs, start, max_iter):
    def negative(vec):
        A = (Rotation.from_rotvec(vec) * Rotation.from_matrix(start)).as_matrix()
        return -_scores(cl, _candidate_matrices(A[None], base), pairs, interpolate=True)[0]

    res = rotations.local_rotation_search(negative, step=0.05, max_iter=max_iter, fatol=1e-7)
    A = (Rotation.from_rotvec(res.x) * Rotation.from_matrix(start)).as_matrix()
    return A, -float(res.fun)


def choose_gauge(
    images,
    quaternions,
    *,
    n_images=400,
    n_pairs=4000,
    n_candidates=5000,
    n_refine=3,
    n_angles=360,
    max_radius=None,
    refine_iterations=300,
    rng=None,
    progress=False,
) -> GaugeChoice:
    """Choose the non-physical part of the O(4) ambiguity of recovered orientations.

    Parameters
    ----------
    images : array_like, shape (N, size, size)
        The projections whose orientations were recovered (raw or standardised; noisy is fine).
    quaternions : array_like, shape (N, 4)
        Recovered orientations, in any gauge (e.g. straight from :func:`cryo_orient.orientation.recovery.recover`).
    n_images, n_pairs : int
        The score uses ``n_pairs`` random pairs among ``n_images`` random images.
    n_candidates : int
        Size of the random grid over SO(3) searched for the left factor, per branch.
    n_refine : int
        Best grid candidates per branch refined by Nelder–Mead on the interpolated score.
    n_angles, max_radius
        Passed to :func:`common_lines`.
    rng : seed or Generator
        For the image subset, the pairs and the grid.
    progress : bool
        Show a progress bar over the grid.

    Returns
    -------
    GaugeChoice
        ``quaternions`` in the chosen gauge (canonical), ready for reconstruction; the volume
        may come out rotated or mirrored as a whole.
    """
    p = _check_images(images)
    q = np.asarray(quaternions, dtype=np.float64)
    if q.shape != (len(p), 4):
        raise InputError(f"need one quaternion per image: ({len(p)}, 4), got {q.shape}")
    if not np.all(np.isfinite(q)) or np.any(np.linalg.norm(q, axis=1) < 1e-12):
        raise InputError("quaternions must be finite and non-zero")
    for name, value in (("n_images", n_images), ("n_pairs", n_pairs), ("n_candidates", n_candidates)):
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    rng = as_rng(rng)
    subset = np.sort(rng.choice(len(p), size=min(int(n_images), len(p)), replace=False))
    cl = common_lines(p[subset], n_angles=n_angles, max_radius=max_radius)
    pairs = _random_pairs(len(subset), int(n_pairs), rng)
    grid = rotations.quaternion_to_matrix(rotations.uniform_so3(int(n_candidates), rng=rng))
    grid[0] = np.eye(3)
    R = rotations.quaternion_to_matrix(q[subset])
    branches = {False: R, True: np.swapaxes(R, -1, -2)}  # q̄ has the transposed matrix
    chunk = max(1, 2_000_000 // (len(pairs) * cl.lines.shape[-1]))
    best = {}
    with tqdm(total=2 * len(grid), disable=not progress, desc="gauge: common lines", unit="cand") as bar:
        for conj, base in branches.items():
            scores = np.empty(len(grid))
            for start in range(0, len(grid), chunk):
                sl = slice(start, start + chunk)
                scores[sl] = _scores(cl, _candidate_matrices(grid[sl], base), pairs, interpolate=False)
                bar.update(len(grid[sl]))
            top = np.argsort(scores)[::-1][: max(1, int(n_refine))]
            refined = [_refine(cl, base, pairs, grid[k], refine_iterations) for k in top]
            best[conj] = max(refined, key=lambda item: item[1])
    conj = bool(best[True][1] > best[False][1])
    A, score = best[conj]
    left = rotations.matrix_to_quaternion(A)
    base_q = rotations.conjugate(q) if conj else q
    fixed = rotations.canonical(rotations.multiply(left[None], base_q))
    return GaugeChoice(
        quaternions=fixed,
        left=left,
        conjugated=conj,
        score=score,
        branch_scores={"q": best[False][1], "conjugate": best[True][1]},
        images_used=len(subset),
        pairs_used=len(pairs),
    )


# --------------------------------------------------------------------------------------------
# Evaluation against the ground truth (for reports only: uses the true orientations)
# --------------------------------------------------------------------------------------------

_RZ_PI = np.array([0.0, 0.0, 1.0, 0.0])


def volume_frame(alignment):
    """How a volume reconstructed with some orientations sits relative to the true one.

    Parameters
    ----------
    alignment : cryo_orient.orientation.alignment.Alignment
        ``align(q_true, q_used)`` for the orientations ``q_used`` the volume was built with.

    Returns
    -------
    dict
        ``matrix``: the 3×3 ``M`` (±rotation) with ``V_true(x) ≈ V_used(M x)`` in ``(x, y, z)``
        volume coordinates (use :func:`cryo_orient.geometry.volumes.transform_volume`);
        ``mirrored``: whether the reconstruction is the mirror image (``det M = -1``);
        ``gauge_error``: rotation distance (rad) of the alignment's left factor from the
        nearest of the two gauges that give a consistent volume (identity or ``Rz(π)``; 0 when
        the gauge is right); ``reflected``: whether the conjugate branch was needed (a wrong
        gauge choice).

    Notes
    -----
    With ``q_true ≈ left · q_used · right``: if ``left = 1``, ``R_used = R_true R_rightᵀ`` and
    the volume is the truth rotated, ``V_used(y) = V_true(R_rightᵀ y)``; if ``left = Rz(π)``,
    ``R_used = D R_true D · Rz(π) R_rightᵀ`` with ``D = diag(1, 1, -1)``, and the volume is the
    point-inverted truth, ``V_used(y) = V_true(-R_rightᵀ y)``.
    """
    left = np.asarray(alignment.left)
    to_identity = float(rotations.distance(left, np.array([0.0, 0.0, 0.0, 1.0])))
    to_rz_pi = float(rotations.distance(left, _RZ_PI))
    mirrored = to_rz_pi < to_identity
    right = rotations.quaternion_to_matrix(np.asarray(alignment.right))
    return {
        "matrix": -right if mirrored else right,
        "mirrored": bool(mirrored),
        "gauge_error": min(to_identity, to_rz_pi),
        "reflected": bool(alignment.reflected),
    }
