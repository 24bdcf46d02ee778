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
# # Figure 3: the method in two steps, with real data in every box
#
# The paper's Figure 3 is a Keynote schematic: projections with unknown orientations → step 1, a
# Siamese network estimates the distances d̂_p(p_i, p_j) → step 2, orientation recovery minimises
# Σ |d̂_p − d_q(q̂_i, q̂_j)|² → recovered orientations (then, in the paper's pipeline, alignment for
# evaluation and reconstruction). Here the thumbnails are projections of the simulated dataset
# `dataset` (noisy), the network box states the size of `siamese.build_model(input_size,
# n_features)`, and the distance matrix is d_q over the first `n_matrix` orientations. The drawing
# trains no network: step 2 is run (`recovery.recover`) on the exact d_q of the first `n_recover`
# orientations, which is what a perfect step 1 would give; the recovered q̂ are then aligned to the
# truth (`alignment.align`) and the map is reconstructed from the clean projections at the aligned
# q̂ (`reconstruct.reconstruct`); the last box shows the sum of that map along x3 and its
# correlation with the true map. With a trained network, its d̂_p replaces the exact d_q (Figs 8, 10).

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
dataset = "5j0n-half-noise16"
n_matrix = 8
n_recover = 48
input_size = 116
n_features = 512
iterations = 30
seed = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import data
from cryo_orient.data.dataset import read_dataset
from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation import alignment, recovery
from cryo_orient.tomography import reconstruct
from cryo_orient.workflow import plots, records

ds = read_dataset(Path(sim_dir) / f"{dataset}.h5")
q = ds.quaternions[:n_recover]
d_q = rotations.distance(q[:, None], q[None, :])
n_weights = int(siamese.build_model(input_size, n_features).count_params())
result = recovery.recover(d_q, len(q), rng=seed, restarts=3, progress=False)
aligned = alignment.align(q, result.quaternions)
truth = data.load(ds.config["volume"], progress=False)[0].astype(np.float64)
clean = ds.images("clean", np.arange(len(q)))
rec = reconstruct.reconstruct(clean, aligned.aligned, truth.shape, backend="nufft", iterations=iterations)
corr = volumes.correlation(rec.volume, truth)
print(f"{n_weights:,} weights; E_OR {aligned.mean_error_deg:.2g} deg; correlation {corr:.3f}")

# %%
fig, ax = plt.subplots(figsize=(18, 7.6))


def box(x, y, w, h, title, bold):
    plots.box(ax, x, y, w, h, title=rf"$\bf{{{bold}}}$: {title}")


def thumb(image, x, y, s=1.1, zorder=3):
    plots.thumbnail(ax, image, x, y, s, zorder=zorder, frame_zorder=3)


def arrow(a, b, text=None):
    plots.arrow(ax, a, b, text)


def stack(images, x, y, labels, marks):
    for k, (image, label) in enumerate(zip(images, labels)):
        thumb(image, x + 0.35 * k, y - 0.35 * k, zorder=3 + k)
        if label:
            ax.text(
                x + 0.35 * k + 1.55,
                y - 0.35 * k + 0.5,
                f"← ($\\mathbf{{p}}_{{{label}}}$, {marks(label)})",
                fontsize=12,
                va="center",
            )


