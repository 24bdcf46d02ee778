"""What a particle stack looks like, measured against its reference map: the settings of a
training set that matches it.

:func:`match_stack` compares a sample of the stack's images with projections of the reference
(at random orientations, with the CTFs of the same particles, in RELION's convention) and
measures:

contrast
    The correlation of the stack's mean image with the mean CTF-modulated projection. Both are
    blobs at low resolution (the CTF is positive there, for underfocus); a negative correlation
    means the stack has the opposite contrast (dark particles on a light background, as in
    micrographs, or a simulator with the other CTF sign).
signal scale and noise
    Per Fourier shell, the stack's mean power ``P(k)`` is fitted as ``a · S(k) + N² σ²``, with
    ``S(k)`` the projections' mean power and ``N² σ²`` the flat power of white noise of variance
    ``σ²`` on ``N × N`` pixels. The noise variance in the units of the reference's projections is
    then ``σ² / a``: a training set simulated with it has the stack's SNR.
shift spread
    The stack's mean image is the projections' mean image blurred by the distribution of the
    particles' offsets; the standard deviation ``s`` (per axis) of the Gaussian blur that best
    turns one into the other is the offsets' spread.

The sample is evenly spread over the stack and the orientations are drawn from ``rng``, so the
measurement is deterministic.

Without a reference, :func:`blob_contrast` decides the contrast alone: the stack's mean image,
a blob of the particles' mean projection at low resolution, correlated with a centred Gaussian.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from cryo_orient.data.dataset import Dataset
from cryo_orient.geometry import rotations
from cryo_orient.tomography.ctf import CTFParams, apply_ctf
from cryo_orient.tomography.projection import project
from cryo_orient.validation import InputError, as_rng, choice

__all__ = ["INVERT_CHOICES", "StackModel", "blob_contrast", "match_stack", "radial_power", "shell_mean", "shell_radius"]

INVERT_CHOICES = ("auto", "yes", "no")
# Below this |correlation| the contrast cannot be told from the mean images.
_AMBIGUOUS = 0.2


@dataclasses.dataclass(frozen=True)
class StackModel:
    """What :func:`match_stack` measured (JSON-able: :meth:`to_dict`).

    Attributes
    ----------
    invert : bool
        Whether the stack's images are to be negated to match RELION's convention.
    invert_choice : str
        ``"auto"`` (decided from ``contrast_correlation``), ``"yes"`` or ``"no"`` (given).
    contrast_correlation : float
        Correlation of the stack's mean image with the mean CTF-modulated projection, in [-1, 1].
    signal_scale : float
        ``a``: the stack's signal power over the projections' (the stack ≈ √a × projections).
    noise_variance : float
        White-noise variance ``σ²`` of the stack's images, in the stack's units.
    training_noise_variance : float
        ``σ² / a``: the noise variance that gives projections of the reference the stack's SNR.
    snr : float
        Signal-to-noise ratio of the stack (signal variance over noise variance).
    shift_sigma : float
        Spread of the particles' offsets, pixels per axis.
    n_images : int
        Images measured.
    """

    invert: bool
    invert_choice: str
    contrast_correlation: float
    signal_scale: float
    noise_variance: float
    training_noise_variance: float
    snr: float
    shift_sigma: float
    n_images: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def shell_radius(size: int) -> np.ndarray:
    """The integer Fourier shell (radius in frequency pixels) of each coefficient of
    ``np.fft.rfft2`` of a ``size`` × ``size`` image: shape ``(size, size // 2 + 1)``."""
    ky = np.fft.fftfreq(size) * size
    kx = np.fft.rfftfreq(size) * size
    return np.rint(np.hypot(ky[:, None], kx[None, :])).astype(int)


def shell_mean(values) -> np.ndarray:
    """Mean of ``values`` (on the ``rfft2`` grid of a square image, see :func:`shell_radius`) per
    integer Fourier shell, for shells ``0 .. size // 2``."""
    values = np.asarray(values, dtype=np.float64)
    radius = shell_radius(values.shape[0])
    # Each rfft coefficient off the kx = 0 (and Nyquist) column stands for two; weights cancel in the mean.
    shells = values.shape[0] // 2 + 1
    keep = radius < shells
    total = np.bincount(radius[keep], values[keep], minlength=shells)
    count = np.bincount(radius[keep], minlength=shells)
    return total / np.maximum(count, 1)


def radial_power(images) -> np.ndarray:
    """Mean power per integer Fourier shell (index = radius in frequency pixels) of a stack."""
    images = np.asarray(images, dtype=np.float64)
    return shell_mean(np.mean(np.abs(np.fft.rfft2(images)) ** 2, axis=0))


def _correlation(a, b) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.vdot(a, b) / denominator) if denominator > 0 else 0.0


def _shift_sigma(stack_mean, reference_mean, max_sigma) -> float:
    """The Gaussian blur (σ, pixels) that best maps the reference's mean image onto the stack's."""
    best, best_sigma = np.inf, 0.0
    s = stack_mean - stack_mean.mean()
    for sigma in np.arange(0.0, max_sigma + 1e-9, 0.25):
        blurred = ndimage.gaussian_filter(reference_mean, sigma, mode="constant") if sigma else reference_mean
        b = blurred - blurred.mean()
        scale = np.vdot(b, s) / max(np.vdot(b, b), 1e-300)
        residual = float(np.sum((s - scale * b) ** 2))
        if residual < best:
            best, best_sigma = residual, float(sigma)
    return best_sigma


