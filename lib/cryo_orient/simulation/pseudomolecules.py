"""Procedurally generated pseudo-molecules: density maps of random protein-like chains.

An estimator meant for proteins it has never seen has to be trained on many shapes; the few maps
of the registry are too few. A pseudo-molecule is a chain of pseudo-atoms grown like a protein's
Cα trace (consecutive atoms :data:`CA_STEP` = 3.8 Å apart) out of segments of three kinds:

helix-like
    an α-helix's Cα positions (radius 2.3 Å, 100° a residue, the rise that makes the step 3.8 Å);
extended
    a β-strand's zig-zag (amplitude 0.9 Å either side of its axis);
loop
    a persistent random walk.

Each segment's direction is the best of a few random candidates, scored by how far the segment
leaves a sphere about its domain's centre (the confining potential) and by how many atoms it
puts within 4 Å of earlier ones (excluded volume). The sphere's radius follows the radius of
gyration of globular proteins, ``R_g ≈ 2.2 N^0.38`` Å for ``N`` residues, so the chain is
compact; a molecule of several domains grows them one after the other, each centred a domain
diameter from the previous one in a random direction. Every residue also gets a side-chain
pseudo-atom 2.4 Å out from its Cα (away from its neighbours), so the mass per residue is
protein-like.

The atoms are rendered as Gaussians whose width matches a resolution (``σ = resolution / (π√2)``,
the convention of Chimera's ``molmap``), on a ``box``³ grid indexed ``[z, y, x]`` with the centre
of mass at voxel ``box // 2`` on each axis: the projection centre of
:mod:`cryo_orient.tomography.projection`.
"""

from __future__ import annotations

import numpy as np

from cryo_orient import validation
from cryo_orient.validation import InputError, as_rng

__all__ = [
    "CA_STEP",
    "pseudo_atoms",
    "pseudo_molecule",
    "radius_of_gyration",
    "render_atoms",
    "target_radius_of_gyration",
]

#: The distance between consecutive Cα atoms of a protein, Å.
CA_STEP = 3.8
_HELIX_RADIUS = 2.3
_HELIX_TURN = np.radians(100.0)
# The rise per residue that makes consecutive helix atoms CA_STEP apart.
_HELIX_RISE = float(np.sqrt(CA_STEP**2 - (2 * _HELIX_RADIUS * np.sin(_HELIX_TURN / 2)) ** 2))
_STRAND_ZIG = 0.9
_STRAND_RISE = float(np.sqrt(CA_STEP**2 - (2 * _STRAND_ZIG) ** 2))
_SIDE_CHAIN = 2.4
_CLASH = 4.0
_CANDIDATES = 12
# Segment lengths in residues (inclusive ranges) of each kind.
_LENGTHS = {"helix": (7, 20), "strand": (4, 10), "loop": (2, 7)}


def target_radius_of_gyration(n_residues) -> float:
    """The radius of gyration of a globular protein of ``n_residues`` residues, ``2.2 N^0.38`` Å."""
    return 2.2 * float(n_residues) ** 0.38


