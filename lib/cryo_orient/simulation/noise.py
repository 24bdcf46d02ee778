"""The measurement model's perturbations: white Gaussian noise, in-plane shifts, standardisation.

Shifts are ``(dy, dx)`` in pixels, drawn from a triangular distribution on [-T, T] (mode 0):
``"circular"`` (the paper's) truncates them to integers and rolls the image (content leaving one
edge re-enters at the other); ``"subpixel"`` (realistic) moves the image by the real-valued shift
with cubic splines and zero fill. :class:`Perturbation` applies them with fresh draws to batches
of clean images during training, in the simulator's order, so that an estimator can see new noise
every batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from cryo_orient import validation
from cryo_orient.data.dataset import Dataset
from cryo_orient.validation import InputError, as_rng

__all__ = [
    "SHIFT_MODES",
    "Perturbation",
    "add_noise",
    "noise_variance_for_snr",
    "normalize_background",
    "random_shifts",
    "shift_images",
    "standardize",
]

SHIFT_MODES = ("none", "circular", "subpixel")


def _check_images(images) -> np.ndarray:
    images = validation.image_stack(images, finite=False, empty=True)  # NaN stays NaN through noise and shifts
    return images if np.issubdtype(images.dtype, np.floating) else images.astype(np.float32)


def add_noise(images, variance, rng=None) -> np.ndarray:
    """Add white Gaussian noise N(0, ``variance``) to every pixel; returns a new array."""
    images = _check_images(images)
    if not np.isfinite(variance) or variance < 0:
        raise InputError(f"noise variance must be a finite number >= 0, got {variance!r}")
    if variance == 0:
        return images.copy()
    noise = as_rng(rng).standard_normal(images.shape) * np.sqrt(variance)
    return (images + noise).astype(images.dtype, copy=False)


def noise_variance_for_snr(signal_variance, snr=None, snr_db=None) -> float:
    """Noise variance giving ``snr`` (a ratio) or ``snr_db`` (decibels) for a signal variance."""
    if (snr is None) == (snr_db is None):
        raise InputError("give exactly one of snr (a ratio) or snr_db (in dB)")
    if snr is None:
        snr = 10 ** (snr_db / 10)
    if not np.isfinite(snr) or snr <= 0:
        raise InputError(f"the SNR must be a positive finite ratio, got {snr!r}")
    if not np.isfinite(signal_variance) or signal_variance <= 0:
        raise InputError(f"signal variance must be positive, got {signal_variance!r}")
    return float(signal_variance / snr)


def random_shifts(n, limit, mode="circular", rng=None) -> np.ndarray:
    """Shifts ``(dy, dx)`` in pixels, each from a triangular distribution on [-limit, limit].

    ``mode="circular"`` truncates towards 0 to integers, as the paper did; ``"subpixel"`` keeps
    real values; ``"none"`` (or ``limit == 0``) returns zeros. Shape (n, 2).
    """
    if mode not in SHIFT_MODES:
        raise InputError(f"unknown shift mode {mode!r}; choose one of {SHIFT_MODES}")
    if not np.isfinite(limit) or limit < 0:
        raise InputError(f"shift limit must be a finite number >= 0 pixels, got {limit!r}")
    if mode == "none" or limit == 0:
        return np.zeros((n, 2))
    shifts = as_rng(rng).triangular(-limit, 0.0, limit, size=(n, 2))
    return np.trunc(shifts) if mode == "circular" else shifts


def shift_images(images, shifts, mode="circular") -> np.ndarray:
    """Move each image by its ``(dy, dx)`` shift; returns a new array.

    ``"circular"`` rolls by integer shifts (content leaving one edge re-enters at the other, as in
    the paper); ``"subpixel"`` interpolates with cubic splines and fills with zeros.
    """
    images = _check_images(images)
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (len(images), 2):
        raise InputError(f"shifts must have shape ({len(images)}, 2), got {shifts.shape}")
    if mode not in SHIFT_MODES:
        raise InputError(f"unknown shift mode {mode!r}; choose one of {SHIFT_MODES}")
    out = np.empty_like(images)
    for i, (image, shift) in enumerate(zip(images, shifts)):
        if mode == "none" or not shift.any():
            out[i] = image
        elif mode == "circular":
            if not np.array_equal(shift, np.round(shift)):
                raise InputError("circular shifts must be integers; use mode='subpixel'")
            out[i] = np.roll(image, shift.astype(int), axis=(0, 1))
        else:
            out[i] = ndimage.shift(image, shift, order=3, mode="constant", cval=0.0)
    return out


def standardize(images, mean=None, std=None) -> np.ndarray:
    """Global standardisation ``(X - mean) / std`` over the whole set (the paper's), new array."""
    images = _check_images(images)
    mean = float(images.mean(dtype=np.float64)) if mean is None else float(mean)
    std = float(images.std(dtype=np.float64)) if std is None else float(std)
    if not np.isfinite(std) or std <= 0:
        raise InputError(f"cannot standardise: the standard deviation is {std!r} (constant images?)")
    return ((images - mean) / std).astype(images.dtype, copy=False)


def normalize_background(images, radius, *, invert=False) -> np.ndarray:
    """Per-image normalisation of the background, as ``relion_preprocess --norm --no_ramp`` does it.

    Each image has the mean of its pixels outside the circle of ``radius`` (pixels, about the
    centre pixel ``n // 2``) subtracted and is divided by their standard deviation, so that the
    solvent is noise of mean 0 and standard deviation 1: what RELION's refinement expects (its
    noise model is estimated from such images). ``invert`` negates the images as well
    (``--invert_contrast``: particles denser than the solvent bright, RELION's convention).

    Parameters
    ----------
    images : array_like, shape (N, n, n)
        Not modified.
    radius : float
        Pixels; the background is the pixels farther than this from the centre.
    invert : bool

    Returns
    -------
    ndarray, shape (N, n, n)
        float32.
    """
    images = validation.image_stack(images, square=True)
    n = images.shape[-1]
    radius = validation.positive(radius, "radius")
    y, x = np.indices((n, n)) - n // 2
    outside = np.hypot(y, x) > radius
    if outside.sum() < 10:
        raise InputError(
            f"normalize_background: a radius of {radius:g} px leaves {int(outside.sum())} background pixels in a "
            f"{n} px box; give a smaller radius (about the particle's, at most {n // 2 - 1} px)"
        )
    background = images[:, outside].astype(np.float64)
    mean = background.mean(axis=1)[:, None, None]
    std = background.std(axis=1)[:, None, None]
    if np.any(std <= 0):
        raise InputError("normalize_background: an image has a constant background (standard deviation 0)")
    sign = -1.0 if invert else 1.0
    return (sign * (images - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Fresh noise and shifts drawn for every training batch (the realistic option).

    Applied to *clean* raw projections in the simulator's order (noise, then integer circular
    shifts for ``"circular"``; sub-pixel shift, then noise for ``"subpixel"``), followed by the
    dataset's global standardisation (``mean``, ``std``) so inputs match the fixed dataset's.
    """

    noise_variance: float = 0.0
    shift_mode: str = "none"
    shift_limit: float = 0.0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        validation.choice(self.shift_mode, "shift_mode", SHIFT_MODES)
        if not (np.isfinite(self.noise_variance) and self.noise_variance >= 0):
            raise InputError(f"noise_variance must be finite and ≥ 0, got {self.noise_variance!r}")
        if not (np.isfinite(self.shift_limit) and self.shift_limit >= 0):
            raise InputError(f"shift_limit must be finite and ≥ 0, got {self.shift_limit!r}")
        if not (np.isfinite(self.std) and self.std > 0):
            raise InputError(f"std must be finite and > 0, got {self.std!r}")

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Perturbation:
        """The perturbation a simulated :class:`~cryo_orient.data.dataset.Dataset` was made with."""
        mean, std = dataset.standardization
        return cls(
            noise_variance=dataset.noise_variance,
            shift_mode=dataset.config["shift_mode"],
            shift_limit=float(dataset.config["shift_limit"]),
            mean=mean,
            std=std,
        )

    def apply(self, clean, rng) -> np.ndarray:
        """Perturb a batch of clean raw projections; returns new standardised float32 images."""
        rng = as_rng(rng)
        images = np.asarray(clean, dtype=np.float32)
        shifts = random_shifts(len(images), self.shift_limit, self.shift_mode, rng)
        if self.shift_mode == "subpixel":
            images = shift_images(images, shifts, "subpixel")
            images = add_noise(images, self.noise_variance, rng)
        else:
            images = add_noise(images, self.noise_variance, rng)
            if self.shift_mode == "circular":
                images = shift_images(images, shifts, "circular")
        return ((images - self.mean) / self.std).astype(np.float32)
