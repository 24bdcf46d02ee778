"""Particle stacks written by other programs: a RELION STAR file and its MRC stacks, as a :class:`Dataset`.

:func:`read_particles` reads the tables with :func:`cryo_orient.data.relion.read_particle_table`
(RELION 3.0 - 5; pixel size, CTF and origins with RELION's conventions) and checks every stack the
``rlnImageName`` column names (``N@stack.mrcs``, relative to the STAR file's folder): that it
exists, is an MRC file, holds image ``N``, and that all images have one square box. Images are
read only when asked for, from memory-mapped stacks, so a 100k-particle stack is never loaded
whole.

Image kinds of such a dataset: ``"raw"`` and ``"noisy"`` are the stored images (float64, the
stack's units; ``"noisy"`` is refused for off-centre particles, as for simulated ones),
``"standardized"`` the same with the dataset's mean and standard deviation removed (estimated on
up to 1,000 images evenly spread over the stack). There are no ``"clean"`` images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import mrcfile
import numpy as np
from mrcfile.utils import data_dtype_from_header

from cryo_orient.data import relion
from cryo_orient.data.dataset import READERS, Dataset
from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError

__all__ = ["locate", "read_particles"]

#: Where :func:`locate` looks for a file named relative to no folder: the working folder, the data
#: mirror, and where ``make foreign-stack`` writes its stack.
SEARCH_FOLDERS = (".", "$DATA_MIRROR", "data/foreign")


def locate(name) -> Path:
    """A path as given, or under ``$DATA_MIRROR``, or under ``data/foreign`` (:data:`SEARCH_FOLDERS`)."""
    for folder in SEARCH_FOLDERS:
        base = Path(os.environ.get("DATA_MIRROR", "")) if folder == "$DATA_MIRROR" else Path(folder)
        if folder == "$DATA_MIRROR" and not os.environ.get("DATA_MIRROR"):
            continue
        if (base / name).is_file():
            return base / name
    raise InputError(f"{name} is neither a file nor in $DATA_MIRROR or data/foreign; make it with `make foreign-stack`")


#: Images read to estimate the dataset's mean and standard deviation.
STATISTICS_SAMPLE = 1000


def _stack_shape(path: Path, star: Path, row: int) -> tuple[int, int, int]:
    """``(n, ny, nx)`` of an MRC stack from its header alone."""
    if not path.is_file():
        raise InputError(
            f"{star}: particle row {row} names the stack {path}, which does not exist; "
            "image names are relative to the STAR file's folder"
        )
    try:
        with mrcfile.open(path, header_only=True, permissive=False) as mrc:
            header = mrc.header
            shape = (int(header.nz), int(header.ny), int(header.nx))
            needed = 1024 + int(header.nsymbt) + data_dtype_from_header(header).itemsize * int(np.prod(shape))
    except (ValueError, OSError) as exc:
        raise InputError(f"{star}: the stack {path} (row {row}) is not a readable MRC file ({exc})") from None
    if path.stat().st_size < needed:
        raise InputError(f"{star}: the stack {path} (row {row}) is shorter than its header says; it is truncated")
    return shape


def _image_reader(locations: list[tuple[int, Path]]):
    """A reader of images by dataset row, from memory-mapped stacks, one stack at a time."""
    stacks = sorted({path for _, path in locations})
    stack_of = {path: k for k, path in enumerate(stacks)}
    stack_index = np.array([stack_of[path] for _, path in locations])
    image_index = np.array([index for index, _ in locations])

    def read(name: str, rows: np.ndarray) -> np.ndarray:
        if name != "projections":
            raise InputError(f"a particle stack has no {name!r} images")
        rows = np.asarray(rows, dtype=int)
        out = None
        for k in np.unique(stack_index[rows]):
            where = np.flatnonzero(stack_index[rows] == k)
            with mrcfile.mmap(stacks[k], mode="r", permissive=False) as mrc:
                data = mrc.data.reshape((-1,) + mrc.data.shape[-2:])
                block = np.asarray(data[image_index[rows[where]]], dtype=np.float32)
            if out is None:
                out = np.empty((len(rows),) + block.shape[1:], np.float32)
            out[where] = block
        return out if out is not None else np.empty((0, 0, 0), np.float32)

    return read


def _fingerprint(star: Path, stacks) -> str:
    """A key of the dataset's content: the STAR file's bytes and each stack's size and time."""
    digest = hashlib.sha256(star.read_bytes())
    for path in sorted(stacks):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def read_particles(path, *, angpix=None) -> Dataset:
    """Open a RELION particle STAR file and its stacks as a :class:`Dataset` (images read lazily).

    Parameters
    ----------
    path : str or path-like
        A RELION 3.0, 3.1, 4 or 5 particle STAR file with ``rlnImageName``.
    angpix : float, optional
        Pixel size in Å, in place of the file's (needed where the file has none).

    Returns
    -------
    Dataset
        ``quaternions`` from the angles where the file has them (else None), ``shifts`` from
        the origins (``(dy, dx)`` pixels, zeros without origins), ``ctf`` the CTF columns by RELION
        name (one value per particle; empty without ``rlnDefocusU``), ``pixel_size``, and in
        ``metadata``: ``"star"`` (the :class:`~cryo_orient.data.relion.ParticleTable`, to write the
        file back), ``"format"``, ``"cache_key"``, ``"standardization_mean"`` / ``_std``.

    Raises
    ------
    FileNotFoundError
        If there is no STAR file at ``path``.
    InputError
        For a STAR file without ``rlnImageName``, a missing, unreadable or short stack, an image
        index beyond its stack, images of different or non-square sizes, particles of different
        pixel sizes, no pixel size, or non-numeric CTF values; each names the file and the row.
    """
    path = Path(path)
    table = relion.read_particle_table(path, angpix=angpix)
    locations = table.image_names()
    shapes = {}
    for row, (index, stack) in enumerate(locations, 1):
        if stack not in shapes:
            shapes[stack] = _stack_shape(stack, path, row)
        n_images, ny, nx = shapes[stack]
        if index >= n_images:
            raise InputError(
                f"{path}: particle row {row} asks for image {index + 1} of {stack.name}, which holds {n_images}; "
                "the stack is short or the STAR file belongs to another stack"
            )
    boxes = {(ny, nx) for _, ny, nx in shapes.values()}
    if len(boxes) != 1:
        raise InputError(
            f"{path}: the stacks hold images of different sizes {sorted(boxes)}; "
            "re-extract them with one box size (RELION refines one box size too)"
        )
    ny, nx = boxes.pop()
    if ny != nx:
        raise InputError(f"{path}: the images are {nx} x {ny} pixels; square images are needed")
    pixel = np.unique(table.pixel_size)
    if len(pixel) != 1:
        raise InputError(
            f"{path}: the particles have different pixel sizes {pixel.tolist()} Å; "
            "rescale them to one (relion_preprocess --rescale) or give --angpix"
        )
    ctf = {name: np.asarray(values, dtype=np.float64) for name, values in table.ctf_columns().items()}
    quaternions = table.quaternions()
    read = _image_reader(locations)
    n = len(table)
    sample = np.unique(np.linspace(0, n - 1, min(n, STATISTICS_SAMPLE)).astype(int))
    images = read("projections", sample).astype(np.float64)
    if not np.all(np.isfinite(images)):
        raise InputError(f"{path}: the stacks hold NaN or infinite pixel values; fix or remove those images")
    std = float(images.std())
    if not std > 0:
        raise InputError(f"{path}: the images are constant (standard deviation {std}); check the stacks")
    metadata: Mapping = {
        "star": table,
        "format": f"relion-{table.version}",
        "cache_key": _fingerprint(path, shapes),
        "standardization_mean": float(images.mean()),
        "standardization_std": std,
        "noise_variance": None,
        "stored": "raw",
    }
    return Dataset(
        path=path,
        index=np.arange(n),
        quaternions=quaternions,
        euler=None if quaternions is None else rotations.quaternion_to_euler(quaternions),
        shifts=table.shifts(),
        ctf=MappingProxyType(ctf),
        pixel_size=float(pixel[0]),
        image_size=int(nx),
        config=MappingProxyType({}),
        provenance=MappingProxyType({"source": str(path), "format": f"relion-{table.version}"}),
        metadata=MappingProxyType(metadata),
        has_clean=False,
        _read=read,
    )


READERS[".star"] = read_particles
