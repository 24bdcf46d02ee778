"""MRC/CCP4 density maps: read into ``[z, y, x]`` float32 arrays with their voxel size, written
atomically with voxel size and origin in the header.

Conventions: volumes are indexed ``[z, y, x]`` (as ``mrcfile`` gives ``.data``), voxel sizes are in
Å. Unusable files raise :class:`cryo_orient.validation.DataError`, bad arguments
:class:`cryo_orient.validation.InputError`.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from cryo_orient import validation
from cryo_orient.artifacts import atomic_output
from cryo_orient.validation import DataError, InputError, MissingInputError

__all__ = ["content_digest", "load_volume", "write_volume"]


def _axis_permutation(header) -> tuple[int, int, int]:
    # the array's axes are (section, row, column); MAPS/MAPR/MAPC say which of x=1, y=2, z=3
    # each one is. The permutation brings them into [z, y, x] order.
    labels = [int(header.maps), int(header.mapr), int(header.mapc)]
    if sorted(labels) != [1, 2, 3]:
        raise InputError(f"invalid axis order MAPC, MAPR, MAPS = {labels[::-1]}")
    return labels.index(3), labels.index(2), labels.index(1)


def _is_stack(path: Path, header) -> bool:
    # MRC2014 marks stacks with space group 0 and MZ = 1, but older tools (Chimera among them,
    # e.g. for 5j0n.mrc) write volumes with space group 0 too, so space group 0 alone is no proof
    if path.name.lower().endswith(".mrcs"):
        return True
    return int(header.ispg) == 0 and int(header.mz) == 1 and int(header.nz) > 1


def content_digest(path) -> str:
    """sha256 of an MRC file's shape, data type, voxel size and data, not of its bytes: mrcfile
    stamps the creation time into a header label, so a rewritten identical map must still match
    (cache keys of what was computed from it)."""
    digest = hashlib.sha256()
    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        digest.update(repr((mrc.data.shape, mrc.data.dtype.str, mrc.voxel_size.tolist())).encode())
        digest.update(np.ascontiguousarray(mrc.data).tobytes())
    return digest.hexdigest()


def load_volume(path) -> tuple[np.ndarray, float]:
    """Read a 3-D density map from an MRC file.

    Parameters
    ----------
    path : str or path-like
        An MRC/CCP4 map file.

    Returns
    -------
    volume : ndarray of float32, shape (nz, ny, nx)
        A new C-contiguous array indexed ``[z, y, x]``: ``mrcfile``'s ``.data`` (for files with
        the standard axis order), converted to float32.
    voxel_size : float
        In Å, from the header. If the header's voxel size is 0 or unset, a warning is issued and
        1.0 is returned.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file is empty, is not an MRC file, holds a 2-D image or an image stack rather than
        a volume, has an anisotropic voxel size, or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"no such map file: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file; give the path of an MRC map")
    if path.stat().st_size == 0:
        raise DataError(
            f"{path} is empty (0 bytes), probably from an interrupted download or copy; delete it and fetch it again"
        )

    try:
        with warnings.catch_warnings():
            # permissive=False turns header problems into exceptions, which are reported below
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, mode="r", permissive=False) as mrc:
                data = mrc.data
                header = mrc.header
                voxel = mrc.voxel_size
                voxel_xyz = (float(voxel.x), float(voxel.y), float(voxel.z))
                shape = None if data is None else data.shape
                volume = None
                if shape is not None and len(shape) == 3 and not _is_stack(path, header):
                    perm = _axis_permutation(header)
                    volume = np.array(data.transpose(perm), dtype=np.float32, order="C")
    except (ValueError, OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path} as an MRC map: {err}. Is it an MRC/CCP4 file (not e.g. an HTML "
            "error page or a Git LFS pointer)? Fetch it again or check its source."
        ) from err

    if shape is None:
        raise DataError(f"{path} has an MRC header but no data; fetch it again")
    if len(shape) != 3:
        raise DataError(
            f"{path} holds a {len(shape)}-D array of shape {shape}, not a 3-D volume; give a map of a whole volume"
        )
    if volume is None:
        raise DataError(
            f"{path} is an image stack of {shape[0]} images of {shape[1]} x {shape[2]} pixels, "
            "not a volume; give a 3-D map. If it really is a volume, rename it to .mrc and set "
            "its header's space group to 1 (mrcfile: set_volume())."
        )
    bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise DataError(
            f"{path} holds {bad} NaN or infinite values out of {volume.size}; the map is corrupt "
            "or was written from invalid data. Fetch it again or fix the values at the source."
        )

    vx, vy, vz = voxel_xyz
    if not np.allclose([vy, vz], vx, rtol=1e-5, atol=0.0):
        raise DataError(
            f"{path} has anisotropic voxels (x, y, z) = ({vx}, {vy}, {vz}) A; resample it to cubic voxels first"
        )
    if not (math.isfinite(vx) and vx > 0):
        warnings.warn(
            f"{path} has no voxel size in its header (got {vx}); using 1.0 A. Pass the real "
            "voxel size along yourself if it matters.",
            UserWarning,
            stacklevel=2,
        )
        return volume, 1.0
    return volume, vx


def write_volume(path, volume, voxel_size, *, origin=None) -> Path:
    """Write a 3-D map to an MRC file, atomically.

    The file is written under a temporary name in the destination directory and renamed into
    place, so readers never see a partial file.

    Parameters
    ----------
    path : str or path-like
        Destination; overwritten if it exists. Its directory must exist.
    volume : array_like, shape (nz, ny, nx)
        Real values indexed ``[z, y, x]``; stored as float32 (mode 2). Not modified.
    voxel_size : float
        In Å, written to the header.
    origin : array_like of 3 floats, optional
        Header origin ``(x, y, z)`` in Å, e.g. from :func:`density_from_model`.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        If ``volume`` is not a non-empty 3-D array of finite real numbers, or ``voxel_size`` is not
        a positive finite number.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(
            f"volume must be 3-D [z, y, x], got shape {volume.shape}; write images or stacks with mrcfile directly"
        )
    if volume.size == 0:
        raise InputError(f"volume is empty (shape {volume.shape})")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(f"volume must hold real numbers, got dtype {volume.dtype}")
    bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise InputError(f"volume holds {bad} NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    voxel_size = validation.positive(voxel_size, "voxel_size")
    if origin is not None:
        origin = np.asarray(origin, dtype=np.float64)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise InputError(f"origin must be 3 finite numbers (x, y, z), got {origin!r}")

    path = Path(path)
    # our own float32 copy: mrcfile keeps a reference to what it is given
    data = np.array(volume, dtype=np.float32, order="C", copy=True)
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_volume()
        mrc.voxel_size = voxel_size
        if origin is not None:
            mrc.header.origin = tuple(origin)
    return path
