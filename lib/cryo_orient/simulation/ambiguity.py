"""Two projections do not fix their relative orientation: a volume for any other angle.

By the Fourier slice theorem two projections of an unknown volume share only their common line,
so the rotation about that line is free: for two images ``p_a``, ``p_b`` taken at ``q_a = 1``
and ``q_b`` a rotation by ``angle`` about the volume's ``y`` axis (``y`` is then the common
direction of both images: row ``y`` of each is a projection of the volume's slice at ``y``), and
for any other angle ``φ'``, :func:`pair_impostor` builds a non-negative, compactly supported
volume whose projections at ``1`` and at the rotation by ``φ'`` about ``y`` are ``p_a`` and
``p_b`` again (angular reconstitution needs a third projection for this reason; van Heel 1987).

Slice by slice it is the product of the two rows, each constant along its own projection
direction: ``v(P) = p_a[y, t_a(P)] · p_b[y, t_b(P)] · |sin φ'| / Σ p_a[y]``, with ``t_a``,
``t_b`` the detector coordinates of ``P`` in the two views. Summed along either view's rays, one
factor is constant and the other sums to ``Σ p[y] / |sin φ'|`` (the rays cross the other view's
lines at that spacing), which needs the two rows to hold the same mass, as any two projections of
one volume about a common axis do.

So no function of an image pair, as a Siamese estimator is, can give the distance ``d_q`` of both
pairs: the labels differ (``angle`` against ``φ'``) on identical inputs. An estimator trained on
one protein knows that protein's volume, which decides between them; for a protein it has never
seen only a prior over volumes can. In general a pair does constrain ``d_q``: writing the
relative rotation as ``R_z(α) R_y(φ) R_z(β)``, the common line's directions in the two images fix
``α`` and ``β`` and leave ``φ`` free, so ``d_q`` can be anything from ``|α + β|`` (mod 2π, folded
to [0, π]) to π. Pairs rotated about an axis in the image plane (``α = β = 0``, the case built
here) leave the whole range free.

The construction is exact in the continuum; on a grid, the rows are interpolated linearly along
tilted rays, so images smooth at the pixel scale come back to about 1 % (the tests: 1-3 %).
"""

from __future__ import annotations

import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError

__all__ = ["pair_impostor", "rotation_about_y"]


def rotation_about_y(angle) -> np.ndarray:
    """The unit quaternion ``(x, y, z, w)`` of the rotation by ``angle`` (radians) about ``y``,
    shape (4,); its distance from the identity is ``|angle|`` for ``|angle| ≤ π``."""
    return rotations.axis_angle(np.array([[0.0, 1.0, 0.0]]), np.array([float(angle)]))[0]


def _row_values(rows, images, t):
    """Linear interpolation of ``images[row]`` at detector coordinate ``t`` (centre ``n // 2``,
    zero outside)."""
    n = images.shape[1]
    u = t + n // 2
    left = np.floor(u).astype(np.int64)
    w = u - left
    out = np.zeros(u.shape)
    for k, weight in ((left, 1.0 - w), (left + 1, w)):
        inside = (k >= 0) & (k < n)
        out[inside] += weight[inside] * images[rows[inside], k[inside]]
    return out