def match_stack(stack: Dataset, volume, *, invert="auto", n_images=1000, rng=None) -> StackModel:
    """Measure a particle stack against projections of its reference map (see the module docstring).

    Parameters
    ----------
    stack : Dataset
        The particles (e.g. :func:`cryo_orient.data.read_particles`); its ``ctf`` columns, if any,
        are applied to the reference's projections.
    volume : ndarray, shape (box, box, box)
        The reference map on the stack's pixel size and box (see
        :func:`cryo_orient.geometry.volumes.resample_volume`).
    invert : {"auto", "yes", "no"}
        Decide the contrast from the images (``"auto"``), or take it as given.
    n_images : int
        Images of the stack to measure, evenly spread over it (and as many projections).
    rng : numpy.random.Generator, int or None
        The projections' random orientations.

    Returns
    -------
    StackModel
    """
    invert = choice(invert, "invert", INVERT_CHOICES)
    volume = np.asarray(volume, dtype=np.float64)
    if volume.shape != (stack.image_size,) * 3:
        raise InputError(
            f"the reference must be a {stack.image_size}³ map on the stack's grid, got {volume.shape}; "
            "resample it with resample_volume"
        )
    rows = np.unique(np.linspace(0, stack.n - 1, min(stack.n, int(n_images))).astype(int))
    images = stack.images("raw", index=rows)
    q = rotations.uniform_so3(len(rows), rng=as_rng(rng))
    projections = project(volume, q, stack.image_size, "nufft")
    if stack.ctf:
        params = CTFParams.from_columns({k: v[rows] for k, v in stack.ctf.items()}, len(rows))
        projections = apply_ctf(projections, params, stack.pixel_size)
    stack_mean, reference_mean = images.mean(axis=0), projections.mean(axis=0)
    correlation = _correlation(ndimage.gaussian_filter(stack_mean, 1.0), ndimage.gaussian_filter(reference_mean, 1.0))
    if invert == "auto":
        if abs(correlation) < _AMBIGUOUS:
            raise InputError(
                f"{stack.path}: cannot tell the stack's contrast from its mean image (correlation "
                f"{correlation:+.2f} with the reference's mean projection); give --invert-contrast yes or no"
            )
        flip = correlation < 0
    else:
        flip = invert == "yes"
    sign = -1.0 if flip else 1.0

    # Shell powers: fit P = a S + c over the shells off the origin (c = N² σ² for white noise).
    stack_power, reference_power = radial_power(images), radial_power(projections)
    A = np.stack([reference_power[1:], np.ones(len(reference_power) - 1)], axis=1)
    (scale, flat), *_ = np.linalg.lstsq(A, stack_power[1:], rcond=None)
    if not (scale > 0):
        raise InputError(
            f"{stack.path}: the images' power spectrum does not follow the reference's projections "
            f"(fitted signal scale {scale:.3g}); check the pixel size and the reference"
        )
    noise_variance = max(float(flat), 0.0) / stack.image_size**2
    signal_variance = float(scale) * float(projections.var())
    sigma = _shift_sigma(sign * stack_mean, reference_mean, stack.image_size / 8)
    return StackModel(
        invert=bool(flip),
        invert_choice=invert,
        contrast_correlation=correlation,
        signal_scale=float(scale),
        noise_variance=noise_variance,
        training_noise_variance=noise_variance / float(scale),
        snr=signal_variance / noise_variance if noise_variance > 0 else float("inf"),
        shift_sigma=sigma,
        n_images=len(rows),
    )


def blob_contrast(stack: Dataset, *, invert="auto", n_images=1000) -> tuple[bool, float]:
    """Decide a stack's contrast without a reference: is its mean image a bright central blob?

    At low resolution the CTF is positive (underfocus, RELION's sign), so in RELION's convention
    the mean of many particle images, whatever their orientations, is a bright blob at the
    centre (the particles' mean projection, blurred by their offsets); in the opposite contrast it
    is dark. The mean image (Gaussian-smoothed, σ = 1 px) is correlated with a centred Gaussian of
    σ = box / 8.

    Parameters
    ----------
    stack : Dataset
    invert : {"auto", "yes", "no"}
        ``"yes"`` / ``"no"`` are returned as given (with the correlation, for the record).
    n_images : int
        Images evenly spread over the stack.

    Returns
    -------
    invert : bool
        Whether the images are to be negated to match RELION's convention.
    correlation : float
        Of the mean image with the blob, in [-1, 1]; its sign decides ``"auto"``.
    """
    invert = choice(invert, "invert", INVERT_CHOICES)
    rows = np.unique(np.linspace(0, stack.n - 1, min(stack.n, int(n_images))).astype(int))
    mean = stack.images("raw", index=rows).mean(axis=0)
    n = stack.image_size
    y, x = np.mgrid[:n, :n] - n // 2
    blob = np.exp(-(x**2 + y**2) / (2 * (n / 8) ** 2))
    correlation = _correlation(ndimage.gaussian_filter(mean, 1.0), blob)
    if invert != "auto":
        return invert == "yes", correlation
    if abs(correlation) < _AMBIGUOUS:
        raise InputError(
            f"{stack.path}: cannot tell the stack's contrast from its mean image (correlation "
            f"{correlation:+.2f} with a central blob); give --invert-contrast yes or no"
        )
    return bool(correlation < 0), correlation