def radius_of_gyration(coordinates, weights=None) -> float:
    """The radius of gyration of points (Å), optionally weighted (e.g. a map's voxel densities)."""
    x = np.asarray(coordinates, dtype=np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = (w[:, None] * x).sum(0) / w.sum()
    return float(np.sqrt((w * ((x - centre) ** 2).sum(1)).sum() / w.sum()))


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _frame(axis, rng):
    """Two unit vectors completing ``axis`` to an orthonormal frame, at a random angle about it."""
    helper = _unit(rng.standard_normal(3))
    e1 = _unit(np.cross(axis, helper))
    return e1, np.cross(axis, e1)


def _segment(kind, length, start, axis, previous, rng):
    """``length`` new atom positions continuing a chain that ends at ``start`` along ``axis``.

    ``previous`` is the direction of the chain's last step (loops persist along it).
    """
    k = np.arange(1, length + 1)[:, None]
    if kind == "helix":
        e1, e2 = _frame(axis, rng)
        # The helix's axis passes one radius from the start, so its first atom is the start itself.
        centre = start - _HELIX_RADIUS * e1
        angle = _HELIX_TURN * k
        return centre + _HELIX_RISE * k * axis + _HELIX_RADIUS * (np.cos(angle) * e1 + np.sin(angle) * e2)
    if kind == "strand":
        e1, _ = _frame(axis, rng)
        zig = _STRAND_ZIG * ((-1.0) ** k - 1.0)  # 0 at the start, ±0.9 Å about the axis after
        return start + _STRAND_RISE * k * axis + zig * e1
    steps = np.empty((length, 3))
    direction = previous
    for i in range(length):
        # A persistent walk turning towards the chosen axis: loops wander but do not double back.
        direction = _unit(direction + 0.8 * axis + 0.9 * rng.standard_normal(3))
        steps[i] = direction
    return start + CA_STEP * np.cumsum(steps, axis=0)


def _domain_sizes(n_residues, n_domains, rng):
    # Domains of unequal size (a Dirichlet split), none smaller than 30 residues.
    share = rng.dirichlet(np.full(n_domains, 3.0))
    sizes = np.maximum(30, np.round(share * n_residues)).astype(int)
    sizes[-1] = max(30, n_residues - sizes[:-1].sum())
    return sizes


def pseudo_atoms(n_residues, *, rng=None, n_domains=1, helix_fraction=0.5, side_chains=True) -> np.ndarray:
    """The pseudo-atoms of a random protein-like chain, in Å, centred on their centre of mass.

    Parameters
    ----------
    n_residues : int
        Residues of the chain (at least 30 per domain).
    rng : numpy.random.Generator or seed, optional
        The random stream; the same one gives the same molecule.
    n_domains : int
        Compact domains the chain folds into, grown one after the other.
    helix_fraction : float
        Probability that a secondary-structure segment is helix-like rather than extended.
    side_chains : bool
        Add one side-chain pseudo-atom per residue (rows ``n_residues:``).

    Returns
    -------
    ndarray, shape (n_residues, 3) or (2 n_residues, 3)
        ``(x, y, z)`` coordinates in Å: first the Cα trace in chain order (consecutive rows
        :data:`CA_STEP` apart), then the side chains in the same order.
    """
    rng = as_rng(rng)
    n_residues = validation.integer(n_residues, "n_residues", 30)
    n_domains = validation.integer(n_domains, "n_domains", 1)
    if n_residues < 30 * n_domains:
        raise InputError(f"{n_domains} domains need at least {30 * n_domains} residues, got {n_residues}")
    helix_fraction = validation.real(helix_fraction, "helix_fraction", minimum=0.0)
    if helix_fraction > 1:
        raise InputError(f"helix_fraction must be in [0, 1], got {helix_fraction!r}")

    atoms = [np.zeros(3)]
    previous = _unit(rng.standard_normal(3))
    centre = np.zeros(3)
    for d, size in enumerate(_domain_sizes(n_residues, n_domains, rng)):
        radius = np.sqrt(5.0 / 3.0) * target_radius_of_gyration(size)  # a uniform ball of that R_g
        if d > 0:
            # The next domain touches the last one; the chain walks over to it.
            centre = centre + 2.0 * radius * _unit(rng.standard_normal(3))
        goal = len(atoms) + size - (1 if d == 0 else 0)
        secondary = True
        while len(atoms) < goal:
            kind = ("helix" if rng.random() < helix_fraction else "strand") if secondary else "loop"
            secondary = not secondary
            low, high = _LENGTHS[kind]
            length = int(min(rng.integers(low, high + 1), goal - len(atoms)))
            chain = np.asarray(atoms)
            start = chain[-1]
            best, best_score = None, np.inf
            for _ in range(_CANDIDATES):
                # Candidate axes lean towards the domain's centre, more so the farther out the chain is.
                inward = centre - start
                pull = np.linalg.norm(inward) / radius
                axis = _unit(rng.standard_normal(3) + pull * _unit(inward + 1e-9))
                new = _segment(kind, length, start, axis, previous, rng)
                outside = np.maximum(np.linalg.norm(new - centre, axis=1) - radius, 0.0)
                near = chain[:-2] if len(chain) > 2 else chain[:0]
                clashes = 0
                if len(near):
                    dist = np.linalg.norm(new[:, None, :] - near[None, :, :], axis=2)
                    clashes = int((dist < _CLASH).sum())
                score = float((outside**2).sum()) + 10.0 * clashes
                if score < best_score:
                    best, best_score = new, score
            previous = _unit(best[-1] - (best[-2] if len(best) > 1 else start))
            atoms.extend(best)
    ca = np.asarray(atoms[:n_residues])
    if side_chains:
        # Away from the two neighbours' mean (the chain's ends use their one neighbour).
        before = np.vstack([ca[1:2], ca[:-1]])
        after = np.vstack([ca[1:], ca[-2:-1]])
        out = _unit(2 * ca - before - after + 1e-6 * rng.standard_normal(ca.shape))
        ca = np.vstack([ca, ca + _SIDE_CHAIN * out])
    return ca - ca.mean(axis=0)


def render_atoms(coordinates, box, pixel_size, resolution) -> np.ndarray:
    """Render point atoms as Gaussians of a resolution on a ``box``³ grid (float32, ``[z, y, x]``).

    Parameters
    ----------
    coordinates : array_like, shape (n, 3)
        ``(x, y, z)`` in Å; the origin is placed at voxel ``box // 2`` on each axis. Not modified.
    box : int
        Grid side in voxels.
    pixel_size : float
        Å per voxel.
    resolution : float
        Å; each atom is a unit-height Gaussian of ``σ = resolution / (π √2)``.

    Returns
    -------
    ndarray, shape (box, box, box), float32, non-negative
    """
    x = validation.float_array(coordinates, "coordinates", "an (n, 3) array of positions")
    if x.ndim != 2 or x.shape[1] != 3:
        raise InputError(f"coordinates must be an (n, 3) array of positions, got shape {x.shape}")
    box = validation.integer(box, "box", 1)
    pixel_size = validation.positive(pixel_size, "pixel_size")
    resolution = validation.positive(resolution, "resolution")
    sigma = resolution / (np.pi * np.sqrt(2.0)) / pixel_size  # in voxels
    grid = np.arange(box) - box // 2
    # A separable sum: V[z, y, x] = Σ_a g_z[a, z] g_y[a, y] g_x[a, x], one matrix product.
    g = [np.exp(-0.5 * ((grid[None, :] - x[:, axis, None] / pixel_size) / sigma) ** 2) for axis in range(3)]
    gx, gy, gz = g
    zy = (gz[:, :, None] * gy[:, None, :]).reshape(len(x), box * box)
    return (zy.T @ gx).reshape(box, box, box).astype(np.float32)


def pseudo_molecule(
    box,
    pixel_size,
    *,
    rng=None,
    n_residues=None,
    n_domains=None,
    resolution=None,
    helix_fraction=None,
    fill=0.7,
) -> np.ndarray:
    """A random protein-like density map (see the module docstring).

    Parameters
    ----------
    box : int
        Side of the map, voxels (at least 16).
    pixel_size : float
        Å per voxel.
    rng : numpy.random.Generator or seed, optional
        The random stream: the same one gives the same map.
    n_residues : int, optional
        Residues of the chain; default the most (at most 1,500) whose expected extent fills
        ``fill`` of the box (a domain's diameter is about 2.6 ``R_g``: a ball of that ``R_g`` has
        diameter 2.58 ``R_g``), times a random factor in [0.3, 1] so that the sizes vary.
    n_domains : int, optional
        Default 1 to 3 at random (fewer if there are fewer than 30 residues a domain).
    resolution : float, optional
        Å; default uniform in [2, 4] pixels.
    helix_fraction : float, optional
        Default uniform in [0.2, 0.8].
    fill : float
        The fraction of the box the default size aims for.

    Returns
    -------
    ndarray, shape (box, box, box), float32
        Non-negative, indexed ``[z, y, x]``, its centre of mass at voxel ``box // 2``.
    """
    rng = as_rng(rng)
    box = validation.integer(box, "box", 16)
    pixel_size = validation.positive(pixel_size, "pixel_size")
    fill = validation.positive(fill, "fill")
    if n_domains is None:
        n_domains = int(rng.integers(1, 4))
    n_domains = validation.integer(n_domains, "n_domains", 1)
    if n_residues is None:
        # Invert the expected extent for the box, then shrink at random: a domain of N/d residues
        # is a ball of diameter 2.6 · 2.2 (N/d)^0.38, and d of them in a chain span about d^0.6 of it.
        per_domain = (fill * box * pixel_size / (2.6 * 2.2 * n_domains**0.6)) ** (1 / 0.38)
        n_residues = int(np.clip(n_domains * per_domain * rng.uniform(0.3, 1.0), 30 * n_domains, 1500))
    if resolution is None:
        resolution = pixel_size * rng.uniform(2.0, 4.0)
    if helix_fraction is None:
        helix_fraction = rng.uniform(0.2, 0.8)
    atoms = pseudo_atoms(n_residues, rng=rng, n_domains=n_domains, helix_fraction=helix_fraction)
    return render_atoms(atoms, box, pixel_size, resolution)
