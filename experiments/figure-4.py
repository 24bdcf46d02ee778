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
# # Figure 4: learning the distance, one training pair drawn from the model
#
# The paper's Figure 4 is a Keynote schematic: from a synthetic training set {(p_p, q_p)} a pair of
# projections goes through two sister CNNs with the same weights G_w; a distance between their
# features gives d̂_p(p_i, p_j), and the loss compares it with d_q(q_i, q_j) from the known
# orientations. Here the thumbnails are the projections `pair` of the simulated dataset `dataset`;
# the layer boxes are the convolution outputs of the model that `siamese.build_model(input_size,
# n_features)` builds (height ∝ log of the spatial size, width ∝ log of the channels, as in
# Fig. 18); f_i and f_j are the features that this model, at its initial weights (seed `seed`,
# untrained), computes from the two projections; d̂_p is its output, checked against
# `siamese.feature_distances` of those features; d_q is `rotations.distance(q_i, q_j)`; and the loss
# is the paper's per-pair |d̂_p − d_q| (L_DE averages it over pairs) for these untrained weights.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
dataset = "5j0n-full-so3"
pair = [0, 1]
input_size = 116
n_features = 512
seed = 0

# %%
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from cryo_orient.data.dataset import read_dataset
from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations
from cryo_orient.workflow import plots, records

ds = read_dataset(Path(sim_dir) / f"{dataset}.h5")
i, j = pair
images = ds.images("standardized", [i, j])
if images.shape[-1] != input_size:
    images = siamese.resize_images(images, input_size)
keras.utils.set_random_seed(seed)
model = siamese.build_model(input_size, n_features)
table = siamese.layer_table(model)
features = siamese.embed(model, images, progress=False)
d_p = float(siamese.predict_pairs(model, images[:1], images[1:])[0])
assert np.isclose(d_p, siamese.feature_distances(features[:1], features[1:], siamese.head_kind(model))[0], atol=1e-5)
d_q = float(rotations.distance(ds.quaternions[i], ds.quaternions[j]))
loss = abs(d_p - d_q)
print(f"d_p = {d_p:.4f}, d_q = {d_q:.4f}, |d_p - d_q| = {loss:.4f}")

# %%
fig, ax = plt.subplots(figsize=(19, 7))
BLUE = plots.BLUE


def arrow(a, b):
    plots.arrow(ax, a, b)


# The training set, and the pair drawn from it.
for k, img in enumerate(ds.images("standardized", np.arange(5, -1, -1))):  # projections 5, 4, ..., 0
    o = 0.17 * k
    plots.thumbnail(ax, img, 0.1 + o, 2.55 - o, 1.4, edge=None, zorder=2 + k)
plots.box(ax, 0, 1.05, 2.65, 3.55, boxstyle="round,pad=0.05,rounding_size=0.2", fc="none", ec="0.7", lw=2)
ax.text(1.32, 4.75, "training dataset", ha="center", fontsize=13)
ax.text(1.32, 1.2, rf"$\{{(\mathbf{{p}}_p, q_p)\}}_{{p=1}}^{{{ds.n}}}$" + f"\n{dataset}", ha="center", fontsize=11)
Y = {"i": 4.2, "j": 1.8}
ax.plot([2.75, 3.05, 3.05], [3.0, 3.0, Y["i"]], color="k", lw=1.5)
ax.plot([3.05, 3.05], [3.0, Y["j"]], color="k", lw=1.5)
for tag, k, image in (("i", i, images[0]), ("j", j, images[1])):
    y = Y[tag]
    arrow((3.05, y), (3.5, y))
    plots.thumbnail(ax, image, 3.55, y - 0.65, 1.3, edge=None)
    angles = np.degrees(ds.euler[k])
    ax.text(4.2, y + 0.72, rf"$\mathbf{{p}}_{tag}$ (projection {k})", ha="center", va="bottom", fontsize=12)
    ax.text(
        4.2,
        y - 0.72,
        rf"$q_{tag}$: ($\theta_3, \theta_2, \theta_1$) = " + "\n(" + ", ".join(f"{a:.0f}°" for a in angles) + ")",
        ha="center",
        va="top",
        fontsize=9.5,
    )

