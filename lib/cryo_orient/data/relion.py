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
    A STAR file holds a ``data_optics`` table (one optics group) and a ``data_particles`` table,
    in the layout RELION 3.1 writes (``# version 30001``, ``loop_``, ``_rlnName #k``). Image
    names are ``000001@stack.mrcs`` with the stack's path relative to the STAR file's folder;
    RELION resolves them from its working directory, so run it there. Numbers are written with
    6 decimals (1e-6° in angles, 1e-6 Å in origins). Files are written atomically.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import mrcfile
import numpy as np
from gemmi import cif

from cryo_orient import validation
from cryo_orient.artifacts import atomic_output
from cryo_orient.geometry import rotations

__all__ = [
    "quaternions_to_relion",
    "read_star",
    "relion_to_quaternions",
    "write_particle_stack",
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

_INTEGER = re.compile(r"[+-]?\d+")


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


def _loop(block, columns, rows) -> list[str]:
    lines = ["", f"# version {STAR_VERSION}", "", f"data_{block}", "", "loop_"]
    lines += [f"_{c} #{k}" for k, c in enumerate(columns, 1)]
    lines += [" ".join(row) for row in rows]
    return lines + [""]


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
    optics_row = [
        "1",
        optics_group_name,
        f"{amplitude_contrast:.6f}",
        f"{spherical_aberration:.6f}",
        f"{voltage:.6f}",
        f"{pixel_size:.6f}",
        str(image_size),
        "2",
    ]
    columns = (["rlnImageName"] if stack is not None else []) + [*ANGLE_COLUMNS, *ORIGIN_COLUMNS, "rlnOpticsGroup"]
    rows = []
    for i in range(n):
        row = [f"{i + 1:06d}@{stack_name}"] if stack is not None else []
        row += [f"{v:12.6f}" for v in angles[i]] + [f"{v:12.6f}" for v in origins[i]] + ["1"]
        rows.append(row)
    text = "\n".join(_loop("optics", OPTICS_COLUMNS, [optics_row]) + _loop("particles", columns, rows)) + "\n"

    if stack_images is not None:
        write_particle_stack(stack, stack_images, pixel_size)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _columns(block) -> dict[str, list[str]]:
    """Every item of a block, looped or not, as ``{"rlnName": [values]}``."""
    out = {}
    for item in block:
        if item.loop is not None:
            loop = item.loop
            for j, tag in enumerate(loop.tags):
                out[tag.lstrip("_")] = [cif.as_string(loop[i, j]) for i in range(loop.length())]
        elif item.pair is not None:
            tag, value = item.pair
            out[tag.lstrip("_")] = [cif.as_string(value)]
    return out


def _numbers(path, columns, names, what) -> np.ndarray:
    try:
        values = np.array([[float(v) for v in columns[c]] for c in names], dtype=np.float64).T
    except ValueError as exc:
        raise ValueError(f"{path}: {what} columns {names} hold a value that is not a number ({exc})") from None
    bad = ~np.all(np.isfinite(values), axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + 1).tolist()
        raise ValueError(
            f"{path}: {int(bad.sum())} row(s) have NaN or infinite {what} (rows {rows}, counting from 1); "
            "fix or remove them"
        )
    return values


def _value(tag, token):
    # RELION's name labels (rlnOpticsGroupName, rlnMtfFileName, ...) are strings even when numeric
    if tag.endswith("Name"):
        return token
    if _INTEGER.fullmatch(token):
        return int(token)
    try:
        return float(token)
    except ValueError:
        return token


def read_star(path) -> dict:
    """Read particle orientations, origins and image names from a RELION 3.1 STAR file.

    Parameters
    ----------
    path : str or path-like
        A STAR file with a ``data_particles`` table holding ``rlnAngleRot``, ``rlnAngleTilt`` and
        ``rlnAnglePsi`` (other columns are ignored) and, usually, a ``data_optics`` table.

    Returns
    -------
    dict
        ``"quaternions"``
            (N, 4) canonical quaternions ``(x, y, z, w)`` (see :func:`relion_to_quaternions`).
        ``"angles"``
            (N, 3) ``(rot, tilt, psi)`` in degrees, as in the file.
        ``"origins_angstrom"``
            (N, 2) ``(rlnOriginXAngst, rlnOriginYAngst)``, or None without those columns.
        ``"shifts"``
            (N, 2) ``(dy, dx)`` in pixels as :func:`write_star` takes them (``-origin / pixel
            size``, with each particle's optics group's ``rlnImagePixelSize``), or None without
            origins or pixel sizes.
        ``"optics"``
            The first optics row as ``{"rlnVoltage": 300.0, ...}``, or None without optics.
        ``"image_names"``
            The ``rlnImageName`` strings, or None without that column.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not valid STAR, has no ``data_particles`` table or no angle columns, or
        holds angles or origins that are not finite numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STAR file {path} does not exist")
    try:
        doc = cif.read(str(path))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable STAR file: {exc}") from None
    block = doc.find_block("particles")
    if block is None:
        names = [b.name for b in doc]
        raise ValueError(
            f"{path} has no data_particles table (it has data_{', data_'.join(names) or ' nothing'}); "
            "read_star reads RELION 3.1 files - convert older ones with relion_convert_star"
        )
    particles = _columns(block)
    missing = [c for c in ANGLE_COLUMNS if c not in particles]
    if missing:
        raise ValueError(
            f"{path} has no orientations: data_particles lacks the column(s) {missing}; "
            "run a 3-D refinement or write the file with write_star"
        )
    angles = _numbers(path, particles, ANGLE_COLUMNS, "angles")
    n = len(angles)

    optics_block = doc.find_block("optics")
    optics_columns = _columns(optics_block) if optics_block is not None else {}
    optics = None
    if optics_columns and all(len(v) for v in optics_columns.values()):
        optics = {tag: _value(tag, values[0]) for tag, values in optics_columns.items()}

    origins = shifts = None
    if all(c in particles for c in ORIGIN_COLUMNS):
        origins = _numbers(path, particles, ORIGIN_COLUMNS, "origins")
        pixel = _pixel_sizes(path, particles, optics_columns, n)
        if pixel is not None:
            shifts = -origins[:, ::-1] / pixel[:, None] + 0.0

    return {
        "quaternions": relion_to_quaternions(angles) if n else np.empty((0, 4)),
        "angles": angles.reshape(n, 3),
        "origins_angstrom": origins,
        "shifts": shifts,
        "optics": optics,
        "image_names": list(particles["rlnImageName"]) if "rlnImageName" in particles else None,
    }


def _pixel_sizes(path, particles, optics, n):
    """Each particle's ``rlnImagePixelSize``, through its optics group; None if not given."""
    if "rlnImagePixelSize" not in optics:
        return None
    sizes = _numbers(path, optics, ("rlnImagePixelSize",), "pixel sizes")[:, 0]
    if np.any(sizes <= 0):
        raise ValueError(f"{path}: data_optics has a non-positive rlnImagePixelSize {sizes.min():g}")
    groups = [int(v) for v in optics.get("rlnOpticsGroup", range(1, len(sizes) + 1))]
    by_group = dict(zip(groups, sizes))
    if "rlnOpticsGroup" not in particles:
        if len(sizes) != 1:
            raise ValueError(
                f"{path}: data_particles has no rlnOpticsGroup column but there are {len(sizes)} "
                "optics groups; add the column"
            )
        return np.full(n, sizes[0])
    wanted = [int(v) for v in particles["rlnOpticsGroup"]]
    unknown = sorted(set(wanted) - set(by_group))
    if unknown:
        raise ValueError(f"{path}: particles refer to optics group(s) {unknown} missing from data_optics")
    return np.array([by_group[g] for g in wanted])
