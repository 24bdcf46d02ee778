# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 1: the imaging geometry, drawn from the projection convention itself
#
# The paper's Figure 1 is a Keynote drawing. Here every element is computed by `cryo_orient` and
# drawn in 2-D through a fixed orthographic camera (azimuth, elevation `camera`), back to front:
# the density x (5j0n, an isosurface at `iso_fraction` of its maximum, shaded) sits at the origin of
# the volume frame (x1, x2, x3) = (x, y, z). For θ = (θ3, θ2, θ1) (`rotations.euler_to_quaternion`,
# R = Rz(θ3) Ry(θ2) Rz(θ1)) the rays run along Rᵀe_z (red, through the detector centre), the
# detector axes are y1 = Rᵀe_x and y2 = Rᵀe_y, and the image on the detector is
# `projection.project(x, q)`, p(y1, y2) = ∫ x(Rᵀ(y1, y2, z)) dz, placed pixel by pixel where it
# belongs in 3-D.
#
# One difference from the paper's drawing: there θ1 is the azimuth of the ray from x1. In the
# convention of the paper's code (and ours) the ray has polar angle θ2 and azimuth π − θ1, so θ1 is
# drawn as the angle from the ray's foot to −x1 (dashed). θ3 turns the detector in its plane: it is
# the angle, clockwise seen from the ray, from y1 at θ3 = 0 (dotted) to y1. The checks below assert
# all of this on the drawn orientation and record their values.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
volume = "5j0n"
theta = [0.6, 0.8, 1.05]  # (theta3, theta2, theta1) in radians
camera = [60.0, 30.0]  # azimuth and elevation of the viewer, degrees
iso_fraction = 0.2
distance = 1.2  # detector centre from the origin, in detector sides

# %%

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.transforms import Affine2D
from skimage import measure

from cryo_orient import data
from cryo_orient.geometry import rotations
from cryo_orient.tomography import projection
from cryo_orient.workflow import records

vol = data.load(volume, progress=False)[0].astype(np.float64)
t3, t2, t1 = theta
q = rotations.euler_to_quaternion(np.asarray(theta))[None]
R = rotations.quaternion_to_matrix(q)[0]
ray, y1, y2 = R[2], R[0], R[1]  # Rᵀe_z, Rᵀe_x, Rᵀe_y: the rows of R
R0 = rotations.euler_to_matrix(np.array([0.0, t2, t1]))  # the same direction at θ3 = 0
image = projection.project(vol, q, backend="nufft")[0]
size = image.shape[0]
half = size // 2

# The centre of mass of x, projected on (y1, y2), must land on the image's centre of mass.
centre = np.array(vol.shape) // 2
grids = np.meshgrid(*[np.arange(n) - c for n, c in zip(vol.shape, centre)], indexing="ij")
com_xyz = np.array([(vol * g).sum() for g in grids[::-1]]) / vol.sum()
yy, xx = np.meshgrid(np.arange(size) - half, np.arange(size) - half, indexing="ij")
com_image = np.array([(image * xx).sum(), (image * yy).sum()]) / image.sum()
reference = projection.project_real_space(vol, q, size)[0]
checks = {
    "ray_minus_viewing_direction": float(np.abs(ray - rotations.viewing_direction(q)[0]).max()),
    "ray_polar_angle": float(np.arccos(ray[2])),
    "theta2": t2,
    "ray_azimuth": float(np.mod(np.arctan2(ray[1], ray[0]), 2 * np.pi)),
    "pi_minus_theta1": float(np.mod(np.pi - t1, 2 * np.pi)),
    "y1_cross_y2_minus_ray": float(np.abs(np.cross(y1, y2) - ray).max()),
    "in_plane_angle_y1_from_reference": float(np.mod(np.arctan2(-y1 @ R0[1], y1 @ R0[0]), 2 * np.pi)),
    "theta3": t3,
    "com_volume_on_detector": [float(com_xyz @ y1), float(com_xyz @ y2)],
    "com_image": com_image.tolist(),
    "correlation_with_real_space_projector": float(np.corrcoef(image.ravel(), reference.ravel())[0, 1]),
}
print(checks)
assert checks["ray_minus_viewing_direction"] < 1e-12
assert np.isclose(checks["ray_polar_angle"], t2) and np.isclose(checks["ray_azimuth"], checks["pi_minus_theta1"])
assert checks["y1_cross_y2_minus_ray"] < 1e-12
assert np.isclose(checks["in_plane_angle_y1_from_reference"], np.mod(t3, 2 * np.pi))
assert np.allclose(checks["com_volume_on_detector"], com_image, atol=0.05)
assert checks["correlation_with_real_space_projector"] > 0.99