# The two sister CNNs: the conv outputs of the built model, one box per block.
convs = [row for row in table if row["type"] == "Conv2D"]
x0 = 5.6
for tag in ("i", "j"):
    x = x0
    for row in convs:
        s, c = row["output_shape"][0], row["output_shape"][-1]
        w, h = 0.07 * np.log2(c), 0.3 + 0.17 * np.log2(s)
        plots.cuboid(ax, x, Y[tag], w, h, "#f7c67f")
        x += w + 0.42
    cnn_end = x - 0.2
    arrow((4.9, Y[tag]), (x0 - 0.05, Y[tag]))
    ax.text(
        (x0 + cnn_end) / 2,
        Y[tag] + (1.15 if tag == "i" else -1.1),
        rf"sister CNN $G_w(\mathbf{{p}}_{tag})$",
        ha="center",
        va="center",
        fontsize=12,
    )
    # The feature vector actually computed, as a column of n_f values.
    ax.imshow(
        features[0 if tag == "i" else 1][:, None],
        cmap="magma",
        aspect="auto",
        extent=(cnn_end + 0.6, cnn_end + 0.85, Y[tag] - 0.8, Y[tag] + 0.8),
        zorder=3,
    )
    ax.add_patch(Rectangle((cnn_end + 0.6, Y[tag] - 0.8), 0.25, 1.6, fill=False, ec="0.3"))
    arrow((cnn_end, Y[tag]), (cnn_end + 0.55, Y[tag]))
    ax.text(
        cnn_end + 0.72,
        Y[tag] + 0.88,
        rf"$\mathbf{{f}}_{tag} \in \mathbb{{R}}^{{{n_features}}}$",
        ha="center",
        va="bottom",
        fontsize=12,
    )
ax.annotate(
    "", (x0 + 1.2, Y["i"] - 0.8), (x0 + 1.2, Y["j"] + 0.85), arrowprops=dict(arrowstyle="<|-|>", ls=":", color="0.3")
)
ax.text(
    x0 + 1.35,
    3.0,
    f"same network, shared weights $w$\n({int(model.count_params()):,} of them; {len(convs)} conv blocks)",
    fontsize=10,
    style="italic",
    va="center",
)

# The head, the Siamese box, the loss.
hx = cnn_end + 1.3
plots.box(ax, hx, 2.1, 2.6, 1.8, fc="0.88", ec="none")
ax.text(hx + 1.3, 3.5, "feature distance", ha="center", fontsize=12)
ax.text(hx + 1.3, 2.95, r"$d_f = 2\arccos\cos(\mathbf{f}_i, \mathbf{f}_j)$", ha="center", fontsize=12)
ax.text(hx + 1.3, 2.4, rf"$\widehat{{d}}_p$ = {d_p:.3f} rad", ha="center", fontsize=12)
for tag in ("i", "j"):
    arrow((cnn_end + 0.9, Y[tag]), (hx - 0.05, 3.0 + 0.5 * (1 if tag == "i" else -1)))
plots.box(
    ax,
    x0 - 0.35,
    0.35,
    hx + 3.3 - x0,
    5.4,
    boxstyle="round,pad=0,rounding_size=0.6",
    fc="none",
    lw=3,
    title=r"Siamese neural network as $\widehat{d}_p$" + f" (untrained, seed {seed})",
    title_pad=0.1,
    title_x=(x0 + hx + 2.95) / 2,
    title_kw=dict(fontsize=14, fontweight="bold", ha="center"),
)
lx = hx + 3.9
arrow((hx + 2.65, 3.0), (lx - 0.05, 3.0))
plots.box(ax, lx, 2.1, 2.4, 1.8, fc="0.88", ec="none")
ax.text(lx + 1.2, 3.5, "loss", ha="center", fontsize=12)
ax.text(lx + 1.2, 2.95, r"$|\widehat{d}_p - d_q|$", ha="center", fontsize=13)
ax.text(lx + 1.2, 2.4, f"= {loss:.3f} rad", ha="center", fontsize=12)
arrow((lx + 2.45, 3.0), (lx + 3.1, 3.0))
ax.text(lx + 3.15, 3.0, r"$L_{DE}$" + "\n(mean over pairs)", va="center", fontsize=11)
# d_q from the orientations of the pair.
ax.plot([1.32, 1.32, lx + 1.2], [0.75, -0.3, -0.3], color="k", lw=1.5)
arrow((lx + 1.2, -0.3), (lx + 1.2, 2.05))
ax.text(7.5, -0.23, rf"$d_q(q_i, q_j)$ = {d_q:.3f} rad, from the known orientations", fontsize=12, va="bottom")
ax.set(xlim=(-0.2, lx + 4.6), ylim=(-0.5, 6.4), aspect="equal")
ax.axis("off")
fig.tight_layout()

results = {
    "d_p_untrained": d_p,
    "d_q": d_q,
    "abs_error": loss,
    "head": siamese.head_kind(model),
    "parameters": int(model.count_params()),
    "conv_output_shapes": [row["output_shape"] for row in convs],
    "euler_pair_rad": ds.euler[[i, j]],
    "feature_norms": np.linalg.norm(features, axis=1),
}
records.publish("figure-4", globals(), figure=fig, results=results)
