"""RELION 3.1 STAR files: particle orientations and shifts, and the image stack they describe.

Conventions
-----------
Euler angles
    RELION's ``Euler_angles2matrix(rot, tilt, psi)`` builds ``A = (Rz(rot) Ry(tilt) Rz(psi))ᵀ``
    (active rotations about z and y) and its projector takes the image frequency ``(kx, ky)`` to
    the 3-D frequency ``Aᵀ (kx, ky, 0)``. That is the Fourier slice of
    :mod:`cryo_orient.tomography.projection` with ``R = A``: the rotation matrix of our quaternion *is*
    RELION's ``A``, and ``(rot, tilt, psi)`` are the intrinsic ZYZ Euler angles of ``Rᵀ``, i.e.
    ``Rotation.from_matrix(R.T).as_euler("ZYZ", degrees=True)``. Angles are in degrees; we
    return ``tilt`` in [0, 180] and ``rot``, ``psi`` in (-180, 180]. At gimbal lock only
    ``rot + psi`` (tilt 0) or ``psi - rot`` (tilt 180) is defined, and we set ``rot = 0``, as
    RELION's ``Euler_matrix2angles`` does.

    In terms of the paper's angles of :mod:`cryo_orient.geometry.rotations`, ``R = Rz(θ3) Ry(θ2) Rz(θ1)``
    gives ``(rot, tilt, psi) = (180° - θ1, θ2, 180° - θ3)`` (modulo 360°).

Shifts
    Our shifts (the ``shifts`` of a simulated dataset, from
    :func:`cryo_orient.simulation.simulate.random_shifts`) are ``(dy, dx)`` in pixels by which the image
    content was *moved* (``np.roll`` / ``ndimage.shift``): the particle's centre sits at
    ``n // 2 + (dy, dx)``. RELION's ``rlnOriginXAngst, rlnOriginYAngst`` point the other way:
    ``relion_reconstruct`` centres a particle by translating its image by ``+origin``, and
    ``relion_project`` draws a particle with origin ``o`` at ``-o``. Both programs put the image
    centre at ``n // 2``, as we do. So we write ``(rlnOriginXAngst, rlnOriginYAngst) =
    -(dx, dy) * pixel_size`` (x first, in Å) and read them back the same way.

Files
    STAR files are read and written with the ``starfile`` package (teamtomo). We read RELION 3.0
    files (one table, CTF and pixel size per particle, origins ``rlnOriginX/Y`` in pixels) and
    RELION 3.1, 4 and 5 files (a ``data_optics`` table and a ``data_particles`` table whose rows
    name their ``rlnOpticsGroup``; origins ``rlnOriginX/YAngst`` in Å). We always write the 3.1
    layout (``# version 30001`` before each table), which RELION 3.1 to 5 read. Image names are
    ``000001@stack.mrcs`` with the stack's path relative to the STAR file's folder; RELION
    resolves them from its working directory, so run it there. Numbers we compute are written
    with 6 decimals (1e-6° in angles, 1e-6 Å in origins); the columns of a file we were given are
    written back as the text they were read as. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryo_orient import validation
from cryo_orient.artifacts import atomic_output
from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError

__all__ = [
    "ParticleTable",
    "quaternions_to_relion",
    "read_particle_table",
    "read_star",
    "relion_to_quaternions",
    "write_particle_stack",
    "write_particles",
    "write_star",
]

STAR_VERSION = "30001"  # RELION 3.1's table header; RELION 4 and 5 read it too

OPTICS_COLUMNS = (
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnAmplitudeContrast",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
)
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")

# Below this |sin(tilt / 2)| (or |cos|) the rotation is Rz(rot + psi) (or Rz(psi - rot) Ry(180))
# to within 4e-12 rad, and we report it with RELION's rot = 0.
GIMBAL_EPS = 1e-12

#: CTF columns by RELION name; in 3.1+ files the first three are per particle and the others come
#: from the particle's optics group (a particle column wins where both exist, as in RELION).
CTF_COLUMNS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
)
#: Without these there is no CTF to model (the others have defaults: V = U, angle 0, ...).
CTF_REQUIRED = ("rlnDefocusU", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _real_array(value, name, trailing, what) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers ({what}), got {type(value).__name__}") from None
    if arr.ndim < 1 or arr.shape[-1] != trailing:
        raise ValueError(
            f"{name} must have shape (N, {trailing}) ({what}), got shape {arr.shape}"
            + (
                "; transpose it if the components are on the first axis"
                if arr.ndim == 2 and arr.shape[0] == trailing
                else ""
            )
        )
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); drop or fix those rows first")
    return arr


def _quaternions(q, name="quaternions") -> np.ndarray:
    q = _real_array(q, name, 4, "scalar-last quaternions (x, y, z, w)")
    norms = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(
            f"{name} holds {int(np.count_nonzero(norms == 0))} zero quaternion(s), which are not "
            "rotations; drop them or use (0, 0, 0, 1) for the identity"
        )
    return q / norms


def _token(name, value) -> str:
    # STAR values are whitespace-separated and RELION does not honour quotes in every reader
    value = str(value)
    if not value or re.search(r"\s", value) or value[0] in "_#'\"$;" or value.startswith(("data_", "loop_")):
        raise ValueError(
            f"{name} must be a non-empty word without spaces that does not start with _, #, quotes, "
            f"'data_' or 'loop_' (it is written unquoted into the STAR file), got {value!r}"
        )
    return value


def _check_images(images, name="images") -> np.ndarray:
    # RELION needs square images.
    return validation.image_stack(images, name, square=True)


# --------------------------------------------------------------------------------------------
# Euler angles
# --------------------------------------------------------------------------------------------


def _wrap_degrees(a):
    """Angles in (-180, 180]."""
    return 180.0 - np.mod(180.0 - a, 360.0)


def quaternions_to_relion(q) -> np.ndarray:
    """RELION Euler angles ``(rot, tilt, psi)`` of orientations.

    Parameters
    ----------
    q : array_like, shape (N, 4)
        Non-zero scalar-last quaternions ``(x, y, z, w)``; normalised here. Any leading shape
        works, e.g. ``(4,)`` for one orientation.

    Returns
    -------
    ndarray, shape (N, 3)
        ``(rot, tilt, psi)`` in degrees, ``tilt`` in [0, 180], ``rot`` and ``psi`` in
        (-180, 180], such that RELION's ``Euler_angles2matrix(rot, tilt, psi)`` is
        ``rotations.quaternion_to_matrix(q)`` (see the module docstring). At gimbal lock
        ``rot`` is 0.

    Raises
    ------
    ValueError
        If ``q`` is not of shape ``(..., 4)``, holds NaN or infinite values, or a zero quaternion.
    """
    q = _quaternions(q, "q")
    # Rᵀ = Rz(rot) Ry(tilt) Rz(psi) has the conjugate quaternion p; with half angles,
    # p = (sin(t) sin(s - r), sin(t) cos(r - s), cos(t) sin(r + s), cos(t) cos(r + s)).
    # Reading the angles from p by atan2 stays accurate near gimbal lock, where matrix entries
    # lose the individual angles.
    px, py, pz, pw = -q[..., 0], -q[..., 1], -q[..., 2], q[..., 3]
    sin_half_tilt = np.hypot(px, py)
    cos_half_tilt = np.hypot(pz, pw)
    half_sum = np.arctan2(pz, pw)  # (rot + psi) / 2
    half_diff = np.arctan2(-px, py)  # (rot - psi) / 2
    tilt = 2.0 * np.arctan2(sin_half_tilt, cos_half_tilt)
    rot = half_sum + half_diff
    psi = half_sum - half_diff
    flat = sin_half_tilt <= GIMBAL_EPS
    flipped = cos_half_tilt <= GIMBAL_EPS
    psi = np.where(flat, 2.0 * half_sum, np.where(flipped, -2.0 * half_diff, psi))
    rot = np.where(flat | flipped, 0.0, rot)
    tilt = np.where(flat, 0.0, np.where(flipped, np.pi, tilt))
    angles = np.stack([_wrap_degrees(np.degrees(rot)), np.degrees(tilt), _wrap_degrees(np.degrees(psi))], axis=-1)
    return angles + 0.0  # no -0.0 in the file


def relion_to_quaternions(angles_deg) -> np.ndarray:
    """Orientations from RELION Euler angles; the inverse of :func:`quaternions_to_relion`.

    Parameters
    ----------
    angles_deg : array_like, shape (N, 3)
        ``(rot, tilt, psi)`` in degrees, any real values (``tilt`` need not be in [0, 180]).

    Returns
    -------
    ndarray, shape (N, 4)
        Canonical unit quaternions ``(x, y, z, w)`` whose matrix is RELION's
        ``Euler_angles2matrix(rot, tilt, psi)``.

    Raises
    ------
    ValueError
        If ``angles_deg`` is not of shape ``(..., 3)`` or holds NaN or infinite values.
    """
    angles = _real_array(angles_deg, "angles_deg", 3, "RELION (rot, tilt, psi) in degrees")
    r, t, s = np.moveaxis(np.radians(angles) / 2.0, -1, 0)
    p = np.stack(
        [np.sin(t) * np.sin(s - r), np.sin(t) * np.cos(r - s), np.cos(t) * np.sin(r + s), np.cos(t) * np.cos(r + s)],
        axis=-1,
    )
    return rotations.canonical(p * np.array([-1.0, -1.0, -1.0, 1.0]))  # p is the quaternion of Rᵀ


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_particle_stack(path, images, pixel_size) -> Path:
    """Write 2-D images to an MRC stack (``.mrcs``), atomically.

    Parameters
    ----------
    path : str or path-like
        Destination, ending in ``.mrcs`` (RELION reads ``.mrc`` as a 3-D map); overwritten if it
        exists.
    images : array_like, shape (N, n, n)
        Square images indexed ``[y, x]``; stored as float32 (mode 2). Not modified.
    pixel_size : float
        In Å, written as the voxel size.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.mrcs``, ``images`` is not a non-empty stack of square
        images of finite real numbers, or ``pixel_size`` is not a positive finite number.
    """
    path = Path(path)
    if path.suffix != ".mrcs":
        raise ValueError(f"a particle stack must end in .mrcs (RELION reads .mrc as a 3-D map), got {path.name!r}")
    images = _check_images(images)
    pixel_size = validation.positive(pixel_size, "pixel_size")

    data = np.array(images, dtype=np.float32, order="C", copy=True)  # mrcfile keeps a reference
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return path


def _existing_stack(stack, n, image_size, pixel_size) -> None:
    if not stack.is_file():
        raise FileNotFoundError(f"image_stack {stack} does not exist; write it first with write_particle_stack")
    with mrcfile.open(stack, header_only=True) as mrc:
        shape = (int(mrc.header.nz), int(mrc.header.ny), int(mrc.header.nx))
        voxel = float(mrc.voxel_size.x)
    if shape[0] != n:
        raise ValueError(
            f"image_stack {stack.name} holds {shape[0]} images but there are {n} quaternions; "
            "write one image per orientation"
        )
    if shape[1:] != (image_size, image_size):
        raise ValueError(
            f"image_stack {stack.name} holds {shape[2]} x {shape[1]} images but image_size is {image_size}"
        )
    if voxel > 0 and not math.isclose(voxel, pixel_size, rel_tol=1e-5):
        raise ValueError(
            f"image_stack {stack.name} has voxel size {voxel:g} Å but pixel_size is {pixel_size:g} Å; "
            "RELION would use the STAR file's, so make them agree"
        )


def _decimals(values) -> list[str]:
    """Numbers as RELION writes them: 6 decimals, no -0.000000."""
    return [f"{v:.6f}" for v in np.asarray(values, dtype=np.float64) + 0.0]


def _write_tables(path: Path, tables: dict) -> Path:
    """Write tables (name -> DataFrame) as a RELION 3.1 STAR file, atomically.

    starfile writes the loops; we put RELION's ``# version 30001`` line before each table in place
    of starfile's banner, so the file reads like one RELION wrote.
    """
    with atomic_output(path) as tmp:
        with warnings.catch_warnings():  # starfile warns about pandas internals on some versions
            warnings.simplefilter("ignore")
            starfile.write(tables, tmp, overwrite=True)
        lines = [line for line in tmp.read_text().splitlines() if not line.startswith("# Created by the starfile")]
        text = "\n".join(lines).strip("\n")
        text = re.sub(r"(^|\n)data_", rf"\1# version {STAR_VERSION}\n\ndata_", text)
        tmp.write_text(text + "\n")
    return path


def write_star(
    path,
    quaternions,
    *,
    pixel_size,
    image_size,
    shifts=None,
    image_stack=None,
    voltage=300.0,
    spherical_aberration=2.7,
    amplitude_contrast=0.1,
    optics_group_name="opticsGroup1",
) -> Path:
    """Write orientations (and shifts, and image names) as a RELION 3.1 particle STAR file.

    Parameters
    ----------
    path : str or path-like
        Destination, ending in ``.star``; overwritten if it exists. Written atomically.
    quaternions : array_like, shape (N, 4)
        Orientations ``(x, y, z, w)``, N >= 1; written as ``rlnAngleRot/Tilt/Psi``.
    pixel_size : float
        Image pixel size in Å (``rlnImagePixelSize``).
    image_size : int
        Image side in pixels (``rlnImageSize``).
    shifts : array_like, shape (N, 2), optional
        ``(dy, dx)`` in pixels by which each particle was moved (a simulated dataset's
        ``shifts``); written as ``rlnOriginXAngst, rlnOriginYAngst = -(dx, dy) * pixel_size``.
        Default: zero origins.
    image_stack : array_like of shape (N, image_size, image_size), or path-like, optional
        The particle images. An array is written by :func:`write_particle_stack` beside ``path``
        with the suffix ``.mrcs``; a path names an existing ``.mrcs`` stack, checked to hold N
        images of the right size. Either adds ``rlnImageName`` (``000001@<stack>``, the stack's
        path relative to the STAR file's folder). Default: no image names.
    voltage, spherical_aberration, amplitude_contrast : float
        kV, mm and fraction, written to the optics table (unused without a CTF, but RELION
        requires them).
    optics_group_name : str
        ``rlnOpticsGroupName``, a word without spaces.

    Returns
    -------
    path : pathlib.Path
        The STAR file.

    Raises
    ------
    ValueError
        For a path not ending in ``.star``, arrays of the wrong shape or with NaN or infinite
        values, a non-positive ``pixel_size``, ``image_size`` or ``voltage``, an
        ``amplitude_contrast`` outside [0, 1], or an ``image_stack`` whose count or size does not
        match. Nothing is written then.
    FileNotFoundError
        If ``image_stack`` is a path that does not exist.
    """
    path = Path(path)
    if path.suffix != ".star":
        raise ValueError(f"a RELION STAR file must end in .star, got {path.name!r}")
    q = _quaternions(quaternions)
    if q.ndim != 2 or len(q) == 0:
        raise ValueError(f"quaternions must have shape (N, 4) with N >= 1, got shape {q.shape}")
    n = len(q)
    pixel_size = validation.positive(pixel_size, "pixel_size")
    image_size = validation.positive_int(image_size, "image_size")
    voltage = validation.positive(voltage, "voltage")
    spherical_aberration = validation.finite(spherical_aberration, "spherical_aberration")
    amplitude_contrast = validation.finite(amplitude_contrast, "amplitude_contrast")
    if not 0.0 <= amplitude_contrast <= 1.0:
        raise ValueError(f"amplitude_contrast is a fraction in [0, 1], got {amplitude_contrast}")
    optics_group_name = _token("optics_group_name", optics_group_name)
    if shifts is None:
        shifts = np.zeros((n, 2))
    shifts = _real_array(shifts, "shifts", 2, "(dy, dx) in pixels")
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must have shape ({n}, 2), one (dy, dx) per quaternion, got {shifts.shape}")

    stack_images = stack = None
    if image_stack is not None:
        if isinstance(image_stack, (str, os.PathLike)):
            stack = Path(image_stack)
            if stack.suffix != ".mrcs":
                raise ValueError(f"image_stack must be an .mrcs stack, got {stack.name!r}")
            _existing_stack(stack, n, image_size, pixel_size)
        else:
            stack_images = _check_images(image_stack, "image_stack")
            if len(stack_images) != n:
                raise ValueError(
                    f"image_stack holds {len(stack_images)} images but there are {n} quaternions; "
                    "pass one image per orientation"
                )
            if stack_images.shape[1] != image_size:
                raise ValueError(
                    f"image_stack images are {stack_images.shape[1]} pixels wide but image_size is {image_size}"
                )
            stack = path.with_suffix(".mrcs")
        stack_name = Path(os.path.relpath(stack.resolve(), path.parent.resolve())).as_posix()
        _token("the stack's path relative to the STAR file", stack_name)

    angles = quaternions_to_relion(q)
    # the particle was moved by +(dy, dx); RELION's origin is the opposite, x first, in Å
    origins = -shifts[:, ::-1] * pixel_size + 0.0
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": [optics_group_name],
            "rlnAmplitudeContrast": [amplitude_contrast],
            "rlnSphericalAberration": [spherical_aberration],
            "rlnVoltage": [voltage],
            "rlnImagePixelSize": [pixel_size],
            "rlnImageSize": [image_size],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {"rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)]} if stack is not None else {}
    )
    for k, column in enumerate(ANGLE_COLUMNS):
        particles[column] = _decimals(angles[:, k])
    for k, column in enumerate(ORIGIN_COLUMNS):
        particles[column] = _decimals(origins[:, k])
    particles["rlnOpticsGroup"] = 1

    if stack_images is not None:
        write_particle_stack(stack, stack_images, pixel_size)
    _write_tables(path, {"optics": optics, "particles": particles})
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _read_tables(path: Path, *, as_text=False) -> dict[str, pd.DataFrame]:
    if not path.is_file():
        raise FileNotFoundError(f"STAR file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tables = starfile.read(path, always_dict=True)
            if as_text:  # every value as the text it was written as, to write it back unchanged
                columns = sorted({c for t in tables.values() if isinstance(t, pd.DataFrame) for c in t.columns})
                tables = starfile.read(path, always_dict=True, parse_as_string=columns)
    except Exception as exc:  # starfile raises whatever pandas does on malformed text
        raise InputError(
            f"{path} is not a readable STAR file ({type(exc).__name__}: {exc}); check its syntax"
        ) from None
    out = {}
    for name, table in tables.items():
        if isinstance(table, dict):  # a block of name-value pairs
            table = pd.DataFrame({k: [v] for k, v in table.items()})
        out[name] = table.reset_index(drop=True)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ParticleTable:
    """The particle and optics tables of a RELION STAR file, with RELION's conventions applied.

    Attributes
    ----------
    path : Path
        The STAR file; image names are relative to its folder.
    particles : pandas.DataFrame
        One row per particle, every column of the file (names without the leading ``_``). In a
        RELION 3.0 file, the one table.
    optics : pandas.DataFrame or None
        The ``data_optics`` table of a 3.1+ file (None for 3.0).
    version : {"3.0", "3.1"}
        The layout: ``"3.1"`` stands for 3.1, 4 and 5 (optics groups).
    pixel_size : ndarray, shape (n,)
        Each particle's pixel size in Å (``rlnImagePixelSize`` of its optics group; in 3.0 files
        ``rlnDetectorPixelSize · 1e4 / rlnMagnification``; or the ``angpix`` given to the reader).
    """

    path: Path
    particles: pd.DataFrame
    optics: pd.DataFrame | None
    version: str
    pixel_size: np.ndarray

    def __len__(self) -> int:
        return len(self.particles)

    def subset(self, rows) -> ParticleTable:
        """The table of the particles at positions ``rows`` (written back, only their rows are)."""
        rows = np.asarray(rows, dtype=int)
        return dataclasses.replace(self, particles=self.particles.iloc[rows], pixel_size=self.pixel_size[rows])

    def _numbers(self, columns, what) -> np.ndarray:
        return _numbers(self.path, self.particles, columns, what)

    def _optics_column(self, column) -> np.ndarray | None:
        """A column of the optics table, one value per particle (through its group); None if absent."""
        if column in self.particles.columns:
            return self._numbers([column], column)[:, 0]
        if self.optics is None or column not in self.optics.columns:
            return None
        values = _numbers(self.path, self.optics, [column], f"data_optics {column}")[:, 0]
        return values[self._groups()]

    def _groups(self) -> np.ndarray:
        """Each particle's row in the optics table."""
        groups = _numbers(self.path, self.optics, ["rlnOpticsGroup"], "data_optics rlnOpticsGroup")[:, 0].astype(int)
        if "rlnOpticsGroup" not in self.particles.columns:
            if len(groups) != 1:
                raise InputError(
                    f"{self.path}: data_particles has no rlnOpticsGroup column but there are {len(groups)} optics "
                    "groups; add the column"
                )
            return np.zeros(len(self), dtype=int)
        wanted = self._numbers(["rlnOpticsGroup"], "optics groups")[:, 0].astype(int)
        row = {g: k for k, g in enumerate(groups)}
        unknown = sorted(set(wanted.tolist()) - set(row))
        if unknown:
            first = int(np.flatnonzero(~np.isin(wanted, groups))[0]) + 1
            raise InputError(
                f"{self.path}: particles refer to optics group(s) {unknown} missing from data_optics "
                f"(first at particle row {first}); add the group or fix rlnOpticsGroup"
            )
        return np.array([row[g] for g in wanted])

    @property
    def has_angles(self) -> bool:
        return all(c in self.particles.columns for c in ANGLE_COLUMNS)

    def angles(self) -> np.ndarray | None:
        """``(rot, tilt, psi)`` in degrees, shape (n, 3), or None without angle columns."""
        return self._numbers(ANGLE_COLUMNS, "angles") if self.has_angles else None

    def quaternions(self) -> np.ndarray | None:
        """Orientations (see :func:`relion_to_quaternions`), or None without angle columns."""
        angles = self.angles()
        if angles is None:
            return None
        return relion_to_quaternions(angles) if len(angles) else np.empty((0, 4))

    def origins_angstrom(self) -> np.ndarray | None:
        """``(rlnOriginXAngst, rlnOriginYAngst)`` per particle (3.0 files: pixels times the pixel size)."""
        if all(c in self.particles.columns for c in ORIGIN_COLUMNS):
            return self._numbers(ORIGIN_COLUMNS, "origins")
        if all(c in self.particles.columns for c in ("rlnOriginX", "rlnOriginY")):
            return self._numbers(("rlnOriginX", "rlnOriginY"), "origins") * self.pixel_size[:, None]
        return None

    def shifts(self) -> np.ndarray:
        """``(dy, dx)`` in pixels by which each particle is off centre (zeros without origins):
        ``-origin / pixel size``, x and y swapped (see the module docstring)."""
        origins = self.origins_angstrom()
        if origins is None:
            return np.zeros((len(self), 2))
        return -origins[:, ::-1] / self.pixel_size[:, None] + 0.0

    def ctf_columns(self) -> dict[str, np.ndarray]:
        """The CTF parameters of each particle by RELION column (:data:`CTF_COLUMNS`), or an empty
        dict when the file has no CTF (no ``rlnDefocusU``)."""
        if "rlnDefocusU" not in self.particles.columns:
            return {}
        out = {}
        for column in CTF_COLUMNS:
            values = self._optics_column(column)
            if values is not None:
                out[column] = values
        missing = [c for c in CTF_REQUIRED if c not in out]
        if missing:
            raise InputError(
                f"{self.path} has defocus values but no {missing}: a CTF needs them; add them to data_optics "
                "(RELION 3.1+) or to the particle rows (3.0)"
            )
        return out

    def image_names(self) -> list[tuple[int, Path]]:
        """``(index from 0, stack path)`` of each particle's image, the path resolved against the
        STAR file's folder."""
        if "rlnImageName" not in self.particles.columns:
            raise InputError(
                f"{self.path} has no rlnImageName column, so it names no particle images; "
                "give the STAR file of a particle stack (e.g. from relion_preprocess or Extract)"
            )
        out = []
        for row, name in enumerate(self.particles["rlnImageName"].astype(str), 1):
            index, at, stack = name.partition("@")
            if not at or not index.strip().isdigit() or int(index) < 1 or not stack:
                raise InputError(
                    f"{self.path}: particle row {row} has rlnImageName {name!r}; RELION names an image "
                    "N@stack.mrcs with N counting from 1"
                )
            out.append((int(index) - 1, (self.path.parent / stack).resolve()))
        return out