# %%
az, el = np.radians(camera)
view = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])  # towards the viewer
right = np.array([-np.sin(az), np.cos(az), 0.0])
up = np.cross(view, right)
assert ray @ view > 0, "the camera must see the detector's front"


def page(points):
    """3-D points (..., 3) to page coordinates (..., 2) of the orthographic camera."""
    return np.stack([points @ right, points @ up], axis=-1)


def line(ax, a, b, **kw):
    ax.plot(*page(np.array([a, b])).T, solid_capstyle="round", **kw)


def arc(ax, u, v, angle, radius, about=np.zeros(3), n=60, at=0.5, **kw):
    """Arc about the point `about` from direction u towards v (orthonormal) over `angle`; returns its point at `at`."""
    s = np.linspace(0, angle, n)[:, None]
    pts = about + radius * (np.cos(s) * u + np.sin(s) * v)
    ax.plot(*page(pts).T, **kw)
    return pts[round(at * (n - 1))]


fig, ax = plt.subplots(figsize=(9, 9))
L, D = 0.75 * size, distance * size
det = D * ray
e1, e2, e3 = np.eye(3)

# The density: isosurface triangles painted back to front, Lambert-shaded.
verts, faces, _, _ = measure.marching_cubes(vol, iso_fraction * vol.max(), step_size=1)
verts = (verts - centre)[:, ::-1]  # (z, y, x) indices to (x, y, z) about the centre voxel
tri = verts[faces]
normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
light = view + 0.6 * up - 0.3 * right
shade = 0.35 + 0.6 * np.abs(normal @ (light / np.linalg.norm(light)))
order = np.argsort(tri.mean(1) @ view)
ax.add_collection(
    PolyCollection(page(tri[order]), facecolors=plt.cm.gray(0.25 + 0.6 * shade[order]), edgecolors="none", zorder=2)
)
extent = np.abs(verts).max()  # beyond this radius a line is in front of (or beside) the density

# Volume axes and −x1: behind the density up to `extent`, in front beyond it.
for e, name in zip((e1, e2, e3), ("x_1", "x_2", "x_3")):
    line(ax, 0 * e, extent * e, color="k", lw=1.4, zorder=1)
    ax.annotate(
        "",
        page(1.08 * L * e),
        page(extent * e),
        zorder=3,
        arrowprops=dict(arrowstyle="-|>", color="k", lw=1.4, mutation_scale=16),
    )
    ax.text(*page(1.14 * L * e), f"${name}$", fontsize=17, ha="center", va="center")
line(ax, 0 * e1, -0.5 * L * e1, color="0.35", lw=1, ls=(0, (4, 3)), zorder=1)
ax.text(*page(-0.5 * L * e1 + 0.03 * size * e3), "$-x_1$", fontsize=13, color="0.3", ha="left", va="bottom", zorder=6)

# Parallel rays through the density to the detector, and the ray θ through the origin.
for a in np.linspace(-0.36, 0.36, 5) * size:
    for b in (-0.3 * size, 0.3 * size):
        start = a * y1 + b * y2 - 0.55 * size * ray
        line(ax, start, start + (0.55 * size + extent) * ray, color="0.6", lw=0.6, zorder=1)
        line(ax, start + (0.55 * size + extent) * ray, start + (0.55 * size + D) * ray, color="0.6", lw=0.6, zorder=3)
