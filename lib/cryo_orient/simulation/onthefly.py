"""Pairs of projections simulated on the fly from a library of maps, for a general estimator.

An estimator trained on one map's projections knows that map; one meant for proteins it has
never seen is trained on many maps, with every nuisance of a real stack drawn anew for every
batch, so that no file holds the training set. :func:`simulate_pairs` makes one batch of image
pairs and their labels from a :class:`MapLibrary`:

1. **maps**: ``maps_per_batch`` distinct maps of the library; each pair belongs to one of them
   (a distance between projections of two different maps means nothing).
2. **orientations**: ``q_a`` uniform on SO(3), ``q_b = q_a · r`` with ``r`` a rotation of angle
   uniform in [0, π] about a uniform axis, so the labels ``d_q(q_a, q_b)`` (the geodesic distance
   of :func:`cryo_orient.geometry.rotations.distance`, the Siamese model's label) have a flat
   histogram on [0, π], the spread :func:`cryo_orient.estimation.siamese.sample_uniform_distance_pairs`
   aims for, exactly and without rejection.
3. **scale**: the particle's diameter spans a random fraction of the image side (one of
   ``scale_levels`` log-spaced fractions in ``[fill_min, fill_max]``), which sets the pixel size
   in Å; the map is resampled once per (map, level) to that pixel size on the image's box
   (:func:`cryo_orient.geometry.volumes.resample_volume`; cached, so a level costs a resampling
   only the first time it is drawn).
4. **the measurement model** in the simulator's order (:mod:`cryo_orient.simulation.simulate`):
   projection with the CPU NUFFT (:func:`cryo_orient.tomography.projection.project`, one call for
   both sides of a map's pairs), a random CTF in RELION's convention
   (:func:`cryo_orient.simulation.simulate.ctf_parameters`, :func:`cryo_orient.tomography.ctf.apply_ctf`),
   a sub-pixel in-plane shift, white noise at an SNR drawn uniformly in dB (the signal variance
   measured on the map's clean images of the batch), then CTF correction by phase flipping, as the
   estimator's input is corrected (:func:`cryo_orient.workflow.orient.corrected`), and the global
   standardisation of :func:`cryo_orient.simulation.noise.standardize` over the batch.

Everything a batch draws comes from the one generator it is given, so ``rng =
default_rng([seed, stream, epoch, index])`` makes a batch a function of those numbers alone: a
killed and resumed training, or a batch computed by another worker, sees the same pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import numpy as np

from cryo_orient import validation
from cryo_orient.geometry import rotations
from cryo_orient.geometry.volumes import resample_volume
from cryo_orient.simulation.noise import add_noise, noise_variance_for_snr, random_shifts, shift_images, standardize
from cryo_orient.simulation.pseudomolecules import pseudo_molecule
from cryo_orient.simulation.simulate import CTF_SETTINGS, MIN_SIZE, SimulationConfig, ctf_parameters, volume_source
from cryo_orient.tomography.ctf import apply_ctf, phase_flip
from cryo_orient.tomography.projection import project
from cryo_orient.validation import InputError, Settings, as_rng

__all__ = [
    "DEFAULT_CTF",
    "LibraryMap",
    "MapLibrary",
    "OnTheFlyConfig",
    "PairBatch",
    "particle_diameter",
    "relative_rotations",
    "simulate_pairs",
]

#: The CTF drawn by default: defoci of a typical single-particle data set, some astigmatism.
DEFAULT_CTF = {"defocus_min": 5000.0, "defocus_max": 25000.0, "astigmatism": 500.0}
#: Resampled maps kept per library (each ``size``³ float32: 0.8 MB at 58 px).
_CACHE_ENTRIES = 256
#: CTF settings that a batch sets itself (its pixel size) or that need a file (rows of a STAR file).
_NOT_DRAWN = {"pixel_size", "from_star"}


@dataclasses.dataclass(frozen=True)
class OnTheFlyConfig(Settings):
    """What :func:`simulate_pairs` draws for every batch (the nuisances of a real stack).

    Attributes
    ----------
    maps_per_batch : int
        Distinct maps a batch holds pairs of (fewer if the library is smaller).
    fill_min, fill_max : float
        The particle's diameter spans this fraction of the image side, at random.
    scale_levels : int
        The fractions drawn from: this many log-spaced values in ``[fill_min, fill_max]``.
    snr_db_min, snr_db_max : float
        The SNR of a map's images in a batch, uniform in dB (the simulator's definition:
        variance of the clean CTF-modulated images over the noise variance).
    shift_limit : float
        Sub-pixel shifts, triangular on ``[-shift_limit, shift_limit]`` pixels of the image.
    ctf : dict or None
        ``None``: no CTF. Else settings of :func:`cryo_orient.simulation.simulate.ctf_parameters`
        (the defaults there, then these): a defocus range, astigmatism, voltage... Its
        ``pixel_size`` is always the batch's.
    nthreads : int
        Threads of the NUFFT (1 leaves the other cores to the training).
    """

    _unknown_keys = "on-the-fly simulation setting(s)"
    _known_keys = "settings"

    maps_per_batch: int = 2
    fill_min: float = 0.4
    fill_max: float = 0.8
    scale_levels: int = 8
    snr_db_min: float = -15.0
    snr_db_max: float = 0.0
    shift_limit: float = 2.0
    ctf: dict | None = dataclasses.field(default_factory=lambda: dict(DEFAULT_CTF))
    nthreads: int = 1

    def __post_init__(self):
        validation.integer(self.maps_per_batch, "maps_per_batch", 1)
        validation.integer(self.scale_levels, "scale_levels", 1)
        validation.integer(self.nthreads, "nthreads", 1)
        low = validation.positive(self.fill_min, "fill_min")
        high = validation.positive(self.fill_max, "fill_max")
        if not low <= high <= 1.0:
            raise InputError(f"need 0 < fill_min <= fill_max <= 1, got fill_min={low:g}, fill_max={high:g}")
        low = validation.finite(self.snr_db_min, "snr_db_min")
        high = validation.finite(self.snr_db_max, "snr_db_max")
        if not -100 <= low <= high <= 100:
            raise InputError(f"need -100 <= snr_db_min <= snr_db_max <= 100 dB, got [{low:g}, {high:g}]")
        validation.real(self.shift_limit, "shift_limit", minimum=0.0)
        if self.ctf is not None:
            if not isinstance(self.ctf, dict):
                raise InputError(f"ctf must be a table of CTF settings or None, got {self.ctf!r}")
            unknown = sorted(set(self.ctf) - (set(CTF_SETTINGS) - _NOT_DRAWN))
            if unknown:
                raise InputError(
                    f"unknown ctf setting(s) {unknown} for on-the-fly simulation; the settings are "
                    f"{sorted(set(CTF_SETTINGS) - _NOT_DRAWN)}"
                )


def particle_diameter(volume, voxel_size, fraction=0.98) -> float:
    """The diameter (Å) of the ball about the map's centre (voxel ``n // 2``) holding ``fraction``
    of its positive density: the particle's size, robust to a faint halo."""
    v = np.clip(np.asarray(volume, dtype=np.float64), 0.0, None)
    if not v.any():
        raise InputError("the map has no positive density, so it has no particle to size")
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in v.shape], indexing="ij")
    r = np.sqrt(sum(g.astype(np.float64) ** 2 for g in grids)).ravel()
    order = np.argsort(r, kind="stable")
    mass = np.cumsum(v.ravel()[order])
    radius = r[order][min(np.searchsorted(mass, fraction * mass[-1]), len(r) - 1)]
    return float(2.0 * (radius + 0.5) * voxel_size)