def _numbers(path, table, columns, what) -> np.ndarray:
    """Columns of a table as a float (n, k) array, each value checked to be a finite number."""
    columns = list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path} lacks the column(s) {missing}")
    values = np.empty((len(table), len(columns)))
    for k, column in enumerate(columns):
        numbers = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(numbers)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{path}: {int(bad.sum())} row(s) have a missing, non-numeric or infinite {column}"
                f"{'' if what == column else f' ({what})'}; "
                f"the first is row {first + 1} ({str(table[column].iloc[first])!r}); fix or remove them"
            )
        values[:, k] = numbers
    return values


def _pixel_size(path, particles, optics, angpix, n) -> np.ndarray:
    if angpix is not None:
        return np.full(n, validation.positive(angpix, "angpix"))
    if optics is not None and "rlnImagePixelSize" in optics.columns:
        table = ParticleTable(path, particles, optics, "3.1", np.ones(n))
        sizes = table._optics_column("rlnImagePixelSize")
    elif "rlnImagePixelSize" in particles.columns:
        sizes = _numbers(path, particles, ["rlnImagePixelSize"], "pixel sizes")[:, 0]
    elif all(c in particles.columns for c in ("rlnDetectorPixelSize", "rlnMagnification")):
        detector, magnification = _numbers(path, particles, ("rlnDetectorPixelSize", "rlnMagnification"), "pixel").T
        if np.any(magnification <= 0):
            raise InputError(f"{path}: rlnMagnification must be positive; fix it or give the pixel size (--angpix)")
        sizes = detector * 1e4 / magnification
    else:
        raise InputError(
            f"{path} gives no pixel size (no rlnImagePixelSize in data_optics, no rlnDetectorPixelSize and "
            "rlnMagnification); give it as --angpix (angpix=) in Å"
        )
    if np.any(sizes <= 0):
        raise InputError(f"{path}: the pixel size must be positive, got {sizes.min():g} Å; fix it or give --angpix")
    return sizes


