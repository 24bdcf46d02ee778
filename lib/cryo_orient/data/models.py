"""Density maps made from atomic models (PDB / mmCIF) with electron scattering factors (gemmi)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gemmi
import numpy as np

from cryo_orient import validation
from cryo_orient.validation import DataError, InputError, MissingInputError

__all__ = ["density_from_model"]


def density_from_model(path, voxel_size, resolution, margin=None, *, return_origin=False):
    """Density map of an atomic model, with electron scattering factors.

    Every atom of the first model contributes its electron scattering factor (International
    Tables C 4.3.2.2, via ``gemmi.DensityCalculatorE``), weighted by occupancy and blurred by a
    Gaussian set by ``resolution``. The model's B-factors are ignored, so that, as with Chimera's
    ``molmap``, the resolution alone sets the blur: the Gaussian's standard deviation is
    ``resolution / (pi * sqrt(2))`` (molmap's default ``sigmaFactor``), i.e. an added B-factor
    of ``4 * resolution**2``. Atoms are used as deposited: no symmetry, NCS or assembly expansion.

    The map fills an orthogonal box: the atoms' bounding box plus ``margin`` on every side.
    Voxel ``[k, j, i]`` is centred at ``origin + (i, j, k) * voxel_size`` in the model's
    coordinates, with ``origin = bounding_box_min - margin`` (x, y, z), and the box holds
    ``ceil((extent + 2 * margin) / voxel_size)`` voxels along each axis.

    Parameters
    ----------
    path : str or path-like
        PDB or mmCIF file, optionally gzipped (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, ``.gz``).
    voxel_size : float
        Voxel size in Å; the output grid has exactly this spacing.
    resolution : float
        Resolution in Å. Should be at least ``2 * voxel_size`` (Nyquist); finer values warn.
    margin : float, optional
        Empty space in Å added around the bounding box. Default: ``3 * resolution`` (molmap's
        edge padding) or the radius the atomic densities reach, whichever is larger. The
        calculation is periodic, so a margin smaller than that radius lets density wrap around to
        the opposite face (a warning says so).
    return_origin : bool, optional
        Also return the box origin.

    Returns
    -------
    volume : ndarray of float32, shape (nz, ny, nx)
        Indexed ``[z, y, x]``.
    voxel_size : float
        Equal to the argument.
    origin : ndarray of float64, shape (3,)
        Only if ``return_origin``: model coordinates ``(x, y, z)`` in Å of voxel ``[0, 0, 0]``.

    Raises
    ------
    ValueError
        For non-positive ``voxel_size``, ``resolution`` or negative ``margin``.
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file cannot be parsed, or holds no atoms with known scattering factors.

    Notes
    -----
    Atoms of unknown elements (or elements without electron scattering factors) are skipped,
    with a warning.
    """
    voxel_size = validation.positive(voxel_size, "voxel_size")
    resolution = validation.positive(resolution, "resolution")
    if margin is not None:
        margin = float(margin)
        if not (math.isfinite(margin) and margin >= 0):
            raise InputError(f"margin must be a finite number >= 0 (in A), got {margin}")
    if resolution < 2 * voxel_size:
        warnings.warn(
            f"resolution {resolution} A is finer than the grid can hold (Nyquist: 2 * voxel_size "
            f"= {2 * voxel_size} A), so the map will be aliased; use resolution >= "
            f"{2 * voxel_size} or voxel_size <= {resolution / 2}",
            UserWarning,
            stacklevel=2,
        )
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no such atomic model file: {path}")

    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise DataError(
            f"cannot read atomic model {path}: {err}. Give a PDB or mmCIF file (.pdb, .ent, "
            ".cif, .mmcif, optionally .gz)."
        ) from err
    if len(structure) == 0:
        raise DataError(
            f"atomic model {path} contains no atoms; check that it is a PDB or mmCIF coordinate "
            "file and not, e.g., an error page"
        )
    model = structure[0]

    atoms = []
    skipped: dict[str, int] = {}
    for cra in model.all():
        atom = cra.atom
        element = atom.element
        if element.atomic_number == 0 or not element.c4322:
            skipped[element.name] = skipped.get(element.name, 0) + 1
            continue
        atoms.append(atom)
    if skipped:
        counts = ", ".join(f"{n} x {name!r}" for name, n in sorted(skipped.items()))
        warnings.warn(
            f"{path}: skipped atoms without electron scattering factors ({counts}); set their "
            "element symbols in the file if they should contribute",
            UserWarning,
            stacklevel=2,
        )
    if not atoms:
        raise DataError(
            f"atomic model {path} contains no atoms with known elements; check that it is a PDB "
            "or mmCIF coordinate file with element symbols"
        )

    calc = gemmi.DensityCalculatorE()
    # d_min = 0: gemmi must keep the grid we size below instead of choosing its own spacing
    calc.d_min = 0.0
    calc.blur = 4.0 * resolution**2

    reach = 0.0
    for element in {atom.element.name for atom in atoms}:
        probe = gemmi.Atom()
        probe.element = gemmi.Element(element)
        probe.b_iso = 0.0
        reach = max(reach, calc.estimate_radius(probe))
    if margin is None:
        margin = max(3.0 * resolution, reach)
    elif margin < reach:
        warnings.warn(
            f"margin {margin} A is smaller than the {reach:.1f} A the atomic densities reach; "
            f"density will wrap around the periodic box to the opposite face. Use margin >= "
            f"{math.ceil(reach)} or leave the default.",
            UserWarning,
            stacklevel=2,
        )

    positions = np.array([(a.pos.x, a.pos.y, a.pos.z) for a in atoms], dtype=np.float64)
    origin = positions.min(axis=0) - margin
    extent = positions.max(axis=0) + margin - origin
    # the tolerance keeps an extent that is a whole number of voxels up to rounding from
    # gaining an extra voxel
    shape_xyz = np.maximum(np.ceil(extent / voxel_size - 1e-6), 1).astype(int)

    for atom, position in zip(atoms, positions - origin, strict=True):
        atom.pos = gemmi.Position(*position)
        atom.b_iso = 0.0
        atom.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)

    # a P1 cell of exactly shape * voxel_size: the grid spacing is then voxel_size exactly
    structure.cell = gemmi.UnitCell(*(shape_xyz * voxel_size), 90.0, 90.0, 90.0)
    structure.spacegroup_hm = "P 1"
    calc.set_grid_cell_and_spacegroup(structure)
    calc.grid.set_size(*(int(n) for n in shape_xyz))
    calc.initialize_grid()
    for atom in atoms:
        calc.add_atom_density_to_grid(atom)

    # gemmi's array is indexed [u, v, w] = [x, y, z]
    grid = np.array(calc.grid, copy=False)
    volume = np.array(grid.transpose(2, 1, 0), dtype=np.float32, order="C", copy=True)
    if return_origin:
        return volume, voxel_size, origin
    return volume, voxel_size
