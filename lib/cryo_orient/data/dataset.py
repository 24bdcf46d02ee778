"""A particle dataset: what every stage after simulation reads.

A :class:`Dataset` holds one stack of projections and what is known about them: orientations
(quaternions, scalar-last, and the paper's ZYZ Euler angles) and in-plane shifts where known,
per-image CTF parameters by RELION column name (empty without a CTF), the pixel size, the
configuration that made it and its provenance. Images are read from the file only when asked for
(:meth:`Dataset.images`), so a dataset can be opened, checked and split without loading them.

Image kinds
-----------
``"standardized"``
    The stored projections, as the estimator sees them (standardised to mean 0 and variance 1
    over the whole dataset at simulation), float32.
``"noisy"``
    The stored projections in the simulator's raw units (the standardisation undone), float64:
    what reconstruction uses. Refused for shifted datasets (no stage estimates shifts, so
    reconstructing from them would blur the map).
``"clean"``
    The noiseless raw projections, float64: the stored ``clean`` array (``store_clean = true``),
    or, for a dataset without noise and shifts, its projections themselves.
``"raw"``
    The projections in raw units as ``"noisy"``, also for off-centre particles (for stages that
    centre them, or that model the shifts).

Splits
------
:meth:`Dataset.split` gives the view of one part of the paper's train / validation / test split
(:func:`cryo_orient.data.splits.train_val_test_split`, Table 1): ``"train"`` and ``"val"`` in the
split's order, ``"test"`` sorted (the order every stage has used for it), ``"all"`` every image.
A view shares the file; its ``index`` says which rows of the file it holds.

Readers
-------
:func:`read_dataset` chooses the reader by the file's suffix (:data:`READERS`): ``.h5`` for the
files :func:`cryo_orient.simulation.simulate.simulate_dataset` writes, ``.star`` for RELION
particle stacks (:func:`cryo_orient.data.particles.read_particles`). A reader validates shapes
and counts before it returns, and every problem is one :class:`cryo_orient.validation.InputError`
naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import h5py
import numpy as np

from cryo_orient.data import splits
from cryo_orient.validation import InputError

__all__ = ["IMAGE_KINDS", "READERS", "SPLITS", "Dataset", "read_dataset"]

IMAGE_KINDS = ("standardized", "noisy", "clean", "raw")
SPLITS = ("all", "train", "val", "test")

#: Attributes every simulated dataset file carries (written by ``simulate_dataset``).
_REQUIRED_ATTRS = (
    "config",
    "cache_key",
    "provenance",
    "noise_variance",
    "standardization_mean",
    "standardization_std",
    "voxel_size",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One stack of projections and what is known about them.

    Attributes
    ----------
    path : Path
        The file the images are read from.
    index : ndarray of int, shape (n,)
        The rows of the file this dataset holds (``arange`` for a whole file; a split's rows).
    quaternions : ndarray, shape (n, 4) or None
        True orientations where known, scalar-last unit quaternions.
    euler : ndarray, shape (n, 3) or None
        The same orientations as the paper's ZYZ Euler angles (radians), where known.
    shifts : ndarray, shape (n, 2)
        In-plane shifts in pixels, ``(dy, dx)`` as the simulator applied them, where known (zeros:
        centred particles).
    ctf : mapping of str to ndarray
        Per-image CTF parameters by RELION column name (empty: no CTF).
    pixel_size : float or None
        Å per pixel (None where the map had no voxel size).
    image_size : int
        Side of the square images, in pixels.
    config : mapping
        The configuration that made the dataset (the simulator's, for simulated ones).
    provenance : mapping
        Where the dataset came from (program versions, commit, time).
    metadata : mapping
        The rest of the file's description: ``cache_key``, ``noise_variance``, ``signal_variance``,
        ``standardization_mean`` / ``_std``, ``volume_sha256``, ``volume_shape``, ``format_version``.
    """

    path: Path
    index: np.ndarray
    quaternions: np.ndarray | None
    euler: np.ndarray | None
    shifts: np.ndarray
    ctf: Mapping[str, np.ndarray]
    pixel_size: float | None
    image_size: int
    config: Mapping
    provenance: Mapping
    metadata: Mapping
    has_clean: bool
    _read: Callable[[str, np.ndarray], np.ndarray] = dataclasses.field(repr=False)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n(self) -> int:
        """Number of images."""
        return len(self.index)

    @property
    def cache_key(self) -> str:
        """A key of the file's content (config and volume): equal keys, equal images."""
        return str(self.metadata["cache_key"])

    @property
    def noise_variance(self) -> float:
        """Variance of the noise added at simulation, in raw units (0 for noiseless images)."""
        return float(self.metadata.get("noise_variance") or 0.0)

    @property
    def standardization(self) -> tuple[float, float]:
        """``(mean, std)`` that turned raw images into the stored standardised ones."""
        return float(self.metadata["standardization_mean"]), float(self.metadata["standardization_std"])

    @property
    def shifted(self) -> bool:
        """Whether any image is shifted off centre."""
        return bool(np.any(self.shifts))

    def _rows(self, index) -> np.ndarray:
        return self.index if index is None else self.index[np.asarray(index)]

    def images(self, kind: str = "standardized", index=None) -> np.ndarray:
        """The images of one kind (see the module docstring), read from the file now.

        Parameters
        ----------
        kind : {"standardized", "noisy", "clean"}
        index : array_like of int, optional
            Positions within this dataset (default: all of them, in order).

        Returns
        -------
        ndarray, shape (m, image_size, image_size)
            A new array: float32 for ``"standardized"``, float64 for the raw kinds.
        """
        if kind not in IMAGE_KINDS:
            raise InputError(f"image kind must be one of {IMAGE_KINDS}, got {kind!r}")
        rows = self._rows(index)
        # Simulated files store standardised images; particle stacks store raw ones.
        stored_raw = self.metadata.get("stored") == "raw"
        mean, std = self.standardization
        if kind == "standardized":
            images = self._read("projections", rows)
            return ((images - mean) / std).astype(np.float32) if stored_raw else images
        if kind == "raw":
            images = self._read("projections", rows).astype(np.float64)
            return images if stored_raw else images * std + mean
        if kind == "noisy":
            if self.shifted:
                raise InputError(
                    f"{self.path.name}: the projections are shifted, and no stage here (as in the paper) estimates "
                    "shifts: reconstructing from them would blur the map; use its clean projections "
                    "(store_clean = true) or a dataset without shifts"
                )
            return self.images("raw", index)
        if self.has_clean:
            return self._read("clean", rows).astype(np.float64)
        if self.noise_variance == 0 and not self.shifted and not stored_raw:
            return self.images("noisy", index)
        raise InputError(
            f"{self.path.name} has no clean projections; simulate it with store_clean = true to reconstruct "
            "from noiseless images" + ("" if self.shifted else ", or use its noisy images")
        )

    def subset(self, index) -> Dataset:
        """The dataset of the images at positions ``index`` (a view of the same file)."""
        index = np.asarray(index)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise InputError(f"index must be a 1-D array of integers, got {index.dtype} of shape {index.shape}")
        if len(index) and (index.min() < -self.n or index.max() >= self.n):
            raise InputError(f"index out of range for a dataset of {self.n} images")

        def take(a):
            return None if a is None else a[index]

        return dataclasses.replace(
            self,
            index=self.index[index],
            quaternions=take(self.quaternions),
            euler=take(self.euler),
            shifts=self.shifts[index],
            ctf=MappingProxyType({k: v[index] for k, v in self.ctf.items()}),
        )

    def split_index(self, name: str) -> np.ndarray:
        """Positions of the split ``name`` (see the module docstring) within this dataset."""
        if name not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {name!r}")
        if name == "all":
            return np.arange(self.n)
        train, val, test = splits.train_val_test_split(self.n)
        return {"train": train, "val": val, "test": np.sort(test)}[name]

    def split(self, name: str) -> Dataset:
        """The view of one part of Table 1's split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``."""
        return self.subset(self.split_index(name))


