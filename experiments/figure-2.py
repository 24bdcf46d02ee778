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
# # Figure 2: the intuition, on real projections and real distances
#
# The paper's Figure 2 is a Keynote sketch: P ≈ 10⁵ projections whose orientations are unknown;
# estimate the distance d_q between the orientations of two projections from the projections
# (p_i, p_j) alone, then recover the orientations q from those distances. Here (a) shows
# `n_shown` projections of the simulated dataset `dataset` with the exact distances
# d_q(q_i, q_j) = `rotations.distance` between their orientations (what step 1 learns to estimate);
# (b) is the matrix of d_q over the first `n_recover` orientations; (c) shows that this matrix
# alone determines the orientations: `recovery.recover` run on it (no projection, no orientation
# given) returns orientations that match the true ones after the global alignment
# `alignment.align` (the recovered set is defined only up to a rotation and a reflection). The
# sphere shows viewing directions Rᵀe_z (true: rings, recovered: dots); the in-plane angle is in
# the error, not in the picture.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
dataset = "5j0n-half"
n_shown = 5
n_recover = 48
camera = [30.0, 35.0]  # azimuth and elevation of the view of the sphere, degrees
seed = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from cryo_orient.data.dataset import read_dataset
from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment, recovery
from cryo_orient.workflow import plots, records

data = read_dataset(Path(sim_dir) / f"{dataset}.h5")
q = data.quaternions[:n_recover]
images = data.images("standardized", np.arange(n_shown))
d_q = rotations.distance(q[:, None], q[None, :])
result = recovery.recover(d_q, len(q), rng=seed, restarts=3, progress=False)
aligned = alignment.align(q, result.quaternions)
print(alignment.summary(aligned))
# The recovered orientations reproduce the distances they were recovered from.
d_hat = rotations.distance(result.quaternions[:, None], result.quaternions[None, :])
fit_rms = float(np.sqrt(np.mean((d_hat - d_q) ** 2)))
assert aligned.mean_error < 0.05, aligned.mean_error

# %%
colors = plt.cm.tab10(np.arange(n_shown))
fig, axes = plt.subplots(1, 3, figsize=(17, 6), gridspec_kw=dict(width_ratios=[1.15, 1, 1], wspace=0.5))

# (a) the projections, with the distances between their orientations on the edges.
ax = axes[0]
angle = np.pi / 2 + 2 * np.pi * np.arange(n_shown) / n_shown
nodes = np.c_[np.cos(angle), np.sin(angle)]
for i in range(n_shown):
    for j in range(i + 1, n_shown):
        ax.plot(*np.c_[nodes[i], nodes[j]], color="0.6", lw=1, zorder=1)
        side = (j - i) % n_shown in (1, n_shown - 1)  # a side of the polygon: label outside it
        ax.text(
            *(nodes[i] + nodes[j]) / 2 * (1.15 if side else 1),
            f"{np.degrees(d_q[i, j]):.0f}°",
            fontsize=10,
            ha="center",
            va="center",
            zorder=3,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"),
        )
r = 0.3
for i, (x, y) in enumerate(nodes):
    plots.thumbnail(ax, images[i], x - r, y - r, 2 * r, edge=colors[i], lw=3, zorder=2)
    ax.text(x, y - r - 0.04, f"$\\mathbf{{p}}_{{{i + 1}}}$", ha="center", va="top", fontsize=13)
ax.set(xlim=(-1.4, 1.4), ylim=(-1.3, 1.4), aspect="equal")
ax.axis("off")
ax.set_title(
    f"(a) {n_shown} of the P projections of {dataset};\n"
    r"edges: $d_q(q_i, q_j)$ between their (unknown) orientations",
    fontsize=11,
)

# (b) the distance matrix.
ax = axes[1]
im = ax.imshow(np.degrees(d_q), cmap="viridis", vmin=0, vmax=180)
for i in range(n_shown):
    ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec=colors[i], lw=2))
ax.set_xlabel("j"), ax.set_ylabel("i", rotation=0)
colorbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=r"$d_q(q_i, q_j)$ (degrees)")
ax.set_title(f"(b) $d_q$ over P = {len(q)} orientations\n(first {n_shown} outlined)", fontsize=11)

