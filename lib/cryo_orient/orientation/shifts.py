"""In-plane shifts: estimated by cross-correlation with reference images, and undone exactly.

Convention: a shift ``(dy, dx)`` in pixels is how far the particle sits from the image centre
(pixel ``n // 2``): an image ``I(y, x) = R(y − dy, x − dx)`` of a centred reference ``R``. This is
the ``shifts`` of a simulated dataset and of :meth:`cryo_orient.data.relion.ParticleTable.shifts`
(RELION's origin is ``-(dx, dy)`` times the pixel size).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryo_orient.validation import InputError, image_stack

__all__ = ["center_images", "estimate_shifts"]


def _spectra(images):
    return np.fft.rfft2(np.asarray(images, dtype=np.float64))


def estimate_shifts(images, references, max_shift, *, lowpass=0.25) -> tuple[np.ndarray, np.ndarray]:
    """The shift of each image relative to its reference: the peak of their cross-correlation.

    Parameters
    ----------
    images, references : array_like, shape (n, size, size)
        Each image and the centred image it should match (e.g. the projection of a map at the
        image's orientation, with its CTF). Not modified.
    max_shift : float
        Search radius in pixels: the peak is sought within ``|(dy, dx)| ≤ max_shift``.
    lowpass : float
        Gaussian low-pass of the cross-correlation's spectrum, as the frequency (cycles per pixel)
        where it falls to ``exp(-1/2)``; lower values suit noisier images.

    Returns
    -------
    shifts : ndarray, shape (n, 2)
        ``(dy, dx)`` in pixels, sub-pixel by a parabola through the peak and its neighbours, and
        within the search disc.
    scores : ndarray, shape (n,)
        The normalised cross-correlation at the peak.
    """
    images = image_stack(images, "images", square=True)
    references = image_stack(references, "references", square=True)
    if images.shape != references.shape:
        raise InputError(f"images {images.shape} and references {references.shape} must have the same shape")
    if not (np.isfinite(max_shift) and max_shift >= 0):
        raise InputError(f"max_shift must be a number of pixels >= 0, got {max_shift!r}")
    if not (np.isfinite(lowpass) and lowpass > 0):
        raise InputError(f"lowpass must be a positive frequency in cycles per pixel, got {lowpass!r}")
    n, size = images.shape[0], images.shape[-1]
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    weight = np.exp(-0.5 * (ky**2 + kx**2) / lowpass**2)
    weight[0, 0] = 0.0  # the mean does not locate anything
    offsets = np.fft.fftfreq(size) * size  # the cross-correlation's lag of each index
    lag_y, lag_x = np.meshgrid(offsets, offsets, indexing="ij")
    inside = np.hypot(lag_y, lag_x) <= max_shift + 1e-9
    shifts = np.zeros((n, 2))
    scores = np.zeros(n)
    for start in range(0, n, 256):
        sl = slice(start, min(start + 256, n))
        a, b = _spectra(images[sl]) * weight, _spectra(references[sl]) * weight
        cc = np.fft.irfft2(a * np.conj(b), s=(size, size))
        norm = np.sqrt(np.sum(np.abs(a) ** 2, axis=(1, 2)) * np.sum(np.abs(b) ** 2, axis=(1, 2)))
        norm = np.where(norm > 0, norm, 1.0) / (size * size)
        masked = np.where(inside, cc, -np.inf)
        peak = masked.reshape(len(cc), -1).argmax(axis=1)
        iy, ix = np.unravel_index(peak, (size, size))
        for k, (y, x) in enumerate(zip(iy, ix)):
            c = cc[k]
            dy = _parabola(c[(y - 1) % size, x], c[y, x], c[(y + 1) % size, x])
            dx = _parabola(c[y, (x - 1) % size], c[y, x], c[y, (x + 1) % size])
            shifts[start + k] = (offsets[y] + dy, offsets[x] + dx)
            scores[start + k] = c[y, x] / norm[k]
    # A peak on the edge of the search disc is refined outwards; keep it on the disc.
    radius = np.hypot(shifts[:, 0], shifts[:, 1])
    outside = radius > max_shift
    shifts[outside] *= (max_shift / radius[outside])[:, None]
    return shifts, scores


def _parabola(left, centre, right) -> float:
    """Offset of the vertex of the parabola through three equally spaced samples, in [-0.5, 0.5]."""
    curvature = left - 2 * centre + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def center_images(images, shifts) -> np.ndarray:
    """Move each particle to the centre: the image translated by ``-(dy, dx)``, exactly in Fourier
    space (a phase ramp; content wraps around the edges). Returns a new float64 array."""
    images = image_stack(images, "images", square=True).astype(np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape != (len(images), 2) or not np.all(np.isfinite(shifts)):
        raise InputError(f"shifts must be ({len(images)}, 2) finite (dy, dx) pixels, got shape {shifts.shape}")
    out = np.empty_like(images)
    for k, (image, shift) in enumerate(zip(images, shifts)):
        out[k] = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), -shift)).real
    return out