line(ax, 0 * ray, extent * ray, color="tab:red", lw=2.5, zorder=1)
line(ax, extent * ray, det, color="tab:red", lw=2.5, zorder=3)
ax.text(*page(0.5 * D * ray + 0.08 * size * e3), r"$\theta$", color="tab:red", fontsize=20, ha="center", zorder=6)

# The foot of the ray, the sphere of directions (equator and the meridian through the ray), the angles.
foot = np.array([ray[0], ray[1], 0.0]) / np.hypot(ray[0], ray[1])
line(ax, 0 * foot, D * np.sin(t2) * foot, color="tab:red", lw=1.3, ls=(0, (3, 2)), zorder=3)
line(ax, D * np.sin(t2) * foot, det, color="tab:red", lw=1.3, ls=(0, (3, 2)), zorder=3)
arc(ax, e1, e2, 2 * np.pi, D, n=200, color="0.55", lw=0.8, ls=(0, (5, 4)), zorder=1)
arc(ax, e3, foot, np.pi / 2, D, color="0.55", lw=0.8, ls=(0, (5, 4)), zorder=1)
mid = arc(ax, e3, foot, t2, 0.55 * L, color="tab:blue", lw=1.8, zorder=3)
ax.text(*page(1.15 * mid), r"$\theta_2$", color="tab:blue", fontsize=17, ha="center", va="center")
mid = arc(ax, foot, np.cross(e3, foot), t1, 0.45 * L, at=0.25, color="tab:green", lw=1.8, zorder=3)
ax.text(*page(1.12 * mid), r"$\theta_1$", color="tab:green", fontsize=17, ha="left", va="top")

# The detector: the computed projection, pixel (x, y) drawn at det + x y1 + y y2.
frame = det + half * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) @ np.array([y1, y2])
ax.fill(*page(frame).T, fc="white", ec="none", alpha=0.55, zorder=4)
M = np.array([[y1 @ right, y2 @ right, det @ right], [y1 @ up, y2 @ up, det @ up], [0, 0, 1]])
ax.imshow(
    image,
    cmap="Greys",
    origin="lower",
    extent=(-half - 0.5, size - half - 0.5) * 2,
    alpha=0.9,
    transform=Affine2D(M) + ax.transData,
    interpolation="bilinear",
    zorder=4,
)
ax.fill(*page(frame).T, fc="none", ec="steelblue", lw=1.5, zorder=5)
for axis, name in ((y1, "y_1"), (y2, "y_2")):
    ax.annotate(
        "",
        page(det + 0.36 * size * axis),
        page(det),
        zorder=6,
        arrowprops=dict(arrowstyle="-|>", color="k", lw=1.6, mutation_scale=16),
    )
    ax.text(*page(det + 0.43 * size * axis), f"${name}$", fontsize=17, ha="center", va="center", zorder=6)
line(ax, det, det + 0.4 * size * R0[0], color="k", lw=1.2, ls=":", zorder=6)
mid = arc(ax, R0[0], -R0[1], t3, 0.22 * size, about=det, color="tab:purple", lw=1.8, zorder=6)
ax.text(
    *page(det + 1.45 * (mid - det)), r"$\theta_3$", color="tab:purple", fontsize=17, ha="center", va="center", zorder=6
)
ax.text(*page(det - 0.32 * size * y1 + 0.3 * size * y2), r"$\mathbf{p}$", fontsize=20, ha="center", zorder=6)
ax.text(*page(-0.3 * size * e2 + 0.22 * size * e3), r"$\mathbf{x}$", fontsize=20, ha="center", zorder=6)

ax.set_aspect("equal")
ax.autoscale_view()
ax.axis("off")
ax.set_title(
    rf"$\theta = (\theta_3, \theta_2, \theta_1)$ = ({t3:.2f}, {t2:.2f}, {t1:.2f}) rad; "
    rf"the detector shows project({volume}, q)",
    fontsize=12,
)
fig.tight_layout()

results = {
    "checks": checks,
    "quaternion_xyzw": q[0],
    "ray": ray,
    "detector_y1": y1,
    "detector_y2": y2,
    "detector_size": size,
    "n_triangles": len(faces),
}
records.publish("figure-1", globals(), figure=fig, results=results)