def read_particle_table(path, *, angpix=None, require_pixel_size=True) -> ParticleTable:
    """Read the particle (and optics) tables of a RELION 3.0, 3.1, 4 or 5 STAR file.

    Parameters
    ----------
    path : str or path-like
        The STAR file.
    angpix : float, optional
        Pixel size in Å, in place of the file's.
    require_pixel_size : bool
        Refuse a file without a pixel size (default); if False, such a file gets 1 Å.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    InputError
        If the file is not STAR, has no particle table, or no pixel size (and none is given).
    """
    path = Path(path)
    tables = _read_tables(path)
    optics = tables.get("optics")
    if "particles" in tables:
        particles, version = tables["particles"], "3.1"
    else:
        loops = [name for name, t in tables.items() if name != "optics" and len(t.columns)]
        if optics is not None or len(loops) != 1:
            names = ", ".join(f"data_{name}" for name in tables) or "no tables"
            raise InputError(f"{path} has no data_particles table (it has {names}); give a RELION particle STAR file")
        particles, version, optics = tables[loops[0]], "3.0", None
    n = len(particles)
    if n == 0:
        raise InputError(f"{path}: the particle table has no rows")
    if require_pixel_size or angpix is not None:
        pixel = _pixel_size(path, particles, optics, angpix, n)
    else:
        try:
            pixel = _pixel_size(path, particles, optics, None, n)
        except InputError:
            pixel = np.ones(n)
    return ParticleTable(path, particles, optics, version, pixel)