def _as_cube(volume) -> np.ndarray:
    """Zero-pad a map to a cube keeping voxel ``n // 2`` of each axis at the cube's centre."""
    n = max(volume.shape)
    pads = [(n // 2 - m // 2, n - m - (n // 2 - m // 2)) for m in volume.shape]
    return np.pad(volume, pads)


@dataclasses.dataclass(frozen=True)
class LibraryMap:
    """One map of a library: a cubic volume (centre at voxel ``n // 2``), its voxel size (Å),
    the particle's diameter (Å, :func:`particle_diameter`) and what identifies it."""

    name: str
    volume: np.ndarray
    voxel_size: float
    diameter: float
    fingerprint: str


class MapLibrary:
    """The maps a general estimator trains on: registered names, MRC files and pseudo-molecules.

    Parameters
    ----------
    maps : sequence of str or Path
        Names of :data:`cryo_orient.data.REGISTRY` or paths of MRC files (loaded as the simulator
        loads them: :func:`cryo_orient.simulation.simulate.volume_source`).
    n_pseudo_molecules : int
        Pseudo-molecules added (:func:`cryo_orient.simulation.pseudomolecules.pseudo_molecule`),
        the ``k``-th from ``default_rng([seed, k])``.
    seed : int
        Their seed.
    pseudo_box, pseudo_pixel_size : int, float
        Their grid (voxels) and voxel size (Å).

    Resampled maps (:meth:`volume_at`) are cached in memory; the cache changes no value.
    """

    def __init__(self, maps=(), *, n_pseudo_molecules=0, seed=0, pseudo_box=64, pseudo_pixel_size=2.0):
        if isinstance(maps, (str, Path)):
            maps = [maps]
        n_pseudo_molecules = validation.integer(n_pseudo_molecules, "n_pseudo_molecules", 0)
        seed = validation.integer(seed, "seed", 0)
        entries = []
        for name in maps:
            volume, voxel_size, fingerprint = volume_source(SimulationConfig(volume=str(name), n_projections=1))
            cube = _as_cube(np.asarray(volume, dtype=np.float32))
            entries.append(
                LibraryMap(str(name), cube, float(voxel_size), particle_diameter(cube, voxel_size), fingerprint)
            )
        for k in range(n_pseudo_molecules):
            volume = pseudo_molecule(pseudo_box, pseudo_pixel_size, rng=np.random.default_rng([seed, k]))
            fingerprint = hashlib.sha256(volume.tobytes()).hexdigest()
            diameter = particle_diameter(volume, pseudo_pixel_size)
            entries.append(LibraryMap(f"pseudo-{seed}-{k}", volume, float(pseudo_pixel_size), diameter, fingerprint))
        if not entries:
            raise InputError("the map library is empty; give maps (registered names or MRC files) or pseudo-molecules")
        for entry in entries:
            entry.volume.setflags(write=False)
        self.maps = tuple(entries)
        self._cache = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.maps)

    def __getstate__(self):
        # For worker processes (PyDataset's use_multiprocessing): the maps, not the lock or cache.
        return {"maps": self.maps}

    def __setstate__(self, state):
        self.maps = state["maps"]
        self._cache = {}
        self._lock = threading.Lock()

    @property
    def fingerprints(self) -> list[dict]:
        """Name and content hash of every map, in order (what a training run's identity records)."""
        return [{"name": m.name, "sha256": m.fingerprint} for m in self.maps]

    def volume_at(self, index: int, pixel_size: float, size: int) -> np.ndarray:
        """Map ``index`` resampled to ``pixel_size`` Å on a ``size``³ grid (float32, read-only)."""
        key = (int(index), float(pixel_size), int(size))
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        entry = self.maps[index]
        volume = resample_volume(entry.volume, entry.voxel_size, pixel_size, size).astype(np.float32)
        volume.setflags(write=False)
        with self._lock:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = volume
        return volume


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """A batch of image pairs and everything drawn to make it (pair ``k`` is ``images_a[k]``,
    ``images_b[k]``, of map ``maps[k]``; ``labels[k] = d_q(quaternions_a[k], quaternions_b[k])``)."""

    images_a: np.ndarray
    images_b: np.ndarray
    labels: np.ndarray
    quaternions_a: np.ndarray
    quaternions_b: np.ndarray
    maps: np.ndarray
    pixel_size: np.ndarray
    snr_db: np.ndarray
    shifts_a: np.ndarray
    shifts_b: np.ndarray


def relative_rotations(n, rng=None) -> np.ndarray:
    """``n`` rotations of angle uniform in [0, π] about uniform axes (unit quaternions, scalar last)."""
    rng = as_rng(rng)
    angle = rng.uniform(0.0, np.pi, n)
    return rotations.axis_angle(rng.standard_normal((n, 3)), angle)


def _fill_levels(config: OnTheFlyConfig) -> np.ndarray:
    if config.scale_levels == 1:
        return np.array([np.sqrt(config.fill_min * config.fill_max)])
    return np.geomspace(config.fill_min, config.fill_max, config.scale_levels)


def simulate_pairs(library: MapLibrary, n_pairs: int, size: int, config=None, *, rng=None) -> PairBatch:
    """One batch of image pairs of the library's maps with their distance labels.

    Parameters
    ----------
    library : MapLibrary
    n_pairs : int
        Pairs in the batch.
    size : int
        Image side in pixels (the estimator's input size).
    config : OnTheFlyConfig or dict, optional
        What is drawn (see the module docstring); default :class:`OnTheFlyConfig()`.
    rng : numpy.random.Generator or seed
        The only source of randomness: the same generator state gives the same batch.

    Returns
    -------
    PairBatch
        ``images_a``, ``images_b``: (n_pairs, size, size) float32, CTF-corrected by phase
        flipping and standardised over the batch; ``labels``: (n_pairs,) float32.
    """
    if not isinstance(library, MapLibrary):
        raise InputError(f"library must be a MapLibrary, got {type(library).__name__}")
    config = config if isinstance(config, OnTheFlyConfig) else OnTheFlyConfig.from_dict(dict(config or {}))
    n_pairs = validation.integer(n_pairs, "n_pairs", 1)
    size = validation.integer(size, "size", MIN_SIZE)
    if config.shift_limit >= size / 2:
        raise InputError(f"shift_limit {config.shift_limit:g} px moves particles out of {size} px images")
    rng = as_rng(rng)

    chosen = rng.choice(len(library), size=min(config.maps_per_batch, len(library)), replace=False)
    maps = chosen[rng.integers(0, len(chosen), n_pairs)]
    q_a = rotations.uniform_so3(n_pairs, rng)
    q_b = rotations.canonical(rotations.multiply(q_a, relative_rotations(n_pairs, rng)))
    levels = _fill_levels(config)

    images = np.empty((2, n_pairs, size, size), dtype=np.float32)
    shifts = np.zeros((2, n_pairs, 2))
    pixel_size = np.empty(n_pairs)
    snr_db = np.empty(n_pairs)
    for m in chosen:  # in the order drawn, so the stream does not depend on the maps' numbering
        rows = np.flatnonzero(maps == m)
        if not len(rows):
            continue
        entry = library.maps[m]
        fill = levels[rng.integers(0, len(levels))]
        pixel = entry.diameter / (fill * size)
        volume = library.volume_at(m, pixel, size)
        q = np.concatenate([q_a[rows], q_b[rows]])
        # Both sides of this map's pairs in one NUFFT call (one plan, one set of points).
        clean = project(volume, q, size, "nufft", batch_size=len(q), nthreads=config.nthreads)
        params = None
        if config.ctf is not None:
            params, _ = ctf_parameters({**config.ctf, "pixel_size": pixel}, len(q), pixel, rng)
            clean = apply_ctf(clean, params, pixel).astype(np.float32)
        shift = random_shifts(len(q), config.shift_limit, "subpixel", rng)
        moved = shift_images(clean, shift, "subpixel")
        snr = rng.uniform(config.snr_db_min, config.snr_db_max)
        signal = float(clean.var(dtype=np.float64))
        if not signal > 0:
            raise InputError(f"the map {entry.name} projects to blank images at {pixel:.3g} Å per pixel")
        noisy = add_noise(moved, noise_variance_for_snr(signal, snr_db=snr), rng)
        if params is not None:
            noisy = phase_flip(noisy, params, pixel)
        images[0, rows], images[1, rows] = noisy[: len(rows)], noisy[len(rows) :]
        shifts[0, rows], shifts[1, rows] = shift[: len(rows)], shift[len(rows) :]
        pixel_size[rows], snr_db[rows] = pixel, snr
    images = standardize(images.reshape(2 * n_pairs, size, size)).reshape(2, n_pairs, size, size)
    return PairBatch(
        images_a=images[0],
        images_b=images[1],
        labels=rotations.distance(q_a, q_b).astype(np.float32),
        quaternions_a=q_a,
        quaternions_b=q_b,
        maps=maps,
        pixel_size=pixel_size,
        snr_db=snr_db,
        shifts_a=shifts[0],
        shifts_b=shifts[1],
    )
