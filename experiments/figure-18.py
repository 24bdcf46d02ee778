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
# # Figure 18: the Siamese CNN, drawn from the model
#
# The distance estimator d̂_p(p_i, p_j) = d_f(G_w(p_i), G_w(p_j)): two branches that share one
# encoder G_w (the same weights), each a stack of seven blocks of a "same" convolution with ReLU
# and a 2×2 max pooling (32/64/128/256/256/512/n_f filters, kernels 7/5/3/3/3/3/3), then a pooling
# to the feature vector f ∈ ℝ^{n_f}; the head is d_f = 2 arccos(cos(f_i, f_j)).
#
# The paper drew its Fig. 18 by hand with PlotNeuralNet. Here every box, shape and parameter count
# comes from the Keras model that `cryo_orient.estimation.siamese.build_model(input_size, n_features)` builds
# (through `siamese.layer_table`), so the figure cannot drift from the code. Boxes: the height
# grows with the log of the spatial size, the width with the log of the number of channels; the
# conv output is orange, the max-pooled output red. The paper's code pooled the last 1×1 map with
# `AvgPool2D(8)` and a squeeze; ours is a global average pooling, identical at 116 px.
# At 116 px and n_f = 512 the model has 4,551,936 parameters, the paper's count.
# The layer table is also written as `figure-18.md`.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
input_size = 116
n_features = 512

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from cryo_orient import artifacts
from cryo_orient.estimation import siamese
from cryo_orient.workflow import plots, records

model = siamese.build_model(input_size, n_features)
table = siamese.layer_table(model)
total = int(model.count_params())
head = siamese.head_kind(model)
if (input_size, n_features) == (116, 512):
    assert total == siamese.PAPER_PARAMETER_COUNT == 4_551_936, total
assert sum(row["parameters"] for row in table) == total  # the head has no weights

# Blocks: (conv row, pool row) pairs, in order; the input and the global pooling around them.
rows = {row["name"]: row for row in table}
blocks = [(rows[f"conv{k}"], rows[f"pool{k}"]) for k in range(1, len(table)) if f"conv{k}" in rows]
input_row = next(row for row in table if row["type"] == "InputLayer")
pool_row = table[-1]


encoder = siamese.encoder_of(model)
pool_size = {
    row["name"]: "×".join(map(str, encoder.get_layer(row["name"]).pool_size))
    for row in table
    if row["type"] == "MaxPooling2D"
}


def shape_text(shape):
    return "×".join(str(s) for s in shape)


# %%
def height(spatial):
    return 0.45 + 0.3 * np.log2(max(spatial, 1))


def width(channels):
    return 0.1 * np.log2(max(channels, 2))


def cuboid(ax, x, yc, w, h, color):
    """A layer box (:func:`cryo_orient.workflow.plots.cuboid`); returns its right and top extents."""
    return plots.top_right(plots.cuboid(ax, x, yc, w, h, color))


def arrow(ax, start, end):
    plots.arrow(ax, start, end, mutation_scale=10, lw=1, color="0.3", shrinkA=1, shrinkB=1, zorder=2)


CONV, POOL, INPUT, FEATURE = "#f7c67f", "#e0604f", "0.8", "#8fb8de"
Y = 3.0  # the two branches sit at ±Y; the shared layers are annotated between them
GAP, SPACING = 0.6, 2.2  # least gap between boxes; least distance between block centres (their notes)


def block_width(conv, pool):
    """Extent of a conv box and its pool box, faces in perspective included (see `plots.cuboid`)."""
    return (
        width(conv["output_shape"][-1])
        + 0.2 * height(conv["output_shape"][0])
        + 0.05
        + 0.14
        + 0.2 * height(pool["output_shape"][0])
    )


# One layout for both branches: left edges of the blocks, then of the feature vector.
lefts, centres = [], []
x = 0.06 + 0.2 * height(input_row["output_shape"][0]) + GAP
for conv, pool in blocks:
    bw = block_width(conv, pool)
    if centres and x + bw / 2 - centres[-1] < SPACING:
        x = centres[-1] + SPACING - bw / 2
    lefts.append(x)
    centres.append(x + bw / 2)
    x += bw + GAP
pool_x = max(x, centres[-1] + SPACING)
feature_x = pool_x + 0.5 + GAP

fig, ax = plt.subplots(figsize=(19, 7.2))
branch_ends = {}
for sign, tag in ((1, "i"), (-1, "j")):
    yc = sign * Y
    h = height(input_row["output_shape"][0])
    right, _ = cuboid(ax, 0.0, yc, 0.06, h, INPUT)
    ax.text(-0.15, yc, rf"$\mathbf{{p}}_{tag}$", ha="right", va="center", fontsize=15)
    ax.text(
        0.1,
        yc + sign * (h / 2 + 0.45) + (0.2 if sign > 0 else 0.0),
        shape_text(input_row["output_shape"]),
        ha="center",
        va="bottom" if sign > 0 else "top",
        fontsize=9,
    )
    for (conv, pool), left in zip(blocks, lefts):
        arrow(ax, (right, yc), (left, yc))
        sc, sp = conv["output_shape"][0], pool["output_shape"][0]
        right_c, top_c = cuboid(ax, left, yc, width(conv["output_shape"][-1]), height(sc), CONV)
        right, _ = cuboid(ax, right_c + 0.05, yc, 0.14, height(sp), POOL)
        label_y = yc + (top_c - yc + 0.15 if sign > 0 else -(height(sc) / 2 + 0.25))
        ax.text(
            (left + right) / 2,
            label_y,
            shape_text(conv["output_shape"]),
            ha="center",
            va="bottom" if sign > 0 else "top",
            fontsize=9,
        )
    arrow(ax, (right, yc), (feature_x, yc))
    right_f, _ = cuboid(ax, feature_x, yc, 0.2, 1.8, FEATURE)
    ax.text(
        right_f + 0.15,
        yc,
        rf"$\mathbf{{f}}_{tag} \in \mathbb{{R}}^{{{n_features}}}$",
        ha="left",
        va="center",
        fontsize=14,
    )
    branch_ends[tag] = (right_f + 1.75, yc)