def read_star(path) -> dict:
    """Read particle orientations, origins and image names from a RELION STAR file.

    Parameters
    ----------
    path : str or path-like
        A RELION 3.0 - 5 particle STAR file holding ``rlnAngleRot``, ``rlnAngleTilt`` and
        ``rlnAnglePsi``.

    Returns
    -------
    dict
        ``"quaternions"``
            (N, 4) canonical quaternions ``(x, y, z, w)`` (see :func:`relion_to_quaternions`).
        ``"angles"``
            (N, 3) ``(rot, tilt, psi)`` in degrees, as in the file.
        ``"origins_angstrom"``
            (N, 2) ``(rlnOriginXAngst, rlnOriginYAngst)``, or None without origins.
        ``"shifts"``
            (N, 2) ``(dy, dx)`` in pixels as :func:`write_star` takes them, or None without
            origins or pixel sizes.
        ``"optics"``
            The first optics row as ``{"rlnVoltage": 300.0, ...}``, or None without optics.
        ``"image_names"``
            The ``rlnImageName`` strings, or None without that column.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    InputError
        If the file is not valid STAR, has no particle table or no angle columns, or holds angles
        or origins that are not finite numbers.
    """
    table = read_particle_table(path, require_pixel_size=False)
    if not table.has_angles:
        missing = [c for c in ANGLE_COLUMNS if c not in table.particles.columns]
        raise InputError(
            f"{table.path} has no orientations: the particle table lacks the column(s) {missing}; "
            "run a 3-D refinement, `cryo-orient orient`, or write the file with write_star"
        )
    has_pixel = "rlnImagePixelSize" in (table.optics.columns if table.optics is not None else ()) or any(
        c in table.particles.columns for c in ("rlnImagePixelSize", "rlnDetectorPixelSize")
    )
    origins = table.origins_angstrom()
    optics = None
    if table.optics is not None and len(table.optics):
        optics = {k: (v.item() if hasattr(v, "item") else v) for k, v in table.optics.iloc[0].items()}
        optics = {k: (str(v) if k.endswith("Name") else v) for k, v in optics.items()}
    names = table.particles["rlnImageName"].astype(str).tolist() if "rlnImageName" in table.particles else None
    return {
        "quaternions": table.quaternions(),
        "angles": table.angles(),
        "origins_angstrom": origins,
        "shifts": table.shifts() if origins is not None and has_pixel else None,
        "optics": optics,
        "image_names": names,
    }


