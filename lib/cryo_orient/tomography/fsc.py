"""Fourier shell correlation (FSC) between two volumes, and the resolution at a threshold.

The paper's FSC curves came from the EMDB FSC web service (``shared/paper`` §4.6); this module
computes them locally. Shells are one Fourier voxel thick (shell k holds the frequencies with
``k - 0.5 <= |f| N < k + 0.5`` on a cube of side N), from 0 to Nyquist. For non-cubic volumes the
frequency radius is measured in cycles per voxel on each axis, so shells are spheres in physical
frequency. The resolution at a threshold is ``1 / f`` at the first crossing below it, linearly
interpolated between the two shells around the crossing; a curve that never falls below it gives
the Nyquist resolution (``2 × voxel size``), flagged ``reached=False``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cryo_orient.validation import InputError, positive

__all__ = ["FSCResult", "fsc", "fsc_filter", "soft_sphere_mask", "THRESHOLDS"]

#: The two conventional thresholds: 0.5 (the paper's headline numbers) and 0.143 (gold standard).
THRESHOLDS = (0.5, 0.143)


@dataclasses.dataclass(frozen=True)
class FSCResult:
    """An FSC curve; ``frequency`` in 1/Å, ``resolution(threshold)`` in Å."""

    frequency: np.ndarray
    correlation: np.ndarray
    counts: np.ndarray
    voxel_size: float

    def resolution(self, threshold: float = 0.5) -> tuple[float, bool]:
        """(resolution in Å, whether the curve crossed the threshold before Nyquist)."""
        c, f = self.correlation, self.frequency
        below = np.flatnonzero(c[1:] < threshold) + 1
        if below.size == 0:
            return float(1.0 / f[-1]), False
        k = below[0]
        c0, c1 = c[k - 1], c[k]
        t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        freq = f[k - 1] + t * (f[k] - f[k - 1])
        return float(1.0 / freq) if freq > 0 else float("inf"), True

    def summary(self) -> dict:
        out = {"voxel_size": self.voxel_size, "nyquist_angstrom": float(2 * self.voxel_size)}
        for threshold in THRESHOLDS:
            res, reached = self.resolution(threshold)
            out[f"resolution_{threshold}"] = res
            out[f"crossed_{threshold}"] = reached
        return out


def soft_sphere_mask(shape, radius=None, width=3.0) -> np.ndarray:
    """A sphere of ``radius`` voxels (default: 0.45 × the smallest side) at the volume centre
    (index ``n // 2``), with a raised-cosine edge ``width`` voxels wide."""
    shape = tuple(int(s) for s in shape)
    radius = 0.45 * min(shape) if radius is None else float(radius)
    if radius <= 0 or width < 0:
        raise InputError(f"radius must be > 0 and width ≥ 0, got {radius}, {width}")
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    r = np.sqrt(sum(g.astype(float) ** 2 for g in grids))
    mask = np.clip((radius + width - r) / width, 0, 1) if width > 0 else (r <= radius).astype(float)
    return 0.5 - 0.5 * np.cos(np.pi * mask) if width > 0 else mask


def _check_volumes(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape:
        raise InputError(
            f"need two 3-D volumes of the same shape, got {a.shape} and {b.shape}; "
            "resample one onto the other's grid first"
        )
    for name, v in (("volume_a", a), ("volume_b", b)):
        if not np.all(np.isfinite(v)):
            raise InputError(f"{name} contains NaN or infinite values; fix or recompute that map")
        if not np.any(v):
            raise InputError(f"{name} is all zeros, so its FSC is undefined; give a map with content")
        if min(v.shape) < 4:
            raise InputError(f"{name} is {'×'.join(map(str, v.shape))} voxels; an FSC needs at least 4 per side")
    return a, b


def _shells(shape) -> np.ndarray:
    """Each voxel's Fourier shell (``fftn`` order): its frequency radius in units of ``1 / min(shape)``, rounded."""
    n = min(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    return np.rint(np.sqrt(sum(f**2 for f in freqs)) * n).astype(int)


def fsc_filter(volume, curve: FSCResult) -> np.ndarray:
    """``volume`` with each Fourier shell scaled by the FSC of two half maps, clipped to ``[0, 1]``.

    For a half map ``H = S + N`` (signal plus independent noise) the FSC of two half maps is
    ``|S|² / (|S|² + |N|²)`` per shell, so scaling ``H`` by it is the Wiener estimate of ``S``:
    shells the half maps agree on are kept, shells of noise are suppressed. Shells beyond the
    curve's last (the corners past Nyquist) are set to zero; shell 0 (the mean) is kept.

    Parameters
    ----------
    volume : array_like, shape (nz, ny, nx)
        A half map of the pair ``curve`` was computed from (on the same grid).
    curve : FSCResult
        Their FSC (:func:`fsc`; computed with a mask, it describes the masked maps, whose FSC is
        the higher, so the weights then err towards keeping shells).

    Returns
    -------
    ndarray
        The filtered map (a new array; ``volume`` is not modified).
    """
    v = np.asarray(volume, dtype=np.float64)
    n_shells = len(curve.correlation)
    shells = _shells(v.shape) if v.ndim == 3 else None
    # The same grid: as many shells, and as many voxels in each, as the curve was computed over.
    if shells is None or not np.array_equal(np.bincount(shells.ravel(), minlength=n_shells)[:n_shells], curve.counts):
        raise InputError(
            f"the FSC has {n_shells} shells of another grid than the map's {v.shape}; "
            "filter the map with the FSC of its own grid"
        )
    weights = np.append(np.clip(curve.correlation, 0.0, 1.0), 0.0)
    weights[0] = 1.0
    shells = np.minimum(shells, n_shells)
    return np.fft.ifftn(np.fft.fftn(v) * weights[shells]).real


def fsc(volume_a, volume_b, voxel_size, *, mask=None) -> FSCResult:
    """The Fourier shell correlation of two volumes on the same grid.

    Parameters
    ----------
    volume_a, volume_b : array_like, shape (nz, ny, nx)
        The two maps (e.g. a reconstruction and the ground truth).
    voxel_size : float
        Å per voxel (for the frequencies and resolutions).
    mask : {None, "soft_sphere"} or array_like, optional
        Multiply both volumes by this real-space mask first (``"soft_sphere"``:
        :func:`soft_sphere_mask` with its defaults).

    Returns
    -------
    FSCResult
        The curve per shell (shell 0 is the mean) and ``resolution(threshold)``.
    """
    a, b = _check_volumes(volume_a, volume_b)
    voxel_size = positive(voxel_size, "voxel_size (Å per voxel)")
    if mask is not None:
        m = soft_sphere_mask(a.shape) if isinstance(mask, str) and mask == "soft_sphere" else np.asarray(mask, float)
        if m.shape != a.shape:
            raise InputError(f"mask must have the volumes' shape {a.shape}, got {m.shape}")
        a, b = a * m, b * m
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    n = min(a.shape)
    shell = _shells(a.shape).ravel()  # in shells of the smallest side
    n_shells = n // 2 + 1
    keep = shell < n_shells
    shell = shell[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]
    cross = np.bincount(shell, weights=(fa * np.conj(fb)).real, minlength=n_shells)
    pa = np.bincount(shell, weights=np.abs(fa) ** 2, minlength=n_shells)
    pb = np.bincount(shell, weights=np.abs(fb) ** 2, minlength=n_shells)
    counts = np.bincount(shell, minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(pa * pb > 0, cross / np.sqrt(pa * pb), 0.0)
    frequency = np.arange(n_shells) / (n * voxel_size)
    return FSCResult(frequency=frequency, correlation=corr, counts=counts, voxel_size=float(voxel_size))