def _support_half_width(a, b, cos, sin, n) -> float:
    """How far from the centre (voxels, along x or z) the construction's support reaches: per row,
    the corners of the parallelogram ``t_a ∈ supp a[y]``, ``cos·x + sin·z ∈ supp b[y]``, where a
    support is the pixels above 0.1 % of the images' peak (a projector's ringing is not support)."""
    level = 1e-3 * max(float(a.max()), float(b.max()))
    reach = 0.0
    for row_a, row_b in zip(a, b):
        on_a, on_b = np.flatnonzero(row_a > level), np.flatnonzero(row_b > level)
        if not len(on_a) or not len(on_b):
            continue
        for x in (on_a[0] - 1 - n // 2, on_a[-1] + 1 - n // 2):  # linear interpolation reaches a pixel further
            for t in (on_b[0] - 1 - n // 2, on_b[-1] + 1 - n // 2):
                reach = max(reach, abs(x), abs((t - cos * x) / sin))
    return float(reach)


def pair_impostor(image_a, image_b, angle: float, box: int) -> np.ndarray:
    """A volume that projects to ``image_a`` at the identity and to ``image_b`` at the rotation by
    ``angle`` about ``y`` (see the module docstring).

    Parameters
    ----------
    image_a, image_b : array_like, shape (n, n)
        Two non-negative projections, indexed ``[y, x]`` as
        :func:`cryo_orient.tomography.projection.project` writes them, whose rows ``y`` hold the
        same mass (projections of one volume at the identity and at a rotation about ``y``).
        Not modified.
    angle : float
        The relative angle (radians) the volume is built for; ``0 < |angle| < π``.
    box : int
        The volume's side (voxels, centre at ``box // 2``); its ``y`` extent must cover the
        images' rows, and it must hold the support, slice by slice the parallelogram of the two
        rows' supports, which grows as ``1 / |sin angle|`` (too small a box is an error that says
        what would do).

    Returns
    -------
    ndarray, shape (box, box, box)
        The volume indexed ``[z, y, x]``, float64, non-negative.
    """
    a = np.asarray(image_a, dtype=np.float64)
    b = np.asarray(image_b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise InputError(f"need two square images of one size, got shapes {a.shape} and {b.shape}")
    angle = float(angle)
    if not np.isfinite(angle) or not 1e-3 < abs(np.sin(angle)):
        raise InputError(f"angle must be strictly between 0 and π in size (radians), got {angle!r}")
    n = a.shape[0]
    box = int(box)
    if box < n:
        raise InputError(f"box {box} is smaller than the images ({n} px); the volume's y extent must cover their rows")
    peak = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-300)
    for name, image in (("image_a", a), ("image_b", b)):
        if image.min() < -1e-2 * peak:  # a Fourier projector rings below 0 near sharp edges
            raise InputError(
                f"{name} has negative pixels (down to {image.min():.3g}, peak {peak:.3g}); the construction needs "
                "non-negative projections (of a non-negative volume)"
            )
    a, b = np.clip(a, 0.0, None), np.clip(b, 0.0, None)  # what is left below 0 is a projector's ringing
    mass_a, mass_b = a.sum(axis=1), b.sum(axis=1)
    scale = max(float(np.abs(mass_a).max()), 1e-300)
    if not np.allclose(mass_a, mass_b, rtol=1e-2, atol=1e-3 * scale):  # rows of ringing alone are not judged
        worst = int(np.argmax(np.abs(mass_a - mass_b)))
        raise InputError(
            f"row {worst} of the two images holds different mass ({mass_a[worst]:.6g} against {mass_b[worst]:.6g}); "
            "they are not two projections of one volume about the y axis"
        )
    R = rotations.quaternion_to_matrix(rotation_about_y(angle)[None])[0]
    cos, sin = R[0, 0], R[0, 2]  # the rotated view's detector x is cos·x + sin·z
    needed = _support_half_width(a, b, cos, sin, n)
    if needed > (box - 1) // 2:
        raise InputError(
            f"box {box} cannot hold the volume at {np.degrees(angle):.1f}°: its support reaches {needed:.1f} voxels "
            f"from the centre (the support grows as 1 / |sin angle|); use box ≥ {2 * int(np.ceil(needed)) + 2}"
        )
    r = np.arange(box) - box // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    rows = y + n // 2
    valid = (rows >= 0) & (rows < n)
    rows = np.clip(rows, 0, n - 1)
    points = np.stack([x, y, z]).reshape(3, -1).astype(np.float64)  # volume-frame (x, y, z)
    t_a = points[0]  # the identity's detector x
    t_b = (R @ points)[0]  # where the rotated view's ray through the point meets its detector
    empty = np.abs(mass_a) <= 1e-12 * scale  # non-negative rows: no mass means no signal
    mass = np.where(empty, np.inf, mass_a)
    values = _row_values(rows.ravel(), a, t_a) * _row_values(rows.ravel(), b, t_b)
    values *= abs(np.sin(angle)) / mass[rows.ravel()]
    return np.where(valid.ravel(), values, 0.0).reshape(box, box, box)
