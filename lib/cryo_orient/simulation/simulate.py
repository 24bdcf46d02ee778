"""Simulated cryo-EM datasets: projections, noise, shifts, standardisation, HDF5 files.

The measurement model of the paper is ``p = C_φ S_t P_θ x + n``, though its code had no CTF: the projection
(:func:`project`, re-exported from :mod:`cryo_orient.tomography.projection`), an in-plane shift, and additive
white Gaussian noise, followed by a global standardisation of the whole dataset.

Two orders are offered, because the paper's is not the physical one:

``shift_mode="circular"`` (the paper's)
    noise N(0, σ²) is added to the raw projection, then the image is rolled by integer shifts
    drawn from a triangular distribution on [-T, T] (mode 0) and truncated towards 0.
``shift_mode="subpixel"`` (realistic)
    the clean projection is moved by a real-valued shift (same triangular law, not truncated)
    with cubic-spline interpolation and zero fill (no wrap-around), then the noise is added.

A CTF (``ctf``, a table of settings; RELION's convention, :mod:`cryo_orient.tomography.ctf`) is applied
to each clean projection before the shift and the noise, with per-image defoci drawn uniformly
from ``[defocus_min, defocus_max]`` Å (astigmatism ``|U − V| / 2`` uniform in ``[0, astigmatism]``
at a uniform angle), or copied from the rows of a RELION STAR file (``from_star``: rows drawn
with replacement). The clean projections stored are then the CTF-modulated ones, and the
per-image parameters are stored beside them (``ctf/<rlnColumn>``).

For 5j0n the clean projections have variance ≈ 1, so σ² = 16 is an SNR of 1/16 ≈ −12 dB. Noise
can also be given as an SNR; the noise variance is then the signal variance (estimated on the
first 512 clean projections of the dataset, a fixed set) divided by the SNR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from cryo_orient import artifacts, data
from cryo_orient.artifacts import atomic_output, check_free_space, file_lock
from cryo_orient.data import relion
from cryo_orient.data.mrc import content_digest
from cryo_orient.geometry import rotations
from cryo_orient.simulation.noise import (
    SHIFT_MODES,
    add_noise,
    noise_variance_for_snr,
    random_shifts,
    shift_images,
    standardize,
)
from cryo_orient.tomography.ctf import CTFParams, apply_ctf
from cryo_orient.tomography.projection import BACKENDS, default_size, project, resolve_backend
from cryo_orient.validation import InputError, MissingInputError, Settings, check_memory

__all__ = [
    "project",
    "add_noise",
    "noise_variance_for_snr",
    "random_shifts",
    "shift_images",
    "standardize",
    "SimulationConfig",
    "simulate_dataset",
]

#: Bumped whenever the content written for a given config changes, so caches are invalidated.
FORMAT_VERSION = 1
SAMPLINGS = ("uniform_so3", "uniform_euler")
_SNR_PILOT = 512
#: The smallest detector (and map side) simulated: the CNN's seven poolings need 8 px.
MIN_SIZE = 8
#: Beyond this noise variance the noise (σ ≈ 3e15) squared and summed overflows float32 images.
MAX_NOISE_VARIANCE = 1e30
#: More projections than any experiment (the paper's largest is 5,000; 1e9 would need 70 GB of
#: orientations alone): a typo more likely than a wish.
MAX_PROJECTIONS = 100_000_000


# --------------------------------------------------------------------------- dataset config


@dataclasses.dataclass(frozen=True)
class SimulationConfig(Settings):
    """Everything that determines a simulated dataset (its cache key is a hash of these).

    Attributes
    ----------
    volume : str
        A name from :data:`cryo_orient.data.REGISTRY` or a path to an MRC file.
    n_projections : int
        Number of projections P.
    sampling : {"uniform_so3", "uniform_euler"}
        SO(3)-uniform restricted to the Euler box by rejection (the paper's "uniform_S2"), or
        uniform Euler angles in the box (the paper's "uniform_angles").
    coverage, offset : 3 floats
        The Euler box in units of π, in the order (theta3, theta2, theta1) (paper: AngCoverage,
        AngShift).
    size : int or None
        Detector side; ``None`` is ``int(norm(volume.shape))``.
    noise_variance : float or None
        σ² of the additive noise on the raw projections.
    snr_db : float or None
        Alternatively, the SNR in dB (exclusive with ``noise_variance``).
    shift_mode : {"none", "circular", "subpixel"}
    shift_limit : float
        T, in pixels.
    standardize : bool
        Apply the paper's global standardisation to the stored projections.
    store_clean : bool
        Also store the noiseless, unshifted projections (for reconstruction experiments).
    backend : {"auto", "nufft", "astra"}
    seed : int
    ctf : dict or None
        None: no CTF (the paper's). Else the settings of :func:`ctf_parameters`:
        ``defocus_min``, ``defocus_max`` (Å), ``astigmatism`` (Å), ``voltage`` (kV),
        ``spherical_aberration`` (mm), ``amplitude_contrast``, ``phase_shift`` (degrees),
        ``bfactor`` (Å²), ``pixel_size`` (Å; default the map's voxel size) and ``from_star`` (a
        STAR file whose rows' CTFs to copy, in place of the defocus range).
    """

    _unknown_keys = "simulation config key(s)"
    _known_keys = "keys"

    volume: str
    n_projections: int
    sampling: str = "uniform_so3"
    coverage: tuple = (2.0, 1.0, 2.0)
    offset: tuple = (0.0, 0.0, 0.0)
    size: int | None = None
    noise_variance: float | None = 0.0
    snr_db: float | None = None
    shift_mode: str = "none"
    shift_limit: float = 0.0
    standardize: bool = True
    store_clean: bool = False
    backend: str = "nufft"
    seed: int = 0
    ctf: dict | None = None

    def __post_init__(self):
        for name in ("coverage", "offset"):
            value = getattr(self, name)
            try:
                if isinstance(value, (str, bytes)) or any(isinstance(c, (bool, str)) for c in value):
                    raise TypeError
                object.__setattr__(self, name, tuple(float(c) for c in value))
            except (TypeError, ValueError):
                raise InputError(
                    f"invalid simulation config: {name} must be 3 numbers (theta3, theta2, theta1) in units of pi, "
                    f"got {value!r}"
                ) from None
        if self.snr_db is not None and self.noise_variance == 0.0:
            # The default variance yields to an SNR (TOML profiles have no null to unset it).
            object.__setattr__(self, "noise_variance", None)
        problems = []

        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

        def is_real(value):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))

        if not isinstance(self.volume, (str, Path)) or not str(self.volume):
            problems.append(f"volume must be a registered name or the path of an MRC file, got {self.volume!r}")
        if not is_int(self.n_projections) or self.n_projections < 1:
            problems.append(f"n_projections must be a positive integer, got {self.n_projections!r}")
        elif self.n_projections > MAX_PROJECTIONS:
            problems.append(f"n_projections must be at most {MAX_PROJECTIONS:,}, got {self.n_projections:,}")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if len(self.coverage) != 3 or len(self.offset) != 3:
            problems.append("coverage and offset need 3 values each (theta3, theta2, theta1)")
        elif not all(np.isfinite(self.coverage + self.offset)) or min(self.coverage) <= 0:
            problems.append(
                f"coverage must be 3 finite values > 0 and offset 3 finite values, got coverage {self.coverage} "
                f"and offset {self.offset}"
            )
        if self.size is not None and (not is_int(self.size) or self.size < MIN_SIZE):
            problems.append(f"size must be an integer >= {MIN_SIZE} (pixels per side) or None, got {self.size!r}")
        if self.noise_variance is not None and self.snr_db is not None:
            problems.append("give noise_variance or snr_db, not both (set the other to None)")
        if self.noise_variance is not None and not (
            is_real(self.noise_variance) and np.isfinite(self.noise_variance) and self.noise_variance >= 0
        ):
            problems.append(f"noise_variance must be a number >= 0, got {self.noise_variance!r}")
        elif self.noise_variance is not None and self.noise_variance > MAX_NOISE_VARIANCE:
            problems.append(
                f"noise_variance {self.noise_variance:g} is beyond {MAX_NOISE_VARIANCE:g}, where float32 images "
                "overflow; scale the map instead, or give snr_db"
            )
        if self.snr_db is not None and not (is_real(self.snr_db) and np.isfinite(self.snr_db)):
            problems.append(f"snr_db must be a finite number, got {self.snr_db!r}")
        elif self.snr_db is not None and not -100 <= self.snr_db <= 100:
            problems.append(f"snr_db must be within [-100, 100] dB, got {self.snr_db!r}")
        if self.shift_mode not in SHIFT_MODES:
            problems.append(f"shift_mode must be one of {SHIFT_MODES}, got {self.shift_mode!r}")
        if not (is_real(self.shift_limit) and np.isfinite(self.shift_limit) and self.shift_limit >= 0):
            problems.append(f"shift_limit must be >= 0 pixels, got {self.shift_limit!r}")
        elif (
            self.size is not None and is_int(self.size) and self.size >= MIN_SIZE and self.shift_limit >= self.size / 2
        ):
            problems.append(
                f"shift_limit {self.shift_limit:g} px moves the particle out of the {self.size} px detector; "
                f"use less than {self.size / 2:g}"
            )
        for name in ("standardize", "store_clean"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not is_int(self.seed) or self.seed < 0:
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.ctf is not None:
            if not isinstance(self.ctf, dict):
                problems.append(f"ctf must be a table of settings or None, got {self.ctf!r}")
            else:
                unknown = sorted(set(self.ctf) - set(CTF_SETTINGS))
                if unknown:
                    problems.append(f"unknown ctf setting(s) {unknown}; the settings are {sorted(CTF_SETTINGS)}")
        if problems:
            raise InputError("invalid simulation config: " + "; ".join(problems))


def volume_source(config: SimulationConfig):
    """Load the volume and a fingerprint of its content for the cache key."""
    if config.volume in data.REGISTRY:
        entry = data.REGISTRY[config.volume]
        volume, voxel_size = data.load(config.volume)
        fingerprint = entry.sha256 or hashlib.sha256(np.ascontiguousarray(volume).tobytes()).hexdigest()
        return volume, voxel_size, fingerprint
    path = Path(config.volume)
    if not path.exists():
        raise MissingInputError(
            f"volume {config.volume!r} is neither a registered name ({sorted(data.REGISTRY)}) nor an existing MRC file"
        )
    volume, voxel_size = data.load_volume(path)
    if min(volume.shape) < MIN_SIZE:
        raise InputError(
            f"the map {path} is {'×'.join(map(str, volume.shape))} voxels; simulating needs at least {MIN_SIZE} "
            "per side (pad it with zeros)"
        )
    if not np.any(volume):
        raise InputError(f"the map {path} is all zeros, so every projection would be blank; give a real map")
    return volume, voxel_size, content_digest(path)


#: Settings of a simulated CTF and their defaults (``pixel_size`` None: the map's voxel size).
CTF_SETTINGS = {
    "defocus_min": 10000.0,
    "defocus_max": 25000.0,
    "astigmatism": 0.0,
    "voltage": 300.0,
    "spherical_aberration": 2.7,
    "amplitude_contrast": 0.1,
    "phase_shift": 0.0,
    "bfactor": 0.0,
    "pixel_size": None,
    "from_star": None,
}


def ctf_parameters(settings: dict, n: int, voxel_size, rng) -> tuple[CTFParams, float]:
    """Per-image CTF parameters of a simulation and the pixel size they are meant for.

    ``settings`` are :data:`CTF_SETTINGS` (missing ones take the defaults). With ``from_star``,
    ``n`` rows of that file's CTF columns are drawn with replacement (and its pixel size is used
    unless ``pixel_size`` is given); else defoci are uniform in ``[defocus_min, defocus_max]``.
    """
    settings = {**CTF_SETTINGS, **settings}
    rng = np.random.default_rng(rng)
    if settings["from_star"] is not None:
        table = relion.read_particle_table(settings["from_star"])
        columns = table.ctf_columns()
        if not columns:
            raise InputError(f"{settings['from_star']} has no CTF columns (rlnDefocusU) to copy; give a defocus range")
        rows = rng.integers(0, len(table), size=n)
        params = CTFParams.from_columns({k: v[rows] for k, v in columns.items()}, n)
        pixel = settings["pixel_size"] or float(np.median(table.pixel_size))
        return params, float(pixel)
    low, high = float(settings["defocus_min"]), float(settings["defocus_max"])
    if not 0 < low <= high:
        raise InputError(f"the ctf defocus range must have 0 < defocus_min <= defocus_max Å, got [{low}, {high}]")
    pixel = settings["pixel_size"] or voxel_size
    if not pixel or pixel <= 0:
        raise InputError("the map has no voxel size, which a CTF needs; set ctf.pixel_size (Å)")
    mean = rng.uniform(low, high, n)
    half = rng.uniform(0.0, float(settings["astigmatism"]), n)
    angle = rng.uniform(0.0, 180.0, n)
    params = CTFParams.from_columns(
        {
            "rlnDefocusU": mean + half,
            "rlnDefocusV": mean - half,
            "rlnDefocusAngle": angle,
            "rlnVoltage": settings["voltage"],
            "rlnSphericalAberration": settings["spherical_aberration"],
            "rlnAmplitudeContrast": settings["amplitude_contrast"],
            "rlnPhaseShift": settings["phase_shift"],
            "rlnCtfBfactor": settings["bfactor"],
        },
        n,
    )
    return params, float(pixel)


def cache_key(config: SimulationConfig, volume_fingerprint: str) -> str:
    """Hash of everything that determines the dataset's content."""
    settings = config.to_dict()
    if settings.get("ctf") is None:
        settings.pop("ctf", None)  # datasets without a CTF keep the keys they had before it existed
    elif settings["ctf"].get("from_star"):
        star = Path(settings["ctf"]["from_star"])
        settings["ctf"] = {**settings["ctf"], "from_star_sha256": hashlib.sha256(star.read_bytes()).hexdigest()}
    payload = {"format": FORMAT_VERSION, "config": settings, "volume_sha256": volume_fingerprint}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _sample(config: SimulationConfig, rng):
    if config.sampling == "uniform_so3":
        q = rotations.uniform_so3_in_box(config.n_projections, config.coverage, config.offset, rng=rng)
    else:
        q = rotations.uniform_euler(config.n_projections, config.coverage, config.offset, rng=rng)
    return rotations.canonical(q)


def needs(config: SimulationConfig, volume_shape) -> dict:
    """The bytes a simulation needs: ``"memory"`` (its largest working set) and ``"disk"`` (the file)."""
    size = config.size or default_size(volume_shape)
    n = config.n_projections
    rows = min(n, max(256, _SNR_PILOT))
    image = 4 * size * size
    grid = 8 * int(np.prod([2 * n for n in volume_shape]))  # finufft's oversampled grid (complex64)
    memory = 8 * 24 * n + rows * image * 6 + rows * size * size * 3 * 8 + grid + 4 * int(np.prod(volume_shape))
    disk = n * image * (2 if config.store_clean else 1) + 9 * 8 * n + 2**16
    return {"memory": memory, "disk": disk, "size": size}


def _check_needs(config: SimulationConfig, volume_shape, path: Path) -> int:
    """Refuse before any work if the simulation cannot fit this machine's memory or ``path``'s disk."""
    need = needs(config, volume_shape)
    size = need["size"]
    if size < MIN_SIZE:
        raise InputError(f"the detector would be {size} px; give size >= {MIN_SIZE}")
    if config.shift_limit >= size / 2:
        raise InputError(
            f"invalid simulation config: shift_limit {config.shift_limit:g} px moves the particle out of the "
            f"{size} px detector; use less than {size / 2:g}"
        )
    check_memory(
        need["memory"],
        f"simulating {config.n_projections:,} projections of {size}×{size} px",
        "lower n_projections or size",
    )
    check_free_space(path.parent, need["disk"], "the dataset")
    return size


def _read_key(path: Path):
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("cache_key")
    except OSError:
        return None


def simulate_dataset(config, path, *, chunk_size=256, progress=True, overwrite=False) -> Path:
    """Simulate a dataset and write it to an HDF5 file, atomically; skip it if already there.

    The file at ``path`` is reused when its stored cache key (a hash of ``config`` and of the
    volume's content) matches, so a re-run costs nothing; otherwise it is recomputed into a
    temporary file beside ``path`` and renamed over it only when complete.

    Parameters
    ----------
    config : SimulationConfig or dict
    path : str or Path
        The ``.h5`` file to write.
    chunk_size : int
        Projections simulated and written at a time (memory bound; the result does not depend on
        it).
    progress : bool
        Show progress bars.
    overwrite : bool
        Recompute even if the cache key matches.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Random streams: orientations, shifts, noise and CTF each come from their own child of
    ``numpy.random.SeedSequence(seed)``, so two datasets with the same seed share orientations
    (and shifts) whatever their noise, and the output does not depend on ``chunk_size``.

    Layout: ``projections`` (P, size, size) float32, ``quaternions`` (P, 4) scalar-last,
    ``euler`` (P, 3) as (theta3, theta2, theta1), ``shifts`` (P, 2) as (dy, dx) pixels, optional
    ``clean`` (P, size, size), with a CTF ``ctf/<rlnColumn>`` (P,) per parameter; attributes
    ``config`` (JSON), ``cache_key``, ``provenance`` (JSON: package version, git commit, seed,
    UTC time, host), ``noise_variance``, ``signal_variance``,
    ``standardization_mean``/``_std`` (the raw image is ``projection * std + mean``),
    ``voxel_size`` (with a CTF, the pixel size it was computed for), ``volume_sha256``,
    ``volume_shape``.
    """
    if isinstance(config, dict):
        config = SimulationConfig.from_dict(config)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5"):
        raise InputError(f"dataset path must end in .h5 or .hdf5, got {path}; name the output e.g. data.h5")
    volume, voxel_size, fingerprint = volume_source(config)
    key = cache_key(config, fingerprint)
    if path.exists() and not overwrite and _read_key(path) == key:
        return path
    size = _check_needs(config, volume.shape, path)  # before anything is created
    # Two runs asked for the same file compute it once: the second waits, then reuses it.
    with file_lock(path):
        if path.exists() and not overwrite and _read_key(path) == key:
            return path
        _simulate(config, path, volume, voxel_size, fingerprint, key, size, chunk_size, progress)
    return path


def _simulate(config, path, volume, voxel_size, fingerprint, key, size, chunk_size, progress) -> None:
    backend = resolve_backend(config.backend)
    n = config.n_projections
    # A fourth stream for the CTF leaves the first three (and so every CTF-free dataset) as they were.
    orient_ss, shift_ss, noise_ss, ctf_ss = np.random.SeedSequence(config.seed).spawn(4)
    quaternions = _sample(config, np.random.default_rng(orient_ss))
    euler = rotations.quaternion_to_euler(quaternions)
    shifts = random_shifts(n, config.shift_limit, config.shift_mode, np.random.default_rng(shift_ss))
    noise_rng = np.random.default_rng(noise_ss)
    ctf = None
    if config.ctf is not None:
        ctf, voxel_size = ctf_parameters(config.ctf, n, voxel_size, ctf_ss)

    def clean_chunk(sl):
        images = project(volume, quaternions[sl], size, backend)
        if ctf is not None:
            images = apply_ctf(images, ctf.subset(sl), voxel_size)
        return images.astype(np.float32)

    # The signal variance is measured on a fixed set (the first 512 projections), so it does
    # not depend on chunk_size and is recorded even when the noise is given as a variance.
    pilot = clean_chunk(slice(0, min(n, _SNR_PILOT)))
    signal_variance = float(pilot.var(dtype=np.float64))
    if config.snr_db is not None:
        noise_variance = noise_variance_for_snr(signal_variance, snr_db=config.snr_db)
    else:
        noise_variance = float(config.noise_variance or 0.0)

    provenance = artifacts.provenance(seed=config.seed, backend=backend)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            rows = min(chunk_size, n)
            images = f.create_dataset("projections", (n, size, size), np.float32, chunks=(rows, size, size))
            clean_ds = (
                f.create_dataset("clean", (n, size, size), np.float32, chunks=(rows, size, size))
                if config.store_clean
                else None
            )
            total = total_sq = 0.0
            with tqdm(total=n, disable=not progress, desc=f"simulate {path.stem}", unit="proj") as bar:
                for start in range(0, n, chunk_size):
                    sl = slice(start, min(start + chunk_size, n))
                    clean = pilot[sl] if sl.stop <= len(pilot) else clean_chunk(sl)
                    if config.shift_mode == "circular":
                        noisy = shift_images(add_noise(clean, noise_variance, noise_rng), shifts[sl], "circular")
                    else:
                        noisy = add_noise(shift_images(clean, shifts[sl], config.shift_mode), noise_variance, noise_rng)
                    images[sl] = noisy
                    if clean_ds is not None:
                        clean_ds[sl] = clean
                    total += float(noisy.sum(dtype=np.float64))
                    total_sq += float(np.square(noisy, dtype=np.float64).sum())
                    bar.update(sl.stop - sl.start)
            count = n * size * size
            mean = total / count
            std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise InputError(
                    f"the simulated images overflow (mean {mean:g}, std {std:g}); lower noise_variance "
                    f"({noise_variance:g}) or scale the map"
                )
            if config.standardize:
                if std <= 0:
                    raise InputError(
                        "every simulated image is the same constant (a blank map and no noise?); "
                        "give a map with content, add noise, or set standardize=false"
                    )
                for start in range(0, n, chunk_size):
                    sl = slice(start, min(start + chunk_size, n))
                    images[sl] = standardize(images[sl], mean, std)
            else:
                mean, std = 0.0, 1.0
            f.create_dataset("quaternions", data=quaternions)
            f.create_dataset("euler", data=euler)
            f.create_dataset("shifts", data=shifts)
            if ctf is not None:
                for column, values in ctf.to_columns().items():
                    f.create_dataset(f"ctf/{column}", data=values)
            f.attrs.update(
                {
                    "config": json.dumps(config.to_dict(), sort_keys=True),
                    "cache_key": key,
                    "format_version": FORMAT_VERSION,
                    "provenance": json.dumps(provenance, sort_keys=True),
                    "noise_variance": noise_variance,
                    "signal_variance": signal_variance,
                    "standardization_mean": mean,
                    "standardization_std": std,
                    "voxel_size": voxel_size,
                    "volume_sha256": fingerprint,
                    "volume_shape": np.asarray(volume.shape),
                }
            )