# --------------------------------------------------------------------------------------------
# Writing a table we were given, with new orientations
# --------------------------------------------------------------------------------------------


def _optics_from_particles(particles: pd.DataFrame, text: pd.DataFrame, pixel_size: np.ndarray, size: int):
    """A 3.1 optics table for a 3.0 file: one group per distinct (voltage, Cs, Q0, pixel size)."""
    keys = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast") if c in particles.columns]
    combos = pd.DataFrame({c: pd.to_numeric(particles[c], errors="coerce") for c in keys})
    combos["rlnImagePixelSize"] = pixel_size
    groups, uniques = pd.factorize(pd.MultiIndex.from_frame(combos.round(6)))
    rows = combos.groupby(groups, sort=True).first().reset_index(drop=True)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(rows) + 1),
            "rlnOpticsGroupName": [f"opticsGroup{k}" for k in range(1, len(rows) + 1)],
        }
    )
    for column in rows.columns:
        optics[column] = _decimals(rows[column])
    optics["rlnImageSize"] = size
    optics["rlnImageDimensionality"] = 2
    text = text.drop(columns=[c for c in (*keys, "rlnDetectorPixelSize", "rlnMagnification") if c in text.columns])
    text["rlnOpticsGroup"] = groups + 1
    return optics, text