# Between the branches: what each block is, once, since both branches use the same weights.
for (conv, pool), xc in zip(blocks, centres):
    hc = height(conv["output_shape"][0])
    # From under the upper box to the top face of the lower one (see `cuboid`).
    ax.plot([xc, xc], [-Y + hc / 2 + 0.12 * hc + 0.1, Y - hc / 2 - 0.1], ls=(0, (3, 3)), color="0.55", lw=0.9, zorder=1)
    kh, kw = conv["kernel"]
    text = (
        f"{kh}×{kw} conv, {conv['filters']} filters\n{pool_size[pool['name']]} max pool\n"
        f"→ {shape_text(pool['output_shape'])}\n{conv['parameters']:,} params"
    )
    ax.text(
        xc,
        0,
        text,
        ha="center",
        va="center",
        fontsize=8.5,
        zorder=4,
        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.75"),
    )
ax.plot([pool_x, pool_x], [-Y + 0.5, Y - 0.5], ls=(0, (3, 3)), color="0.55", lw=0.9, zorder=1)
ax.text(
    pool_x,
    0,
    f"global average\npooling\n→ {shape_text(pool_row['output_shape'])}\n0 params",
    ha="center",
    va="center",
    fontsize=8.5,
    zorder=4,
    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.75"),
)

# The head.
hx = branch_ends["i"][0] + 0.4
formula = (
    r"$\widehat{d}_p = 2\,\arccos\,\cos(\mathbf{f}_i, \mathbf{f}_j)$"
    if head == "cosine"
    else r"$\widehat{d}_p = \|\mathbf{f}_i - \mathbf{f}_j\|_2$"
)
plots.box(ax, hx, -0.75, 3.4, 1.5, boxstyle="round,pad=0.1", fc="#e8f0e0", ec="0.35", lw=1, zorder=3)
ax.text(hx + 1.7, 0.25, "distance head (0 params)", ha="center", va="center", fontsize=9.5)
ax.text(hx + 1.7, -0.25, formula, ha="center", va="center", fontsize=13)
for tag in ("i", "j"):
    x0, y0 = branch_ends[tag]
    plots.arrow(
        ax,
        (x0 - 0.2, y0),
        (hx + 1.0, 0.95 * np.sign(y0)),
        connectionstyle="arc3,rad=0",
        mutation_scale=12,
        lw=1.2,
        color="0.3",
        zorder=2,
    )
ax.text(-0.45, 0, "shared\nweights\n$G_w$", ha="center", va="center", fontsize=11, style="italic", color="0.3")

ax.legend(
    handles=[
        Patch(fc=INPUT, ec="0.25", label="input projection"),
        Patch(fc=CONV, ec="0.25", label="convolution + ReLU output"),
        Patch(fc=POOL, ec="0.25", label="max-pooling output"),
        Patch(fc=FEATURE, ec="0.25", label="feature vector"),
    ],
    loc="lower right",
    fontsize=9,
    frameon=False,
    title="box height ∝ log(spatial size), width ∝ log(channels)",
    title_fontsize=8.5,
)
ax.set_xlim(-1.0, hx + 3.8)
ax.set_ylim(-Y - 2.1, Y + 2.3)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title(
    f"Siamese CNN for {input_size}×{input_size} projections, $n_f$ = {n_features}: "
    f"two branches sharing one encoder $G_w$, {total:,} parameters in all",
    fontsize=13,
)
fig.tight_layout()

# %%
lines = [
    f"# Figure 18: encoder G_w of the Siamese model ({input_size}×{input_size} input, n_f = {n_features})",
    "",
    f"Built by `cryo_orient.estimation.siamese.build_model({input_size}, {n_features})`; "
    "both branches use this one encoder. "
    f"Head: `{head}` feature distance, no weights.",
    "",
    "| layer | type | kernel | filters | output shape | parameters |",
    "|---|---|---|---|---|---:|",
]
for row in table:
    kernel = "×".join(map(str, row["kernel"])) if row["kernel"] else pool_size.get(row["name"], "–")
    lines.append(
        f"| {row['name']} | {row['type']} | {kernel} | {row['filters'] or '–'} | "
        f"{shape_text(row['output_shape'])} | {row['parameters']:,} |"
    )
lines.append(f"| distance | FeatureDistance ({head}) | – | – | scalar | 0 |")
lines.append(f"| **total** | | | | | **{total:,}** |")
markdown = "\n".join(lines) + "\n"
print(markdown)

out = Path(out_dir)
artifacts.save_text(markdown, out / "figure-18.md")
results = {
    "total_parameters": total,
    "paper_parameters": siamese.PAPER_PARAMETER_COUNT,
    "matches_paper": total == siamese.PAPER_PARAMETER_COUNT,
    "head": head,
    "layers": table,
}
records.publish("figure-18", globals(), figure=fig, outputs=["figure-18.png", "figure-18.md"], results=results)