# (c) the sphere of viewing directions: true and recovered (after the global alignment).
ax = axes[2]
az, el = np.radians(camera)
view = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
right = np.array([-np.sin(az), np.cos(az), 0.0])
up = np.cross(view, right)
s = np.linspace(0, 2 * np.pi, 200)
ax.plot(np.cos(s), np.sin(s), color="0.3", lw=1)
equator = np.c_[np.cos(s), np.sin(s), 0 * s]
front = equator @ view >= 0
for part, style in ((front, "-"), (~front, ":")):
    ax.plot(
        np.where(part, equator @ right, np.nan), np.where(part, equator @ up, np.nan), color="0.6", lw=0.8, ls=style
    )
for vec, name in ((np.eye(3)[2], "$x_3$"),):
    ax.annotate("", (vec @ right * 1.25, vec @ up * 1.25), (0, 0), arrowprops=dict(arrowstyle="-|>", color="0.3"))
    ax.text(vec @ right * 1.25, vec @ up * 1.3, name, ha="center", va="bottom", fontsize=12)
true_dir = rotations.viewing_direction(q)
rec_dir = rotations.viewing_direction(aligned.aligned)
ring = float(np.clip(3000 / len(q), 12, 70))  # marker area: smaller when there are many
for dirs, kw in ((true_dir, dict(s=ring, facecolors="none", lw=1)), (rec_dir, dict(s=ring / 6, lw=0, zorder=3))):
    back = dirs @ view < 0  # on the far side of the sphere: paler
    color = (
        np.where(back[:, None], [[0.8, 0.8, 0.8, 1]], [[0.35, 0.35, 0.35, 1]])
        if "facecolors" in kw
        else np.where(back[:, None], [[1, 0.7, 0.7, 1]], [[0.84, 0.15, 0.16, 1]])
    )
    ax.scatter(dirs @ right, dirs @ up, **({"edgecolors": color} if "facecolors" in kw else {"c": color}), **kw)
for i in range(n_shown):
    ax.scatter(true_dir[i] @ right, true_dir[i] @ up, s=170, facecolors="none", edgecolors=colors[i], lw=2.5, zorder=4)
ax.set(xlim=(-1.35, 1.35), ylim=(-1.75, 1.45), aspect="equal")
ax.axis("off")
ax.set_title(
    f"(c) orientations recovered from $d_q$ alone\nmean error {aligned.mean_error_deg:.2g}° after global alignment",
    fontsize=11,
)
ax.legend(
    handles=[
        Line2D([], [], ls="", marker="o", ms=8, mfc="none", mec="0.35"),
        Line2D([], [], ls="", marker="o", ms=4, color="tab:red"),
    ],
    labels=["true viewing direction", "recovered (far side paler)"],
    loc="lower center",
    ncol=1,
    frameon=False,
    fontsize=10,
)

# The two steps, as arrows between the panels (in figure coordinates, from the drawn extents).
fig.canvas.draw()
to_fig = fig.transFigure.inverted()
for (a, b), text in (
    ((axes[0], axes[1]), "estimate $d_q$\nfrom $(\\mathbf{p}_i, \\mathbf{p}_j)$"),
    ((colorbar.ax, axes[2]), "recover $q$\nfrom $d_q$"),
):
    x0 = a.get_tightbbox().transformed(to_fig).x1 + 0.01
    x1 = b.get_tightbbox().transformed(to_fig).x0 - 0.01
    plots.arrow(
        fig,
        (x0, 0.5),
        (x1, 0.5),
        text,
        transform=fig.transFigure,
        text_offset=0.03,
        text_kw=dict(color="tab:blue"),
        mutation_scale=22,
        lw=2,
        color="tab:blue",
    )

results = {
    "shown_d_q_rad": d_q[:n_shown, :n_shown],
    "shown_euler_rad": data.euler[:n_shown],
    "recovery_steps": result.steps,
    "recovery_stop_reason": result.stop_reason,
    "distance_fit_rms_rad": fit_rms,
    "alignment": alignment.summary(aligned),
}
records.publish("figure-2", globals(), figure=fig, results=results)
