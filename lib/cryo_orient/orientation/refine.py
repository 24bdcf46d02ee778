"""Refinement of orientations and in-plane shifts against gold-standard half maps.

Starting poses (e.g. the learned pipeline's, some 10° off) are refined by iterating

1. a **local pose search** per image (:func:`search_poses`): around its current orientation, a
   grid of ``3 × 3 × 3`` perturbation rotations ``δ ⊗ q`` (``δ`` a rotation by ``-s``, ``0`` or
   ``+s`` about each of the lab axes x, y, z: two tilts and the in-plane angle), taking the best,
   then again with the step halved, ``local_steps`` times (coarse to fine, hill climbing); at
   every candidate the in-plane shift is searched on a grid around the current shift; in the
   first ``global_rounds`` rounds also an exhaustive search over a grid of all of SO(3)
   (:func:`global_search`), refined locally in the same way, for the poses too far from their
   start for a local search: each image keeps the better-scoring of the two;
2. **reconstruction** of each half set (:func:`half_sets`) from its own images and poses
   (:func:`cryo_orient.tomography.reconstruct.reconstruct`, the CTF in the normal equations;
   with ``marginalise``, each image at every orientation of its posterior around its best pose,
   weighted by its probability: :func:`pose_posterior`);
3. the **FSC of the two half maps**: the 0.143 crossing is the current resolution, and the
   next search compares images with their half map only below that frequency (the low-pass),
   each shell weighted by the FSC (``fsc_weighting``), so that the search cannot lock on to
   noise the maps have fitted.

The two halves are independent (gold standard): each half's images are searched only against its
own half map, and its half map is reconstructed only from its own images. The one thing they
share is their FSC: the resolution (the low-pass cutoff of the search) and, with
``fsc_weighting``, the weight of each shell below it, as in RELION's auto-refine; with
``lowpass="fixed"`` and ``fsc_weighting=False`` not even that.

Matching (in Fourier space)
---------------------------
For image ``b`` with half spectrum ``B(k) = rfft2(ifftshift(b))`` and CTF ``C(k)`` (1 without a
CTF), the model at orientation ``q`` and shift ``d`` is ``α C(k) P_q(k) e^{-i k·d}``, where
``P_q`` is the Fourier slice of the reference (the NUFFT projector of
:mod:`cryo_orient.tomography.backends`, evaluated only at the frequencies kept) and ``α`` an
unknown per-image scale (real images have unknown amplitude). Least squares with ``α`` fitted,
``min_α Σ_k |B − α C P e^{-ik·d}|²``, is maximised by the largest

    score(q, d) = Re Σ_k w_k B(k) conj(C P_q)(k) e^{ik·d} / ‖C P_q‖,

(``w_k`` the Hermitian weights of the half spectrum) over frequencies ``0 < |k| ≤ cutoff``
(the mean is left out: the images' background level is unknown). Dividing it by ``‖B‖`` gives
the normalised cross-correlation, which is what :class:`RefinementResult` reports. All
candidates of a batch of images are projected by one NUFFT, and the shift grid is evaluated as two
small matrix products per candidate (separable phase ramps over the kept frequencies), so no
loop runs over images.

Conventions
-----------
Orientations are unit quaternions, scalar-last ``(x, y, z, w)``, of the projection convention
of :mod:`cryo_orient.tomography.projection` (``p(x, y) = ∫ V(Rᵀ (x, y, z)) dz``). A shift
``(dy, dx)`` in pixels is how far the particle sits from the image centre (pixel ``n // 2``), as
in :mod:`cryo_orient.orientation.shifts`: ``I(y, x) = R(y − dy, x − dx)``. RELION's origin is its
negative, ``rlnOriginXAngst = −dx · pixel size`` (:func:`cryo_orient.data.relion.write_particles`
writes it so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import finufft
import numpy as np
from tqdm.auto import tqdm

from cryo_orient.artifacts import atomic_output, jsonable
from cryo_orient.geometry import rotations
from cryo_orient.orientation.shifts import center_images
from cryo_orient.tomography.backends import slice_frequencies
from cryo_orient.tomography.ctf import CTFParams, check_pixel_size, ctf_values
from cryo_orient.tomography.fsc import FSCResult, fsc, fsc_filter
from cryo_orient.tomography.reconstruct import reconstruct, reconstruct_folds
from cryo_orient.validation import InputError, Settings, as_rng, choice, image_stack

__all__ = [
    "LOWPASS_POLICIES",
    "RefineConfig",
    "RefinementResult",
    "band",
    "global_search",
    "half_sets",
    "PosePosterior",
    "ball_perturbations",
    "perturbations",
    "pose_posterior",
    "refine",
    "refine_settings",
    "search_fold_labels",
    "search_poses",
]

LOWPASS_POLICIES = ("fsc", "fixed")
#: Where the global search's shift grid is centred (``RefineConfig.global_shift_centre``).
GLOBAL_SHIFT_CENTRES = ("current", "box")


@dataclasses.dataclass(frozen=True)
class RefineConfig(Settings):
    """Settings of :func:`refine`.

    Attributes
    ----------
    max_iterations : int
        Search-and-reconstruct rounds at most.
    angular_step : float
        Degrees: the coarsest perturbation of the first round's local search. Each later round
        starts at half its predecessor's step, but not below ``min_angular_step``.
    min_angular_step : float
        Degrees: the smallest coarsest step of a round.
    local_steps : int
        Levels of the coarse-to-fine search per round, the step halved at each; the finest step
        of a round is ``step / 2 ** (local_steps - 1)`` (its "angular step").
    shift_range : float
        Pixels: the radius of the shift search around each image's current shift at the first
        level of a round (halved with each level, down to two shift steps).
    shift_step : float
        Pixels between the shifts searched; the peak is then refined by a parabola.
    max_shift : float or None
        Pixels: no shift leaves this disc around the image centre (None: no bound).
    lowpass : {"fsc", "fixed"}
        The search's frequency cutoff: at the half maps' FSC 0.143 crossing (clipped to
        ``[lowpass_min, lowpass_max]``), or always ``lowpass_max``.
    lowpass_min, lowpass_max : float
        Fractions of Nyquist bounding the cutoff (``lowpass_max ≤ 1``; Nyquist itself is never
        used: its coefficients are not Hermitian-consistent).
    initial_lowpass : float
        Fraction of Nyquist: the cutoff of the first search when a reference map is given (it is
        used for both halves, low-passed there, as RELION's initial low-pass).
    reconstruction_iterations : int
        CG iterations of each half map's reconstruction (the count regularises).
    moved_tolerance : float
        Convergence: stop when at most this fraction of poses moved by more than half the
        round's angular step and the resolution did not improve by ``resolution_tolerance``.
    resolution_tolerance : float
        Relative improvement of the resolution (Å) that counts as improving.
    batch_size : int
        Images per NUFFT batch (each projects ``27 ×`` that many slices).
    half_set_seed : int
        Seed of the random split into two halves.
    fsc_mask : bool
        Multiply the half maps by a soft spherical mask before their FSC.
    fsc_weighting : bool
        Search against each half map scaled shell by shell by the half maps' FSC
        (:func:`cryo_orient.tomography.fsc.fsc_filter`, the Wiener estimate of the signal) rather
        than against the half map as it is: below the cutoff too, shells where the maps are mostly
        noise then count for little in the score (as RELION's FSC-derived SSNR regularisation).
        Measured: learned 5j0n starts at −5.8 dB, 3 global rounds, 8 rounds: 5.96° → 4.53° median;
        ASPIRE 70S stack, 500 particles from 10° off: 2.20° → 2.07°; noiseless 65 px: 0.414° →
        0.418°. Where the half maps disagree through pose errors rather than noise it slows
        refinement (noiseless 24 px, 3 rounds: 0.77° without, 1.02° with). The FSC is that of the
        masked half maps (``fsc_mask``) applied to the unmasked ones, so it errs towards keeping.
    global_rounds : int
        The first this many rounds also search every image globally (:func:`global_search`
        over all of SO(3) at ``global_step``, against the same half map and cutoff), refine the
        grid's best locally as well, and keep, per image, whichever of the two local searches
        (from the current pose, from the global best) scores higher. It rescues the poses too far
        from their start for the local search alone; 0: local searches only.
    global_step : float
        Degrees between the rotations of the global search's grid.
    global_shift_range, global_shift_step : float
        Pixels: the global search's shift grid (0 range: shifts are left to the local search).
    global_shift_centre : {"current", "box"}
        The centre of that grid: each image's current shift, or the box centre (zero offsets).
        "box" for starts whose shifts are not to be trusted (offsets fitted against wrong
        orientations can lie farther from the truth than zero); the local search from the
        current pose keeps the current shift either way.
    marginalise : bool
        Reconstruct the half maps from every image at each orientation of its posterior
        (:func:`pose_posterior` around its best pose, against its half map and cutoff), weighted
        by the posterior probability, rather than at its best pose alone: the expectation step of
        RELION's marginalisation over orientations, restricted to a ball around the best pose.
        The poses written are still the best ones. It costs a posterior evaluation per image
        (``posterior_radius`` 3: 123 slices, about as many as the local search) and a
        reconstruction from up to ``posterior_keep`` times as many slices. Measured (learned 5j0n
        start at −5.8 dB, 3 global rounds, 8 rounds): 4.53° → 4.34° median, FSC 0.5 19.2 → 19.1 Å,
        2.7 × the time. The posterior is conditional on a half map that contains the image at its
        current pose, so it is too sharp: wide in round 1 (median spread 1.7°), then a single
        orientation from the third round on while the errors are still 4–5°. With
        ``search_folds`` 4 the image is not in that map and the posterior stays wider (0.43° after
        8 rounds); marginalised, the same start ends at 3.04° against 3.14°.
    posterior_step : float
        Degrees between the posterior's candidate orientations.
    posterior_radius : int
        The posterior's ball of candidates, in steps (0 to 6).
    posterior_keep : int
        The most probable candidates kept per image at most (those of probability below 10⁻³ are
        dropped as well; renormalised).
    search_folds : int
        1: each image is searched against its half's map, which contains the image itself at its
        current pose (RELION's gold standard). K ≥ 2: each half is split into K folds (every K-th
        image of the half) and each fold is searched against the map of the rest of its half
        (:func:`cryo_orient.tomography.reconstruct.reconstruct_folds`, FSC-weighted and low-passed
        as the half map), so no image sees its own noise in its reference: a pose (and a
        posterior) that scores its own contribution to the map is not favoured. The FSC, the
        cutoff and the maps written are those of the whole halves. It costs K more CG solves per
        half and round, and K times the global search's projections. Measured: the images then
        leave far starts faster (each no longer holds its own map at its wrong pose), but end
        no closer once near (each map has (K−1)/K of its half). Learned 5j0n starts at −5.8 dB
        (65 px, 3 global rounds, 8 rounds): 4.53° → 3.14° median (K 4; 3.10° with K 8), 42.7 %
        → 18.1 % beyond 5°, FSC 0.5 19.2 → 18.5 Å, about twice the time. The ASPIRE 70S stack
        from 10° off with a reference: 1.81° → 1.91°, FSC 0.5 17.1 Å both.
    """

    _unknown_keys = "refine setting(s)"

    max_iterations: int = 8
    angular_step: float = 4.0
    min_angular_step: float = 1.0
    local_steps: int = 4
    shift_range: float = 3.0
    shift_step: float = 0.5
    max_shift: float | None = None
    lowpass: str = "fsc"
    lowpass_min: float = 0.15
    lowpass_max: float = 1.0
    initial_lowpass: float = 0.4
    reconstruction_iterations: int = 20
    moved_tolerance: float = 0.02
    resolution_tolerance: float = 0.01
    batch_size: int = 64
    half_set_seed: int = 0
    fsc_mask: bool = True
    fsc_weighting: bool = True
    global_rounds: int = 0
    global_step: float = 5.0
    global_shift_range: float = 0.0
    global_shift_step: float = 1.0
    global_shift_centre: str = "current"
    marginalise: bool = False
    posterior_step: float = 1.5
    posterior_radius: int = 3
    posterior_keep: int = 16
    search_folds: int = 1

    def __post_init__(self):
        choice(self.lowpass, "lowpass", LOWPASS_POLICIES)
        choice(self.global_shift_centre, "global_shift_centre", GLOBAL_SHIFT_CENTRES)
        if isinstance(self.global_rounds, bool) or not isinstance(self.global_rounds, (int, np.integer)):
            raise InputError(f"global_rounds must be an integer >= 0, got {self.global_rounds!r}")
        if self.global_rounds < 0:
            raise InputError(f"global_rounds must be an integer >= 0, got {self.global_rounds!r}")
        if not (isinstance(self.global_step, (int, float)) and 0 < self.global_step <= 90):
            raise InputError(f"global_step must be in (0, 90] degrees, got {self.global_step!r}")
        if not isinstance(self.marginalise, (bool, np.bool_)):
            raise InputError(f"marginalise must be true or false, got {self.marginalise!r}")
        for name in (
            "max_iterations",
            "local_steps",
            "reconstruction_iterations",
            "batch_size",
            "posterior_keep",
            "search_folds",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.half_set_seed, bool) or not isinstance(self.half_set_seed, (int, np.integer)):
            raise InputError(f"half_set_seed must be an integer, got {self.half_set_seed!r}")
        if (
            isinstance(self.posterior_radius, bool)
            or not isinstance(self.posterior_radius, (int, np.integer))
            or not 0 <= self.posterior_radius <= 6
        ):
            raise InputError(f"posterior_radius must be an integer from 0 to 6 (steps), got {self.posterior_radius!r}")
        for name in ("angular_step", "min_angular_step", "shift_step", "global_shift_step", "posterior_step"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if self.posterior_step * self.posterior_radius > 90:
            raise InputError(
                f"posterior_step × posterior_radius ({self.posterior_step} × {self.posterior_radius}) exceeds 90°; "
                "use a smaller step or radius"
            )
        for name in ("shift_range", "moved_tolerance", "resolution_tolerance", "global_shift_range"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if self.max_shift is not None and not (np.isfinite(self.max_shift) and self.max_shift >= 0):
            raise InputError(f"max_shift must be a number of pixels >= 0 or None, got {self.max_shift!r}")
        for name in ("lowpass_min", "lowpass_max", "initial_lowpass"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise InputError(f"{name} must be a fraction of Nyquist in (0, 1], got {value!r}")
        if self.lowpass_min > self.lowpass_max:
            raise InputError(
                f"lowpass_min ({self.lowpass_min}) exceeds lowpass_max ({self.lowpass_max}); swap or change them"
            )

    def check_images(self, n: int) -> None:
        """Raise :class:`InputError` when ``n`` images are too few for ``search_folds`` (each
        half's folds need at least two images each; the two half sets themselves are checked
        by :func:`half_sets`)."""
        k = int(self.search_folds)
        if k > 1 and n // 2 < 2 * k:
            raise InputError(
                f"search_folds {k} needs at least {2 * k} images in each half set ({n} images give "
                f"{n // 2}); use fewer folds"
            )

    def round_step(self, iteration: int) -> float:
        """Degrees: the coarsest step of round ``iteration`` (from 0)."""
        return max(self.angular_step * 0.5**iteration, min(self.min_angular_step, self.angular_step))

    def finest_step(self, iteration: int) -> float:
        """Degrees: the finest step of round ``iteration``, the round's angular step."""
        return self.round_step(iteration) * 0.5 ** (self.local_steps - 1)


def refine_settings(refine) -> dict | None:
    """The refinement settings that a workflow's ``refine`` argument asks for.

    Parameters
    ----------
    refine : None, bool, mapping or RefineConfig
        ``None`` or ``False``: no refinement. ``True``: the defaults. A mapping: those
        :class:`RefineConfig` settings. A :class:`RefineConfig`: every one of its settings, so
        that a workflow that sizes the settings left unset (``orient``) uses it as it is.

    Returns
    -------
    dict or None
        The settings given (checked: a bad one is a one-line :class:`InputError`), or ``None``
        for no refinement.
    """
    if refine is None or refine is False:
        return None
    if isinstance(refine, RefineConfig):
        return refine.to_dict()
    if refine is True:
        return {}
    settings = dict(refine) if isinstance(refine, Mapping) else refine
    RefineConfig.from_dict(settings)  # unknown, missing or bad settings: one line, now
    return settings


@dataclasses.dataclass(frozen=True)
class RefinementResult:
    """What :func:`refine` found.

    Attributes
    ----------
    quaternions : ndarray, shape (N, 4)
        Refined orientations (scalar-last unit quaternions).
    shifts : ndarray, shape (N, 2)
        Refined ``(dy, dx)`` in pixels (module docstring's sign).
    subsets : ndarray of int, shape (N,)
        Each image's half set, 1 or 2 (RELION's ``rlnRandomSubset``).
    scores : ndarray, shape (N,)
        Normalised cross-correlation of each image with its half map's model at its pose, over
        the last search's frequencies.
    half_maps : ndarray, shape (2, n, n, n)
        The two half maps from the refined poses (with ``marginalise``, from their posteriors).
    volume : ndarray, shape (n, n, n)
        The map from all images (with ``marginalise``, from their posteriors).
    fsc : FSCResult
        The half maps' FSC (``fsc.resolution(0.143)``: the resolution).
    resolution : float
        Å at FSC 0.143 of the half maps (Nyquist if not crossed).
    log : list of dict
        Per round (round 0: the starting poses): ``iteration``, ``resolution``, ``crossed``,
        ``cutoff`` (the fraction of Nyquist the round's search used), ``angular_step`` (its finest
        step, degrees), ``moved_fraction`` (poses that moved by more than half of it),
        ``rms_shift_change`` (px), ``median_score``, ``seconds``; in the rounds with a global
        search, ``global_fraction`` (poses taken from the global search's branch); with
        ``marginalise``, ``posterior_spread`` (degrees, the median of
        :attr:`PosePosterior.spread`) and ``posterior_candidates`` (the median effective number
        of orientations per image, ``1 / Σ w²``).
    stop_reason : str
        ``"converged"`` or ``"max_iterations"``.
    seconds : float
    """

    quaternions: np.ndarray
    shifts: np.ndarray
    subsets: np.ndarray
    scores: np.ndarray
    half_maps: np.ndarray
    volume: np.ndarray
    fsc: FSCResult
    resolution: float
    log: list
    stop_reason: str
    seconds: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The result as a dict of arrays (for a stage cache; no pickles): :meth:`from_arrays` inverts it."""
        return {
            "quaternions": self.quaternions,
            "shifts": self.shifts,
            "subsets": self.subsets,
            "scores": self.scores,
            "half_maps": self.half_maps,
            "volume": self.volume,
            "fsc_frequency": self.fsc.frequency,
            "fsc_correlation": self.fsc.correlation,
            "fsc_counts": self.fsc.counts,
            "fsc_voxel_size": np.asarray(self.fsc.voxel_size),
            "resolution": np.asarray(self.resolution),
            "log": np.asarray(json.dumps(self.log)),
            "stop_reason": np.asarray(self.stop_reason),
            "seconds": np.asarray(self.seconds),
        }

    @classmethod
    def from_arrays(cls, arrays) -> RefinementResult:
        """The result that :meth:`to_arrays` gave ``arrays``."""
        curve = FSCResult(
            frequency=np.asarray(arrays["fsc_frequency"]),
            correlation=np.asarray(arrays["fsc_correlation"]),
            counts=np.asarray(arrays["fsc_counts"]),
            voxel_size=float(arrays["fsc_voxel_size"]),
        )
        return cls(
            quaternions=np.asarray(arrays["quaternions"]),
            shifts=np.asarray(arrays["shifts"]),
            subsets=np.asarray(arrays["subsets"]),
            scores=np.asarray(arrays["scores"]),
            half_maps=np.asarray(arrays["half_maps"]),
            volume=np.asarray(arrays["volume"]),
            fsc=curve,
            resolution=float(arrays["resolution"]),
            log=json.loads(str(arrays["log"])),
            stop_reason=str(arrays["stop_reason"]),
            seconds=float(arrays["seconds"]),
        )


# --------------------------------------------------------------------------- building blocks


def half_sets(n: int, rng=None) -> np.ndarray:
    """A random split of ``n`` images into two halves of sizes ``ceil(n/2)`` and ``floor(n/2)``.

    Returns an int array of 1s and 2s (RELION's ``rlnRandomSubset``), the same for the same
    ``rng`` seed.
    """
    n = int(n)
    if n < 2:
        raise InputError(f"two half sets need at least 2 images, got {n}")
    order = as_rng(rng).permutation(n)
    subsets = np.empty(n, dtype=int)
    subsets[order[: (n + 1) // 2]] = 1
    subsets[order[(n + 1) // 2 :]] = 2
    return subsets


def perturbations(step_deg: float) -> np.ndarray:
    """The 27 quaternions of rotations by ``(-s, 0, s)`` about each lab axis combined, as rotation
    vectors ``s · (i, j, k)``, ``i, j, k ∈ {-1, 0, 1}``; the identity first (ties keep a pose)."""
    grid = np.array([(i, j, k) for i in (0, -1, 1) for j in (0, -1, 1) for k in (0, -1, 1)], dtype=np.float64)
    return _rotation_vectors(np.radians(float(step_deg)) * grid)


def _check_ball(step_deg, radius):
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 0 <= radius <= 6:
        raise InputError(f"the posterior's radius must be an integer from 0 to 6 (steps), got {radius!r}")
    if not (isinstance(step_deg, (int, float, np.floating)) and np.isfinite(step_deg) and step_deg > 0):
        raise InputError(f"the posterior's step must be a positive number of degrees, got {step_deg!r}")
    if step_deg * radius > 90:
        raise InputError(
            f"the posterior's ball ({step_deg}° × {radius} steps) reaches beyond 90°; use a smaller step or radius"
        )


def ball_perturbations(step_deg: float, radius: int) -> np.ndarray:
    """The quaternions of the rotation vectors ``s · (i, j, k)`` (integers) with
    ``i² + j² + k² ≤ radius²``: a cubic grid of spacing ``s`` over a ball of rotations around the
    identity (``radius`` 2: 33 of them, 3: 123); the identity first, then by distance.

    Parameters
    ----------
    step_deg : float
        Degrees: the grid's spacing ``s``.
    radius : int
        The ball's radius in steps, 0 to 6, and ``step_deg × radius ≤ 90``.
    """
    _check_ball(step_deg, radius)
    r = int(radius)
    grid = np.array(
        [(i, j, k) for i in range(-r, r + 1) for j in range(-r, r + 1) for k in range(-r, r + 1)], dtype=np.float64
    )
    grid = grid[np.sum(grid**2, axis=1) <= r * r]
    grid = grid[np.argsort(np.sum(grid**2, axis=1), kind="stable")]
    return _rotation_vectors(np.radians(float(step_deg)) * grid)


def _rotation_vectors(vectors) -> np.ndarray:
    """Quaternions ``(x, y, z, w)`` of rotation vectors (radians; the zero vector: the identity)."""
    angle = np.linalg.norm(vectors, axis=1)
    axis = np.divide(vectors, angle[:, None], out=np.zeros_like(vectors), where=angle[:, None] > 0)
    return np.concatenate([axis * np.sin(angle / 2)[:, None], np.cos(angle / 2)[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class Band:
    """The frequencies a search compares: ``0 < |k| ≤ cutoff`` on the half spectrum of
    ``rfft2(ifftshift(image))``, as a block of its rows and columns and a mask within it."""

    size: int
    rows: np.ndarray  # indices into the spectrum's rows (fftfreq)
    cols: np.ndarray  # indices into its columns (rfftfreq)
    ky: np.ndarray  # radians per pixel of each kept row
    kx: np.ndarray
    mask: np.ndarray  # (len(rows), len(cols)) bool
    weight: np.ndarray  # (len(cols),) Hermitian weights of the columns

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ky, kx)`` of the kept frequencies, in the order of ``mask``'s True entries."""
        kyy, kxx = np.meshgrid(self.ky, self.kx, indexing="ij")
        return kyy[self.mask], kxx[self.mask]

    def take(self, spectra: np.ndarray) -> np.ndarray:
        """The band's block of half spectra ``(..., size, size // 2 + 1)``."""
        return spectra[..., self.rows, :][..., self.cols]


def band(size: int, cutoff: float) -> Band:
    """The frequencies ``0 < |k| ≤ cutoff · π`` (``cutoff`` a fraction of Nyquist) of ``size``-px
    images, Nyquist's row and column left out."""
    size = int(size)
    if not 0 < cutoff <= 1:
        raise InputError(f"cutoff must be a fraction of Nyquist in (0, 1], got {cutoff!r}")
    ky_all, kx_all, weight = slice_frequencies(size)
    radius = cutoff * np.pi + 1e-12
    nyquist = np.pi - 1e-12
    rows = np.flatnonzero((np.abs(ky_all) <= radius) & (np.abs(ky_all) < nyquist))
    cols = np.flatnonzero((kx_all <= radius) & (kx_all < nyquist))
    ky, kx = ky_all[rows], kx_all[cols]
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    mask = (k2 <= radius**2) & (k2 > 0)
    return Band(size, rows, cols, ky, kx, mask, weight[cols])


def _spectra(images) -> np.ndarray:
    return np.fft.rfft2(np.fft.ifftshift(np.asarray(images, dtype=np.float64), axes=(-2, -1)), axes=(-2, -1))


class _SliceProjector:
    """Fourier slices of one volume at the band's frequencies, for many rotations per NUFFT.

    The points are ``Rᵀ (kx, ky, 0)`` ordered (z, y, x), the geometry of
    :func:`cryo_orient.tomography.backends.slice_points`, restricted to the band.
    """

    def __init__(self, volume, bnd: Band, eps=1e-5, nthreads=None):
        self.band = bnd
        self.coeffs = np.asarray(volume, dtype=np.complex64)
        opts = {} if nthreads is None else {"nthreads": int(nthreads)}
        self.plan = finufft.Plan(2, self.coeffs.shape, eps=eps, isign=-1, dtype=np.complex64, **opts)
        ky, kx = bnd.points
        self.k = np.stack([kx, ky]).astype(np.float32)  # (2, points)

    def values(self, quaternions) -> np.ndarray:
        """``(M, P)`` complex64 slices at the band's ``P`` kept frequencies (:attr:`Band.points`)."""
        R = rotations.quaternion_to_matrix(quaternions).astype(np.float32)
        # Rᵀ (kx, ky, 0) = kx R[0, :] + ky R[1, :]: component c is R[:, :2, c] @ (kx, ky).
        pts = [(R[:, :2, c] @ self.k).ravel() for c in (2, 1, 0)]  # (z, y, x), as the volume's axes
        self.plan.setpts(*pts)
        return self.plan.execute(self.coeffs).reshape(len(R), -1)

    def __call__(self, quaternions) -> np.ndarray:
        """``(M, rows, cols)`` complex64 slices (zero outside the band's mask) for ``(M, 4)`` rotations."""
        values = self.values(quaternions)
        out = np.zeros((len(values), *self.band.mask.shape), dtype=np.complex64)
        out[:, self.band.mask] = values
        return out


def _parabola_offsets(left, centre, right) -> np.ndarray:
    """Vertex offsets (in grid steps, within ±0.5) of parabolas through three samples each."""
    curvature = left - 2 * centre + right
    safe = np.where(curvature < 0, curvature, -1.0)
    return np.where(curvature < 0, np.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)


def _check_ctf(ctf, pixel_size, n):
    if ctf is None:
        return None, None
    if not isinstance(ctf, CTFParams):
        raise InputError(f"ctf must be a CTFParams (cryo_orient.tomography.ctf), got {type(ctf).__name__}")
    if len(ctf) not in (1, n):
        raise InputError(f"got {n} images but CTF parameters for {len(ctf)}; give one set per image (or one)")
    if pixel_size is None:
        raise InputError("a CTF needs the pixel size: pass pixel_size= in Å per pixel")
    return ctf, check_pixel_size(pixel_size)


def _ctf_block(ctf, pixel_size, size, index, bnd: Band):
    if ctf is None:
        return None
    c = ctf_values(ctf.of_images(index), size, pixel_size)
    return bnd.take(c).astype(np.float32)


def _check_reference(reference, size):
    reference = np.asarray(reference)
    if reference.shape != (size,) * 3:
        raise InputError(
            f"the reference is {reference.shape} but the images are {size} px; give a {size}³ map "
            "(resample it to the images' pixel size and box)"
        )
    return reference


def _check_poses(quaternions, shifts, n):
    q = np.asarray(quaternions, dtype=np.float64)
    if q.shape != (n, 4) or not np.all(np.isfinite(q)) or np.any(np.linalg.norm(q, axis=1) < 1e-12):
        raise InputError(f"quaternions must be ({n}, 4) finite non-zero (x, y, z, w), one per image; got {q.shape}")
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = np.zeros((n, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    if s.shape != (n, 2) or not np.all(np.isfinite(s)):
        raise InputError(f"shifts must be ({n}, 2) finite (dy, dx) pixels, one per image; got {s.shape}")
    return q, s.copy()


def search_poses(
    reference,
    images,
    quaternions,
    shifts=None,
    *,
    step: float,
    levels: int = 4,
    shift_range: float = 3.0,
    shift_step: float = 0.5,
    max_shift: float | None = None,
    cutoff: float = 1.0,
    ctf=None,
    pixel_size=None,
    batch_size: int = 64,
    nthreads=None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local search of each image's orientation and shift against a reference map.

    Parameters
    ----------
    reference : ndarray, shape (n, n, n)
        The map, indexed ``[z, y, x]``, voxel = pixel; compared only at frequencies up to
        ``cutoff`` (its low-pass). Not modified.
    images : ndarray, shape (N, n, n)
        The particle images (CTF-modulated where ``ctf`` is given, off centre by ``shifts``).
    quaternions : array_like, shape (N, 4)
        Current orientations; the search is local around them.
    shifts : array_like, shape (N, 2), optional
        Current ``(dy, dx)`` in pixels (default zeros).
    step : float
        Degrees: the first level's perturbation (see :func:`perturbations`).
    levels : int
        Coarse-to-fine levels, the step halved after each.
    shift_range, shift_step : float
        Pixels: radius of the first level's shift search around the current shift (halved per
        level, at least two steps) and the spacing of its grid (0 range: shifts are kept).
    max_shift : float, optional
        Pixels: a bound on ``|shift|``.
    cutoff : float
        Fraction of Nyquist: the highest frequency compared.
    ctf : CTFParams, optional
        One set per image (or one): the model is ``C · P``.
    pixel_size : float, optional
        Å per pixel; needed with ``ctf``.
    batch_size : int
        Images per NUFFT (``27 × batch_size`` slices).
    nthreads : int, optional
        finufft threads (its interpolation is deterministic for any count).
    progress : bool

    Returns
    -------
    quaternions : ndarray, shape (N, 4)
    shifts : ndarray, shape (N, 2)
    scores : ndarray, shape (N,)
        Normalised cross-correlation at the chosen pose (module docstring).
    """
    images = image_stack(images, "images", square=True)
    n, size = images.shape[0], images.shape[-1]
    reference = _check_reference(reference, size)
    q, s = _check_poses(quaternions, shifts, n)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, n)
    levels = int(levels)
    bnd = band(size, cutoff)
    project = _SliceProjector(reference, bnd, nthreads=nthreads)
    deltas = [perturbations(step * 0.5**level) for level in range(levels)]
    out_q, out_s, out_scores = q.copy(), s.copy(), np.zeros(n)
    with tqdm(total=n, disable=not progress, desc="pose search", unit="img") as bar:
        for start in range(0, n, int(batch_size)):
            sl = slice(start, min(start + int(batch_size), n))
            spectra = bnd.take(_spectra(images[sl])).astype(np.complex64)
            c = _ctf_block(ctf, pixel_size, size, sl, bnd)
            qb, sb = q[sl], s[sl]
            for level, delta in enumerate(deltas):
                radius = 0.0 if shift_range == 0 else max(shift_range * 0.5**level, 2 * shift_step)
                qb, sb, score = _search_level(project, bnd, spectra, c, qb, sb, delta, radius, shift_step, max_shift)
            out_q[sl], out_s[sl], out_scores[sl] = qb, sb, score
            bar.update(sl.stop - sl.start)
    return rotations.canonical(out_q), out_s, out_scores


def _candidates(project, bnd: Band, spectra, c, q, s, delta):
    """What scoring a batch's candidate poses ``δ ⊗ q`` needs: the candidates ``(b, K, 4)``, their
    models ``C · P`` on the band and the models' norms ``(b, K)``, the images' power ``‖B‖²`` over
    the band, and the images moved back by their current shifts (so that a shift grid, or no
    shift, is around the current one)."""
    b, k = len(q), len(delta)
    weight = bnd.weight.astype(np.float32)
    candidates = rotations.multiply(delta[None, :, :], q[:, None, :])  # δ ⊗ q: lab-frame perturbations
    slices = project(candidates.reshape(-1, 4)).reshape(b, k, *bnd.mask.shape)
    model = slices if c is None else slices * c[:, None]
    norm = np.sqrt(np.einsum("bkrc,c->bk", np.abs(model) ** 2, weight))
    power = np.einsum("brc,c->b", np.abs(spectra * bnd.mask) ** 2, weight)
    ramp = np.exp(1j * (bnd.ky[:, None] * s[:, None, None, 0] + bnd.kx[None, :] * s[:, None, None, 1]))
    return candidates, model, norm, power, spectra * ramp.astype(np.complex64)


def _search_level(project, bnd: Band, spectra, c, q, s, delta, radius, shift_step, max_shift):
    """One level for a batch: the best of 27 perturbed orientations, each with its best shift on
    the grid of ``radius`` around the current shift."""
    b = len(q)
    candidates, model, norm, power, centred = _candidates(project, bnd, spectra, c, q, s, delta)
    image_norm = np.sqrt(power)
    cross = centred[:, None] * np.conj(model)  # (b, k, rows, cols)
    steps = int(np.floor(radius / shift_step + 1e-9))
    grid = shift_step * np.arange(-steps, steps + 1)
    # score(g) = Re Σ w B conj(CP) e^{ik·g}: separable in (gy, ky) and (gx, kx).
    ey = np.exp(1j * np.outer(grid, bnd.ky)).astype(np.complex64)  # (G, rows)
    ex = (np.exp(1j * np.outer(grid, bnd.kx)) * bnd.weight).astype(np.complex64)  # (G, cols)
    cc = (ey @ cross @ ex.T).real  # (b, k, G, G), [gy, gx]
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    allowed = np.broadcast_to(gy**2 + gx**2 <= radius**2 + 1e-9, (b, *gy.shape))
    if max_shift is not None:
        allowed = allowed & ((s[:, 0, None, None] + gy) ** 2 + (s[:, 1, None, None] + gx) ** 2 <= max_shift**2 + 1e-9)
        allowed = allowed | ((gy == 0) & (gx == 0))[None]  # the current shift stays possible
    scores = np.where(allowed[:, None], cc / np.maximum(norm, 1e-30)[:, :, None, None], -np.inf)
    flat = scores.reshape(b, -1).argmax(axis=1)
    best_k, iy, ix = np.unravel_index(flat, scores.shape[1:])
    rows = np.arange(b)
    peak = scores[rows, best_k, iy, ix]
    n_grid = len(grid)

    def neighbour(dy, dx):
        jy, jx = np.clip(iy + dy, 0, n_grid - 1), np.clip(ix + dx, 0, n_grid - 1)
        value = scores[rows, best_k, jy, jx]
        inside = (iy + dy == jy) & (ix + dx == jx) & np.isfinite(value)
        return np.where(inside, value, peak)

    oy = _parabola_offsets(neighbour(-1, 0), peak, neighbour(1, 0))
    ox = _parabola_offsets(neighbour(0, -1), peak, neighbour(0, 1))
    new_s = s + np.stack([grid[iy] + oy * shift_step, grid[ix] + ox * shift_step], axis=1)
    if max_shift is not None:
        r = np.hypot(new_s[:, 0], new_s[:, 1])
        over = r > max_shift
        new_s[over] *= (max_shift / r[over])[:, None]
    new_q = candidates[rows, best_k]
    return new_q, new_s, peak / np.maximum(image_norm, 1e-30)


@dataclasses.dataclass(frozen=True)
class PosePosterior:
    """Each image's posterior over a few orientations around its current one (:func:`pose_posterior`).

    Attributes
    ----------
    image : ndarray, shape (M,)
        Which image each entry belongs to (ascending; every image has at least one entry).
    quaternions : ndarray, shape (M, 4)
        The entry's orientation.
    weights : ndarray, shape (M,)
        Its posterior probability; an image's weights sum to 1.
    mean : ndarray, shape (N, 4)
        Each image's posterior mean orientation (the normalised weighted mean of its candidates'
        quaternions, all on the hemisphere of its current one).
    spread : ndarray, shape (N,)
        Degrees: each image's posterior root-mean-square distance from its mean, a measure of how
        well its orientation is determined (about the expected error, where the noise model holds;
        never more than the ball's radius, and less where the ``keep`` cut drops a wide tail).
    """

    image: np.ndarray
    quaternions: np.ndarray
    weights: np.ndarray
    mean: np.ndarray
    spread: np.ndarray

    def subset(self, index) -> PosePosterior:
        """The entries of the images ``index`` (ascending), renumbered ``0 … len(index) − 1``."""
        index = np.asarray(index)
        if index.ndim != 1 or np.any(np.diff(index) <= 0):
            raise InputError("a posterior subset needs ascending image indices without repeats")
        position = np.full(len(self.mean), -1)
        position[index] = np.arange(len(index))
        take = position[self.image] >= 0
        return PosePosterior(
            position[self.image[take]], self.quaternions[take], self.weights[take], self.mean[index], self.spread[index]
        )


def pose_posterior(
    reference,
    images,
    quaternions,
    shifts=None,
    *,
    step: float,
    radius: int = 2,
    keep: int = 8,
    min_weight: float = 1e-3,
    cutoff: float = 1.0,
    ctf=None,
    pixel_size=None,
    batch_size: int = 64,
    nthreads=None,
) -> PosePosterior:
    """Posterior probabilities of the orientations on a small grid around each image's current one.

    The candidates are ``δ ⊗ q`` for the ``δ`` of :func:`ball_perturbations` (``step``,
    ``radius``), at the image's current shift. With white Gaussian noise of variance ``σ²`` per
    Fourier coefficient and the per-image scale ``α`` fitted, the log-likelihood of a candidate is
    ``score² / (2σ²)`` up to a constant (``score`` the module docstring's, before dividing by
    ``‖B‖``); ``σ²`` is estimated per image from the best candidate's residual,
    ``(‖B‖² − score²) / Σ_k w_k`` over the band. With a flat prior over the grid, the posterior is
    the normalised likelihood; the ``keep`` most probable candidates are kept (less those below
    ``min_weight``) and renormalised.
    This is the expectation step of RELION's (and cryoSPARC's) marginalisation over poses,
    restricted to a neighbourhood of each image's best pose.

    Parameters
    ----------
    reference : ndarray, shape (n, n, n)
        The map (``[z, y, x]``), compared only below ``cutoff``. Not modified.
    images : ndarray, shape (N, n, n)
        The particle images (CTF-modulated where ``ctf`` is given).
    quaternions : array_like, shape (N, 4)
        Current orientations: the centre of each image's grid.
    shifts : array_like, shape (N, 2), optional
        Current ``(dy, dx)`` in pixels (kept).
    step : float
        Degrees between neighbouring candidates.
    radius : int
        The grid's radius in steps (0 to 6; ``step × radius ≤ 90``).
    keep : int
        Candidates kept per image at most.
    min_weight : float
        Of those, the ones with a smaller probability are dropped too (before renormalising), so
        that a sharp posterior costs its reconstruction one entry, not ``keep``.
    cutoff : float
        Fraction of Nyquist: the highest frequency compared.
    ctf, pixel_size, batch_size, nthreads
        As :func:`search_poses`.

    Returns
    -------
    PosePosterior
        The kept candidates of every image with their probabilities, and each image's posterior
        mean and spread.
    """
    images = image_stack(images, "images", square=True)
    n, size = images.shape[0], images.shape[-1]
    reference = _check_reference(reference, size)
    q, s = _check_poses(quaternions, shifts, n)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, n)
    _check_ball(step, radius)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise InputError(f"keep must be a positive integer, got {keep!r}")
    if not (isinstance(min_weight, (int, float)) and 0 <= min_weight < 1):
        raise InputError(f"min_weight must be a probability in [0, 1), got {min_weight!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    bnd = band(size, cutoff)
    project = _SliceProjector(reference, bnd, nthreads=nthreads)
    delta = ball_perturbations(step, int(radius))
    keep = min(int(keep), len(delta))
    weight = bnd.weight.astype(np.float32)
    count = float(np.sum(np.broadcast_to(bnd.weight, bnd.mask.shape)[bnd.mask]))  # coefficients of the full spectrum
    chosen_q = np.zeros((n, keep, 4))
    chosen_w = np.zeros((n, keep))
    mean = np.zeros((n, 4))
    spread = np.zeros(n)
    per_batch = max(1, int(batch_size) * 27 // len(delta))  # as many slices per NUFFT as the local search
    for start in range(0, n, per_batch):
        sl = slice(start, min(start + per_batch, n))
        b = sl.stop - sl.start
        spectra = bnd.take(_spectra(images[sl])).astype(np.complex64)
        c = _ctf_block(ctf, pixel_size, size, sl, bnd)
        candidates, model, norm, power, centred = _candidates(project, bnd, spectra, c, q[sl], s[sl], delta)
        cross = np.einsum("brc,bkrc,c->bk", centred, np.conj(model), weight).real
        score = np.where(norm > 0, cross / np.maximum(norm, 1e-30), 0.0).astype(np.float64)
        image_power = power.astype(np.float64)
        best = score.max(axis=1)
        sigma2 = np.maximum(image_power - best**2, 1e-12 * image_power + 1e-30) / count
        log_like = (score**2 - best[:, None] ** 2) / (2 * sigma2[:, None])
        log_like = np.where(score > 0, log_like, -np.inf)  # a negative correlation: the wrong contrast
        log_like[~np.isfinite(log_like).any(axis=1), 0] = 0.0  # nothing correlates: the current pose
        order = np.argsort(-log_like, axis=1, kind="stable")[:, :keep]
        top = np.take_along_axis(log_like, order, axis=1)
        w = np.exp(top - top[:, :1])
        w /= w.sum(axis=1, keepdims=True)
        w[:, 1:] = np.where(w[:, 1:] >= min_weight, w[:, 1:], 0.0)  # the most probable candidate stays
        w /= w.sum(axis=1, keepdims=True)
        picked = np.take_along_axis(candidates, order[:, :, None], axis=1)
        m = np.einsum("bk,bkj->bj", w, picked)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        chosen_q[sl], chosen_w[sl], mean[sl] = picked, w, m
        angles = rotations.distance(picked.reshape(-1, 4), np.repeat(m, keep, axis=0)).reshape(b, keep)
        spread[sl] = np.degrees(np.sqrt(np.sum(w * angles**2, axis=1)))
    nonzero = chosen_w > 0
    image = np.repeat(np.arange(n), keep).reshape(n, keep)
    return PosePosterior(
        image[nonzero], rotations.canonical(chosen_q[nonzero]), chosen_w[nonzero], rotations.canonical(mean), spread
    )


def global_search(
    reference,
    images,
    shifts=None,
    *,
    step: float = 5.0,
    cutoff: float = 0.5,
    shift_range: float = 0.0,
    shift_step: float = 1.0,
    ctf=None,
    pixel_size=None,
    chunk_size: int = 4096,
    nthreads=None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exhaustive search of each image's orientation over a grid of all of SO(3).

    Every image is scored (the module docstring's score) against the reference's slices at every
    rotation of :func:`cryo_orient.geometry.rotations.so3_grid` (``step``) and, where
    ``shift_range > 0``, every shift of a grid of ``shift_step`` within ``shift_range`` of its
    current shift; the best is returned. It needs no starting orientation, so it finds the poses a
    local search cannot reach; its answer is at most about ``0.8 × step`` from the grid's best
    (:func:`search_poses` then refines it). The scores of all images against a chunk of rotations
    are two real matrix products (image spectra times slices, and the CTF² times the slices'
    power for the models' norms), so the cost is ``N × M × P`` multiply-adds for ``M`` rotations
    and ``P`` frequencies below ``cutoff``, times the shifts.

    Parameters
    ----------
    reference : ndarray, shape (n, n, n)
        The map (``[z, y, x]``), compared only below ``cutoff``. Not modified.
    images : ndarray, shape (N, n, n)
    shifts : array_like, shape (N, 2), optional
        Current ``(dy, dx)`` in pixels (default zeros): kept, or the centre of the shift grid.
    step : float
        Degrees between neighbouring grid rotations.
    cutoff : float
        Fraction of Nyquist: the highest frequency compared (a low-pass; a coarse grid needs no
        fine detail, and fine detail would make the score too narrow for the grid).
    shift_range, shift_step : float
        Pixels: the shift grid (0 range: shifts are kept).
    ctf : CTFParams, optional
        One set per image (or one): the model is ``C · P``.
    pixel_size : float, optional
        Å per pixel; needed with ``ctf``.
    chunk_size : int
        Grid rotations projected per NUFFT.
    nthreads : int, optional
        finufft threads.
    progress : bool

    Returns
    -------
    quaternions : ndarray, shape (N, 4)
        The best grid rotations (canonical).
    shifts : ndarray, shape (N, 2)
    scores : ndarray, shape (N,)
        Normalised cross-correlation at the best pose.
    """
    images = image_stack(images, "images", square=True)
    n, size = images.shape[0], images.shape[-1]
    reference = _check_reference(reference, size)
    _, s = _check_poses(np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)), shifts, n)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, n)
    if not (np.isfinite(shift_range) and shift_range >= 0 and np.isfinite(shift_step) and shift_step > 0):
        raise InputError(f"shift_range must be >= 0 and shift_step > 0 pixels, got {shift_range!r}, {shift_step!r}")
    grid = rotations.so3_grid(step)
    bnd = band(size, cutoff)
    project = _SliceProjector(reference, bnd, nthreads=nthreads)
    ky, kx = bnd.points
    weight = np.broadcast_to(bnd.weight, bnd.mask.shape)[bnd.mask]
    spectra = bnd.take(_spectra(images))[:, bnd.mask] * np.exp(1j * (ky * s[:, :1] + kx * s[:, 1:]))
    image_norm = np.sqrt(np.sum(weight * np.abs(spectra) ** 2, axis=1))
    c = None if ctf is None else _ctf_block(ctf, pixel_size, size, slice(None), bnd)[:, bnd.mask]
    weighted = weight * spectra * (1.0 if c is None else c)  # w B C: the model's CTF moved onto the image
    power_weight = (weight[None] * (1.0 if c is None else c**2)).astype(np.float32)  # (N or 1, P)
    steps = int(np.floor(shift_range / shift_step + 1e-9))
    offsets = [
        (gy, gx)
        for gy in shift_step * np.arange(-steps, steps + 1)
        for gx in shift_step * np.arange(-steps, steps + 1)
        if gy**2 + gx**2 <= shift_range**2 + 1e-9
    ]
    offsets.sort(key=lambda g: g[0] ** 2 + g[1] ** 2)  # the current shift first: ties keep it
    # Each shift's image spectra as one real matrix: Re Σ X conj(P) = [Re X, Im X] · [Re P, Im P].
    moved = [weighted * np.exp(1j * (ky * gy + kx * gx)) for gy, gx in offsets]
    moved = [np.concatenate([m.real, m.imag], axis=1).astype(np.float32) for m in moved]
    best = np.full(n, -np.inf)
    best_rot, best_shift = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    chunk_size = int(chunk_size)
    with tqdm(total=len(grid), disable=not progress, desc="global search", unit="rot") as bar:
        for start in range(0, len(grid), chunk_size):
            slices = project.values(grid[start : start + chunk_size])  # (M, P)
            inverse_norm = 1 / np.sqrt(np.maximum(power_weight @ (np.abs(slices) ** 2).T, 1e-30))  # (N or 1, M)
            stacked = np.concatenate([slices.real, slices.imag], axis=1).T  # (2P, M)
            for j, m in enumerate(moved):
                scores = (m @ stacked) * inverse_norm  # (N, M)
                top = scores.argmax(axis=1)
                value = scores[np.arange(n), top]
                better = value > best
                best[better], best_rot[better], best_shift[better] = value[better], start + top[better], j
            bar.update(len(slices))
    found_s = s + np.asarray(offsets)[best_shift]
    return grid[best_rot], found_s, best / np.maximum(image_norm, 1e-30)


# --------------------------------------------------------------------------- the iteration


def _map_rows(images, q, shifts, index, ctf, pixel_size, posterior=None):
    """What a map of the images ``index`` is fitted to: ``(images, quaternions, rows, model)``,
    each image centred at its pose or, with a :class:`PosePosterior` of all images, at every
    orientation of its posterior (``rows``: the position in ``index`` of each row; ``model``:
    the CTF, pixel size and posterior weights for :func:`reconstruct`)."""
    model = {}
    if ctf is not None:
        model = {"ctf": ctf.of_images(index), "pixel_size": pixel_size}
    centred = center_images(images[index], shifts[index])
    if posterior is None:
        return centred, q[index], np.arange(len(index)), model
    part = posterior.subset(index)
    if ctf is not None:
        model["ctf"] = model["ctf"].of_images(part.image)
    return centred[part.image], part.quaternions, part.image, model | {"weights": part.weights}


def _reconstruct_half(images, q, shifts, index, size, ctf, pixel_size, iterations, posterior=None):
    """The map of the images ``index`` at their poses or, with a :class:`PosePosterior` of all
    images, each image at every orientation of its posterior with the posterior's weight."""
    rows, quaternions, _, model = _map_rows(images, q, shifts, index, ctf, pixel_size, posterior)
    return reconstruct(rows, quaternions, (size,) * 3, "nufft", iterations=iterations, **model).volume


def _fold_maps(images, q, shifts, index, folds, size, ctf, pixel_size, iterations, posterior=None):
    """:func:`_reconstruct_half`'s map of the images ``index`` and, per fold, the map of those
    outside it (:func:`~cryo_orient.tomography.reconstruct.reconstruct_folds`)."""
    rows, quaternions, position, model = _map_rows(images, q, shifts, index, ctf, pixel_size, posterior)
    return reconstruct_folds(rows, quaternions, (size,) * 3, folds[index][position], iterations=iterations, **model)


def search_fold_labels(subsets, k: int) -> np.ndarray:
    """Each image's fold within its half set: every ``k``-th image of the half (0 … k−1), so that
    the folds interleave along the stack (micrographs and defocus groups are spread over them)."""
    labels = np.zeros(len(subsets), dtype=np.int64)
    for h in (1, 2):
        index = np.flatnonzero(subsets == h)
        labels[index] = np.arange(len(index)) % k
    return labels


def _half_maps(images, q, shifts, subsets, size, ctf, pixel_size, iterations, posterior=None):
    return np.stack(
        [
            _reconstruct_half(
                images, q, shifts, np.flatnonzero(subsets == h), size, ctf, pixel_size, iterations, posterior
            )
            for h in (1, 2)
        ]
    )


def _cutoff(curve: FSCResult, config: RefineConfig, pixel: float) -> float:
    """The next search's cutoff (fraction of Nyquist) from the half maps' FSC."""
    if config.lowpass == "fixed":
        return float(config.lowpass_max)
    resolution, _ = curve.resolution(0.143)
    return float(np.clip(2 * pixel / resolution, config.lowpass_min, config.lowpass_max))


def refine(
    images,
    quaternions,
    shifts=None,
    *,
    config=None,
    ctf=None,
    pixel_size=None,
    reference=None,
    nthreads=None,
    progress=False,
    callback=None,
    checkpoint=None,
) -> RefinementResult:
    """Refine orientations and shifts by local searches against gold-standard half maps.

    Parameters
    ----------
    images : array_like, shape (N, n, n)
        Particle images indexed ``[y, x]`` in raw units (CTF-modulated where ``ctf`` is given;
        the contrast of the map's projections). Not modified.
    quaternions : array_like, shape (N, 4)
        Starting orientations (scalar-last; the convention of
        :mod:`cryo_orient.tomography.projection`).
    shifts : array_like, shape (N, 2), optional
        Starting ``(dy, dx)`` in pixels (default zeros).
    config : RefineConfig or dict, optional
    ctf : CTFParams, optional
        One set per image (or one for all); then ``pixel_size`` is needed.
    pixel_size : float, optional
        Å per pixel (also the unit of the resolutions; 1 when not given).
    reference : ndarray, shape (n, n, n), optional
        A map in the images' frame: the first round searches both halves against it, low-passed
        to ``config.initial_lowpass``; without it, against the half maps of the starting poses
        (the maps' frame then follows the poses and may drift with them by a fraction of their
        error, as a global rotation and translation).
    nthreads : int, optional
        finufft threads of the search.
    progress : bool
        Progress bars.
    callback : callable, optional
        ``callback(iteration, quaternions, shifts)`` for the starting poses (iteration 0) and after
        each round (e.g. to follow errors against a known truth). A dict it returns is added to
        that round's ``log`` entry (so it is kept in a checkpoint too).
    checkpoint : path, optional
        A ``.npz`` file the state is saved to after every round (atomically). If it exists and
        was written for the same images, starting poses, reference and settings, the refinement
        resumes after its last round and gives the same result as an uninterrupted run; a
        checkpoint of other inputs is ignored and overwritten. The caller removes it when done.

    Returns
    -------
    RefinementResult
    """
    start = time.perf_counter()
    config = config if isinstance(config, RefineConfig) else RefineConfig.from_dict(dict(config or {}))
    images = image_stack(images, "images", square=True)
    n, size = images.shape[0], images.shape[-1]
    q, s = _check_poses(quaternions, shifts, n)
    pixel = 1.0 if pixel_size is None else check_pixel_size(pixel_size)
    ctf, pixel_size = _check_ctf(ctf, pixel_size, n)
    if reference is not None:
        reference = _check_reference(reference, size).astype(np.float64)
    subsets = half_sets(n, config.half_set_seed)
    halves = [np.flatnonzero(subsets == h) for h in (1, 2)]
    mask = "soft_sphere" if config.fsc_mask else None
    config.check_images(n)
    k = int(config.search_folds)
    folds = search_fold_labels(subsets, k) if k > 1 else None
    # The images searched together and the map they are searched against: (half, indices, fold).
    groups = (
        [(h, index, None) for h, index in enumerate(halves)]
        if folds is None
        else [(h, index[folds[index] == f], f) for h, index in enumerate(halves) for f in range(k)]
    )

    def maps_and_fsc(q, s, posterior):
        """The half maps, their FSC and, with folds, each fold's leave-fold-out map ``[half][fold]``."""
        if folds is None:
            maps = _half_maps(images, q, s, subsets, size, ctf, pixel, config.reconstruction_iterations, posterior)
            out = None
        else:
            both = [
                _fold_maps(images, q, s, index, folds, size, ctf, pixel, config.reconstruction_iterations, posterior)
                for index in halves
            ]
            maps, out = np.stack([whole for whole, _ in both]), [without for _, without in both]
        return maps, fsc(maps[0], maps[1], pixel, mask=mask), out

    fingerprint = _fingerprint(images, q, s, reference, ctf, pixel, config)
    state = _load_checkpoint(checkpoint, fingerprint)
    if state is None:
        log, scores, stop, first, posterior = [], np.zeros(n), "max_iterations", 0, None
    else:
        q, s, scores, log, stop = state["q"], state["s"], state["scores"], state["log"], state["stop"]
        first, posterior = len(log) - 1, state["posterior"]
    maps, curve, fold_out = maps_and_fsc(q, s, posterior)
    resolution, crossed = curve.resolution(0.143)
    if not log:
        log.append(
            {
                "iteration": 0,
                "resolution": resolution,
                "crossed": crossed,
                "cutoff": None,
                "angular_step": None,
                "moved_fraction": None,
                "rms_shift_change": None,
                "median_score": None,
                "seconds": time.perf_counter() - start,
                **_called(callback, 0, q, s),
            }
        )
        _save_checkpoint(checkpoint, fingerprint, q, s, scores, log, stop, posterior)
    best = min(entry["resolution"] for entry in log)
    for iteration in range(first, config.max_iterations if stop == "max_iterations" else first):
        tick = time.perf_counter()
        if iteration == 0 and reference is not None:
            cutoff = float(config.initial_lowpass)
        else:
            cutoff = _cutoff(curve, config, pixel)
        new_q, new_s = q.copy(), s.copy()
        from_global = np.zeros(n, dtype=bool)
        parts = []
        for h, index, fold in groups:
            # Half h is searched against its own map only (gold standard); with folds, fold f of
            # it against the map of the rest of the half.
            if iteration == 0 and reference is not None:
                target = reference
            else:
                target = maps[h] if fold is None else fold_out[h][fold]
                target = fsc_filter(target, curve) if config.fsc_weighting else target
            group_ctf = None if ctf is None else ctf.of_images(index)

            # What every search of this group shares: its map's CTFs, pixel size and cutoff.
            against = {"ctf": group_ctf, "pixel_size": pixel_size, "cutoff": cutoff, "nthreads": nthreads}

            def local(start_q, start_s, target=target, index=index, against=against):
                return search_poses(
                    target,
                    images[index],
                    start_q,
                    start_s,
                    step=config.round_step(iteration),
                    levels=config.local_steps,
                    shift_range=config.shift_range,
                    shift_step=config.shift_step,
                    max_shift=config.max_shift,
                    batch_size=config.batch_size,
                    progress=progress,
                    **against,
                )

            new_q[index], new_s[index], scores[index] = local(q[index], s[index])
            if iteration < config.global_rounds:
                grid_q, grid_s, _ = global_search(
                    target,
                    images[index],
                    s[index] if config.global_shift_centre == "current" else None,
                    step=config.global_step,
                    shift_range=config.global_shift_range,
                    shift_step=config.global_shift_step,
                    progress=progress,
                    **against,
                )
                other_q, other_s, other_scores = local(grid_q, grid_s)
                take = other_scores > scores[index]
                new_q[index[take]], new_s[index[take]] = other_q[take], other_s[take]
                scores[index[take]] = other_scores[take]
                from_global[index[take]] = True
            if config.marginalise:
                # The posterior around the new best poses, against the same map and cutoff.
                part = pose_posterior(
                    target,
                    images[index],
                    new_q[index],
                    new_s[index],
                    step=config.posterior_step,
                    radius=config.posterior_radius,
                    keep=config.posterior_keep,
                    batch_size=config.batch_size,
                    **against,
                )
                parts.append((index, part))
        posterior = _merged(parts, n) if config.marginalise else None
        fine = config.finest_step(iteration)
        moved = float(np.mean(np.degrees(rotations.distance(q, new_q)) > 0.5 * fine))
        shift_change = float(np.sqrt(np.mean(np.sum((new_s - s) ** 2, axis=1))))
        q, s = new_q, new_s
        maps, curve, fold_out = maps_and_fsc(q, s, posterior)
        resolution, crossed = curve.resolution(0.143)
        log.append(
            {
                "iteration": iteration + 1,
                "resolution": resolution,
                "crossed": crossed,
                "cutoff": cutoff,
                "angular_step": fine,
                "moved_fraction": moved,
                "rms_shift_change": shift_change,
                "median_score": float(np.median(scores)),
                **({"global_fraction": float(np.mean(from_global))} if iteration < config.global_rounds else {}),
                **({} if posterior is None else _posterior_summary(posterior)),
                "seconds": time.perf_counter() - tick,
                **_called(callback, iteration + 1, q, s),
            }
        )
        improved = resolution < best * (1 - config.resolution_tolerance)
        best = min(best, resolution)
        # The step keeps shrinking over the first rounds; converged only once it is at its floor.
        at_floor = config.round_step(iteration) <= config.round_step(iteration + 1)
        global_ahead = iteration + 1 < config.global_rounds  # a global round still to come
        if at_floor and not improved and moved <= config.moved_tolerance and not global_ahead:
            stop = "converged"
        _save_checkpoint(checkpoint, fingerprint, q, s, scores, log, stop, posterior)
        if stop == "converged":
            break
    volume = _reconstruct_half(
        images, q, s, np.arange(n), size, ctf, pixel, config.reconstruction_iterations, posterior
    )
    return RefinementResult(
        quaternions=rotations.canonical(q),
        shifts=s,
        subsets=subsets,
        scores=scores,
        half_maps=maps,
        volume=volume,
        fsc=curve,
        resolution=float(resolution),
        log=log,
        stop_reason=stop,
        # A resumed run counts the rounds it loaded at the seconds they took.
        seconds=time.perf_counter() - start + sum(entry["seconds"] for entry in log[1 : first + 1]),
    )


def _called(callback, iteration, q, s) -> dict:
    if callback is None:
        return {}
    extra = callback(iteration, q.copy(), s.copy())
    return dict(extra) if isinstance(extra, dict) else {}


def _fingerprint(images, q, s, reference, ctf, pixel, config) -> str:
    """What a checkpoint must have been written for: every input of :func:`refine`'s result."""
    h = hashlib.sha256()
    for array in (images, q, s, reference):
        if array is not None:
            array = np.ascontiguousarray(array)
            h.update(str((array.dtype, array.shape)).encode())
            h.update(array.tobytes())
    if ctf is not None:
        h.update(json.dumps(jsonable(dataclasses.asdict(ctf)), sort_keys=True).encode())
    h.update(json.dumps(jsonable({"pixel": pixel, **config.to_dict()}), sort_keys=True).encode())
    return h.hexdigest()


def _merged(parts, n) -> PosePosterior:
    """One :class:`PosePosterior` of all ``n`` images from the halves' ``(index, posterior)``."""
    image = np.concatenate([index[part.image] for index, part in parts])
    order = np.argsort(image, kind="stable")
    mean, spread = np.zeros((n, 4)), np.zeros(n)
    for index, part in parts:
        mean[index], spread[index] = part.mean, part.spread
    return PosePosterior(
        image[order],
        np.concatenate([part.quaternions for _, part in parts])[order],
        np.concatenate([part.weights for _, part in parts])[order],
        mean,
        spread,
    )


def _posterior_summary(posterior: PosePosterior) -> dict:
    """The round log's view of the posterior: its median spread and effective candidates per image."""
    n = len(posterior.mean)
    effective = 1 / np.bincount(posterior.image, weights=posterior.weights**2, minlength=n)
    return {
        "posterior_spread": float(np.median(posterior.spread)),
        "posterior_candidates": float(np.median(effective)),
    }


def _save_checkpoint(path, fingerprint, q, s, scores, log, stop, posterior=None):
    if path is None:
        return
    soft = {} if posterior is None else {f"posterior_{k}": v for k, v in dataclasses.asdict(posterior).items()}
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                fingerprint=np.asarray(fingerprint),
                q=q,
                s=s,
                scores=scores,
                log=np.asarray(json.dumps(jsonable(log))),
                stop=np.asarray(stop),
                **soft,
            )


_POSTERIOR_FIELDS = ("image", "quaternions", "weights", "mean", "spread")


def _load_checkpoint(path, fingerprint):
    if path is None or not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) != fingerprint:
                return None
            return {
                "q": np.array(f["q"]),
                "s": np.array(f["s"]),
                "scores": np.array(f["scores"]),
                "log": json.loads(str(f["log"])),
                "stop": str(f["stop"]),
                "posterior": (
                    PosePosterior(**{k: np.array(f[f"posterior_{k}"]) for k in _POSTERIOR_FIELDS})
                    if "posterior_image" in f.files
                    else None
                ),
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # a corrupt checkpoint: start again