def _read_rows(path: Path):
    """A reader of rows of a stored image array: one contiguous read, then the rows picked."""

    def read(name: str, rows: np.ndarray) -> np.ndarray:
        with h5py.File(path, "r") as f:
            stored = f[name]
            if len(rows) == stored.shape[0] and np.array_equal(rows, np.arange(len(rows))):
                return stored[()]
            if len(rows) == 0:
                return np.empty((0,) + stored.shape[1:], stored.dtype)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            return stored[lo:hi][rows - lo]

    return read


def _json_attr(path: Path, attrs, name: str) -> dict:
    try:
        value = json.loads(attrs[name])
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: its {name!r} attribute is not valid JSON ({err}); simulate it again") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: its {name!r} attribute is not a JSON object; simulate it again")
    return value


def _read_hdf5(path: Path) -> Dataset:
    """Open a dataset written by :func:`cryo_orient.simulation.simulate.simulate_dataset`."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path} is not a readable HDF5 file ({err}); delete it and simulate it again") from None
    with f:
        if "cache_key" not in f.attrs or "quaternions" not in f:
            raise InputError(f"{path} is not a cryo_orient dataset (no cache_key/quaternions); simulate it again")
        missing = [name for name in ("projections", "euler", "shifts") if name not in f]
        missing += [name for name in _REQUIRED_ATTRS if name not in f.attrs]
        if missing:
            raise InputError(f"{path} lacks {missing}: it was not fully written; simulate it again")
        projections = f["projections"]
        if projections.ndim != 3 or projections.shape[1] != projections.shape[2]:
            raise InputError(
                f"{path}: projections must be an (n, s, s) stack of square images, got shape "
                f"{projections.shape}; simulate it again"
            )
        n, size = projections.shape[0], projections.shape[1]
        arrays = {name: f[name][()] for name in ("quaternions", "euler", "shifts")}
        has_clean = "clean" in f
        if has_clean and f["clean"].shape != projections.shape:
            raise InputError(
                f"{path}: {f['clean'].shape[0]} clean images of shape {f['clean'].shape[1:]} for {n} "
                f"projections of {projections.shape[1:]}; simulate it again"
            )
        ctf = {name: f["ctf"][name][()] for name in f["ctf"]} if "ctf" in f else {}
        attrs = dict(f.attrs)
    if n < 1:
        raise InputError(f"{path} holds no projections; simulate it again")
    for name, width in (("quaternions", 4), ("euler", 3), ("shifts", 2)):
        a = arrays[name]
        if a.shape != (n, width):
            raise InputError(
                f"{path}: {name} must have shape ({n}, {width}), one row per projection, got "
                f"{a.shape}; simulate it again"
            )
        if not np.all(np.isfinite(a)):
            raise InputError(f"{path}: {name} hold NaN or infinite values; simulate it again")
    config = _json_attr(path, attrs, "config")
    provenance = _json_attr(path, attrs, "provenance")
    metadata = {k: v for k, v in attrs.items() if k not in ("config", "provenance")}
    voxel = float(metadata["voxel_size"] or 0.0)
    return Dataset(
        path=path,
        index=np.arange(n),
        quaternions=arrays["quaternions"],
        euler=arrays["euler"],
        shifts=arrays["shifts"],
        ctf=MappingProxyType(ctf),
        pixel_size=voxel if voxel > 0 else None,
        image_size=int(size),
        config=MappingProxyType(config),
        provenance=MappingProxyType(provenance),
        metadata=MappingProxyType(metadata),
        has_clean=has_clean,
        _read=_read_rows(path),
    )


#: Readers by file suffix; :mod:`cryo_orient.data.particles` adds ``.star`` (RELION STAR + MRCS).
READERS: dict[str, Callable[[Path], Dataset]] = {".h5": _read_hdf5, ".hdf5": _read_hdf5}


def read_dataset(path) -> Dataset:
    """Open a dataset file with the reader of its suffix (:data:`READERS`), validated.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    InputError
        If the file cannot be read as a dataset, or its arrays disagree in shape or count.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}; create it with `cryo-orient simulate` or `make simulate`")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path}: no reader for {path.suffix!r} files; datasets are {sorted(READERS)} files")
    return reader(path)
