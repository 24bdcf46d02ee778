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
# # Figure 17: design choices of the distance estimator (5j0n)
#
# (a) The feature distance of the Siamese head: the paper's cosine angle `2 arccos(cos(f_i, f_j))`
# against the Euclidean `‖f_i − f_j‖`, and (beyond the paper) the squared head
# `2 arccos √cos(f_i, f_j)`, which can represent d_q on a full in-plane loop (see the coverage
# figure); (b) the length of the feature vector n_f ∈ {4, …, 512}.
# Boxes: the distribution over epochs of the per-epoch training loss and validation MAE, as the
# paper; insets: d̂_p against d_q on 1,000 test pairs for a few of the models. Every model has the
# same data, split, seed and training settings; only the studied choice changes.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
dataset = "5j0n-half"
n_features_list = [4, 8, 16, 32, 64, 128, 256, 512]
inset_n_features = [4, 32, 512]
feature_distances = ["cosine", "euclidean", "squared_cosine"]
input_size = 29
regime = "batch"
batch_size = 32
epochs = 2
n_test_pairs = 1000
seed = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient.data.dataset import read_dataset
from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations
from cryo_orient.workflow import records
from cryo_orient.workflow.plots import head_label

cache = Path(cache_dir) / "siamese"
data = read_dataset(Path(sim_dir) / f"{dataset}.h5")
test = data.split("test")
rng = np.random.default_rng([seed, 17])
pairs = rng.choice(test.n, size=(n_test_pairs, 2))
pairs = pairs[pairs[:, 0] != pairs[:, 1]]
q = test.quaternions
d_q = rotations.distance(q[pairs[:, 0]], q[pairs[:, 1]])


def run(n_features, kind):
    config = siamese.TrainingConfig(
        input_size=input_size,
        n_features=n_features,
        feature_distance=kind,
        regime=regime,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
    )
    estimator = siamese.SiameseEstimator(config).fit(data, cache_dir=cache)
    result = estimator.result
    features = estimator.embed(test)
    d_p = siamese.feature_distances(features[pairs[:, 0]], features[pairs[:, 1]], kind)
    summary = {
        "n_features": n_features,
        "feature_distance": kind,
        "epochs": result.epochs,
        "training_seconds": result.seconds,
        "median_train_loss": float(np.median(result.history["loss"])),
        "median_val_mae": float(np.median(result.history["val_mae"])),
        "final_val_mae": result.history["val_mae"][-1],
        "test_mae": float(np.mean(np.abs(d_p - d_q))),
    }
    print(
        f"n_f {n_features:>3}, {kind:9}: median train {summary['median_train_loss']:.3f}, "
        f"median val {summary['median_val_mae']:.3f}, final val {summary['final_val_mae']:.3f}, "
        f"test MAE {summary['test_mae']:.3f}"
    )
    return {"history": result.history, "d_p": d_p, "summary": summary}


head_runs = {kind: run(512, kind) for kind in feature_distances}
nf_runs = {
    nf: (head_runs["cosine"] if nf == 512 and "cosine" in head_runs else run(nf, "cosine")) for nf in n_features_list
}


# %%
def boxes(ax, runs, labels):
    x = np.arange(len(runs))
    b1 = ax.boxplot(
        [r["history"]["loss"] for r in runs], positions=x - 0.18, widths=0.3, patch_artist=True, showfliers=False
    )
    b2 = ax.boxplot(
        [r["history"]["val_mae"] for r in runs], positions=x + 0.18, widths=0.3, patch_artist=True, showfliers=False
    )
    for box in b1["boxes"]:
        box.set_facecolor("tab:green")
    for box in b2["boxes"]:
        box.set_facecolor("tab:orange")
    for k, r in enumerate(runs):
        s = r["summary"]
        ax.text(
            k,
            0.97,
            f"{s['median_train_loss']:.2f}\n{s['median_val_mae']:.2f}",
            ha="center",
            va="top",
            fontsize=7.5,
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xticks(x, labels)
    ax.set_ylabel("L_DE over epochs (MAE, rad)")
    top = max(max(r["history"]["loss"] + r["history"]["val_mae"]) for r in runs)
    ax.set_ylim(0, top * 1.25)
    return b1["boxes"][0], b2["boxes"][0]


shown = [("cosine, n_f = 512", head_runs["cosine"])] if "cosine" in head_runs else []
shown += [(f"{kind}, n_f = 512", r) for kind, r in head_runs.items() if kind != "cosine"]
shown += [(f"cosine, n_f = {nf}", nf_runs[nf]) for nf in inset_n_features if nf in nf_runs and nf != 512]
fig = plt.figure(figsize=(15, 9))
grid = fig.add_gridspec(2, max(len(shown), 3), height_ratios=[1.4, 1])
ax_a = fig.add_subplot(grid[0, :1])
ax_b = fig.add_subplot(grid[0, 1:])
handles = boxes(ax_a, list(head_runs.values()), [head_label(kind, short=True) for kind in head_runs])
ax_a.set_title("(a) feature distance d_f (n_f = 512)")
boxes(ax_b, list(nf_runs.values()), [str(nf) for nf in nf_runs])
ax_b.set_xlabel("n_f (length of the feature vector)")
ax_b.set_title("(b) feature-vector length (cosine head)")
ax_b.legend(handles, ["training", "validation"], loc="center right")
for k, (title, r) in enumerate(shown):
    ax = fig.add_subplot(grid[1, k])
    top = max(np.pi, float(np.max(r["d_p"])))
    ax.hexbin(d_q, r["d_p"], gridsize=30, extent=(0, np.pi, 0, top), mincnt=1, cmap="viridis")
    ax.plot([0, np.pi], [0, np.pi], "k", lw=0.7)
    ax.set(
        xlabel="d_q (rad)",
        ylabel="d̂_p" if k == 0 else None,
        xlim=(0, np.pi),
        ylim=(0, top),
        title=f"{title}: test MAE {r['summary']['test_mae']:.3f}",
    )
    ax.title.set_fontsize(9)
fig.suptitle(
    f"{dataset}: {input_size}×{input_size} px, {epochs} epochs, {regime} regime (numbers in the boxes' "
    f"panels: median training / validation L_DE over epochs; bottom: {len(d_q)} test pairs)"
)
fig.tight_layout()
results = {
    "feature_distance": {k: r["summary"] for k, r in head_runs.items()},
    "n_features": {str(nf): r["summary"] for nf, r in nf_runs.items()},
}
records.publish("figure-17", globals(), figure=fig, results=results)