# Row 1: inputs, step 1, its output.
P = ds.n
shown = ds.images("standardized", [3, 2, 1, 0])  # projections 3, 2, 1, 0
labels = ["P", "i", None, "1"]
box(0, 4.4, 4.4, 2.4, "acquired projections", "Inputs")
stack(shown, 0.25, 5.5, labels, lambda k: "?")
ax.text(4.3, 6.7, f"P = {P:,}\n({dataset})", ha="right", va="top", fontsize=10, color="0.3")
arrow((4.5, 5.6), (5.3, 5.6))
box(5.4, 4.4, 6.8, 2.4, "estimate distances", r"Step\ 1")
thumb(shown[3], 5.65, 5.65, s=1.0)
thumb(shown[2], 5.65, 4.55, s=1.0)
arrow((6.8, 6.2), (8.0, 6.2), r"$\{\mathbf{p}_i\}$")
arrow((6.8, 5.1), (8.0, 5.1), r"$\{\mathbf{p}_j\}$")
plots.box(ax, 8.1, 4.7, 3.8, 1.8, boxstyle="round,pad=0.05,rounding_size=0.3", fc="0.85", ec="0.3", lw=1)
ax.text(10.0, 6.15, "Siamese neural network", ha="center", fontsize=13)
ax.text(10.0, 5.7, f"shared CNN $G_w$: {n_weights:,} weights", ha="center", fontsize=10.5, style="italic")
ax.text(10.0, 5.1, r"$\widehat{d}_p = 2\arccos\cos(G_w(\mathbf{p}_i), G_w(\mathbf{p}_j))$", ha="center", fontsize=12)
arrow((12.3, 5.6), (13.1, 5.6))
box(13.2, 4.4, 4.6, 2.4, "distances", "Intermediate")
m = ax.imshow(
    np.degrees(d_q[:n_matrix, :n_matrix]), cmap="viridis", vmin=0, vmax=180, extent=(13.4, 15.4, 4.6, 6.6), zorder=3
)
ax.text(
    15.55,
    6.3,
    rf"$d_q(q_i, q_j)$, $i, j \leq {n_matrix}$" + "\n(exact: what a perfect\n"
    r"$\widehat{d}_p$ returns)",
    fontsize=10,
    va="top",
)
cax = ax.inset_axes((15.6, 5.05, 1.9, 0.18), transform=ax.transData)
fig.colorbar(m, cax=cax, orientation="horizontal", ticks=[0, 90, 180]).set_label("degrees", fontsize=9)

# From row 1 to row 2.
ax.plot([17.85, 18.05, 18.05, -0.45, -0.45], [5.6, 5.6, 3.45, 3.45, 1.4], color="k", lw=1.5)
arrow((-0.45, 1.4), (-0.05, 1.4))

# Row 2: step 2, its output, alignment and reconstruction.
box(0, 0.2, 7.2, 2.4, "recover orientations", r"Step\ 2")
plots.box(ax, 0.25, 0.95, 6.7, 1.2, fc="0.92", ec="none")
ax.text(
    3.6,
    1.55,
    r"$\{\widehat{q}_i\} = \arg\min_{\{q_k \in \mathbb{S}^3\}} \sum_{i,j}"
    r"\left|\widehat{d}_p(\mathbf{p}_i, \mathbf{p}_j) - d_q(q_i, q_j)\right|^2$",
    ha="center",
    va="center",
    fontsize=15,
)
ax.text(
    3.6,
    0.45,
    f"run here on the exact $d_q$ of {len(q)} orientations: {result.steps} steps, "
    f"final loss {result.losses[-1]:.1e} rad²",
    ha="center",
    fontsize=10,
    color="0.3",
)
arrow((7.3, 1.4), (8.1, 1.4))
box(8.2, 0.2, 4.4, 2.4, "recovered orientations", "Outputs")
stack(shown, 8.45, 1.3, labels, lambda k: f"$\\widehat{{q}}_{{{k}}}$")
arrow((12.7, 1.4), (13.5, 1.4))
box(13.6, 0.2, 4.2, 2.4, "alignment, reconstruction", "Then")
ax.imshow(rec.volume.sum(axis=0), cmap="gray", origin="lower", extent=(13.8, 15.6, 0.4, 2.2), zorder=3)
ax.text(
    15.75,
    2.2,
    f"mean error after\nalignment: {aligned.mean_error_deg:.2g}°\n\nmap from {len(q)} clean\n"
    f"projections at $\\widehat{{q}}$,\nsummed along $x_3$;\ncorrelation with\nthe true map: {corr:.3f}",
    fontsize=10,
    va="top",
)
ax.set(xlim=(-0.7, 18.1), ylim=(0, 7.4), aspect="equal")
ax.axis("off")
fig.tight_layout()

results = {
    "siamese_weights": n_weights,
    "d_q_shown_rad": d_q[:n_matrix, :n_matrix],
    "recovery_steps": result.steps,
    "recovery_final_loss": float(result.losses[-1]),
    "alignment": alignment.summary(aligned),
    "map_correlation": corr,
    "n_projections_in_dataset": P,
}
records.publish("figure-3", globals(), figure=fig, results=results)