def write_particles(
    path, table: ParticleTable, *, quaternions=None, shifts=None, image_names=None, image_size=None, columns=None
):
    """Write a particle table back with new orientations (and origins, and image names), RELION 3.1.

    Every row and column of ``table``'s file is written as the text it was read as, except the
    columns set here: ``rlnAngleRot/Tilt/Psi`` from ``quaternions``, ``rlnOriginX/YAngst`` from
    ``shifts`` (``-(dx, dy) · pixel size``; a 3.0 file's ``rlnOriginX/Y`` in pixels are dropped) and
    ``rlnImageName``. A RELION 3.0 file gains an optics table (one group per distinct voltage,
    Cs, amplitude contrast and pixel size).

    Parameters
    ----------
    path : str or path-like
        Destination ``.star``; written atomically.
    table : ParticleTable
        What :func:`read_particle_table` read.
    quaternions : array_like, shape (n, 4), optional
    shifts : array_like, shape (n, 2), optional
        ``(dy, dx)`` in pixels, as :meth:`ParticleTable.shifts` gives them.
    image_names : sequence of str, optional
        New ``rlnImageName`` values (e.g. for a stack written beside ``path``).
    image_size : int, optional
        Box size, needed to build the optics table of a 3.0 file.
    columns : mapping of str to array_like, optional
        More particle columns to set (RELION name without ``_``, one value per particle), e.g.
        ``{"rlnRandomSubset": subsets}``; integers are written as integers, other numbers as
        RELION writes them.
    """
    path = Path(path)
    if path.suffix != ".star":
        raise InputError(f"a RELION STAR file must end in .star, got {path.name!r}")
    n = len(table)
    tables = _read_tables(table.path, as_text=True)
    text = tables["particles"] if table.version == "3.1" else tables[next(k for k in tables if k != "optics")]
    text = text.loc[table.particles.index].reset_index(drop=True)  # the rows of a subset only
    if quaternions is not None:
        q = _quaternions(quaternions)
        if q.shape != (n, 4):
            raise InputError(f"quaternions must have shape ({n}, 4), one per particle, got {q.shape}")
        angles = quaternions_to_relion(q)
        for k, column in enumerate(ANGLE_COLUMNS):
            text[column] = _decimals(angles[:, k])
    if shifts is not None:
        shifts = _real_array(shifts, "shifts", 2, "(dy, dx) in pixels")
        if shifts.shape != (n, 2):
            raise InputError(f"shifts must have shape ({n}, 2), one per particle, got {shifts.shape}")
        origins = -shifts[:, ::-1] * table.pixel_size[:, None]
        text = text.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in text.columns])
        for k, column in enumerate(ORIGIN_COLUMNS):
            text[column] = _decimals(origins[:, k])
    elif table.version == "3.0" and all(c in text.columns for c in ("rlnOriginX", "rlnOriginY")):
        origins = table.origins_angstrom()
        text = text.drop(columns=["rlnOriginX", "rlnOriginY"])
        for k, column in enumerate(ORIGIN_COLUMNS):
            text[column] = _decimals(origins[:, k])
    for column, values in (columns or {}).items():
        values = np.asarray(values)
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
            raise InputError(f"column {column} needs {n} finite numbers, one per particle, got shape {values.shape}")
        name = _token("column name", str(column).lstrip("_"))
        text[name] = [str(int(v)) for v in values] if np.issubdtype(values.dtype, np.integer) else _decimals(values)
    if image_names is not None:
        image_names = [_token("image name", name) for name in image_names]
        if len(image_names) != n:
            raise InputError(f"got {len(image_names)} image names for {n} particles")
        text["rlnImageName"] = image_names
    if table.version == "3.1":
        out = {name: t for name, t in tables.items() if name != "particles"}
        out["particles"] = text
        out = {"optics": out.pop("optics"), **out} if "optics" in out else out
    else:
        if image_size is None:
            raise InputError("image_size is needed to write a RELION 3.0 file's optics table")
        optics, text = _optics_from_particles(table.particles, text, table.pixel_size, int(image_size))
        out = {"optics": optics, "particles": text}
    return _write_tables(path, out)
