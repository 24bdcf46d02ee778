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
# # Figure 8: distance learning
#
# (a) The training loss (Keras' running mean over each epoch) and the validation MAE per epoch of
# the Siamese distance estimator; (b) the estimated distance d̂_p against the true d_q on 1,000
# random pairs of *test* projections, for 5j0n (SO(3)-uniform, full coverage) and the second
# protein (SO(3)-uniform, "quarter" coverage θ1 ∈ [0, 0.4π]). Noiseless projections, as the paper.
#
# All L_DE numbers are MAE, as every number the paper plotted (its Eq. 3 is a squared error, its
# code trained with MAE). The validation MAE is over a fixed 1 % of the validation split's ordered
# pairs. Models are cached in `siamese/` of the profile's cache folder (`cache_dir`,
# `build/<profile>/cache/`) and reused by later figures.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
datasets = ["5j0n-full-so3", "ribosome-quarter-so3"]
labels = ["5j0n", "70S ribosome (stand-in for 5a1a)"]
input_size = 29
n_features = 512
feature_distance = "cosine"
loss = "mae"
regime = "batch"
batch_size = 32
epochs = 2
learning_rate = 0.001
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

cache = Path(cache_dir) / "siamese"
config = siamese.TrainingConfig(
    input_size=input_size,
    n_features=n_features,
    feature_distance=feature_distance,
    loss=loss,
    regime=regime,
    batch_size=batch_size,
    epochs=epochs,
    learning_rate=learning_rate,
    seed=seed,
)
if len(labels) != len(datasets):
    raise ValueError(f"need one label per dataset, got {len(labels)} labels for {len(datasets)} datasets")

runs = {}
for name in datasets:
    data = read_dataset(Path(sim_dir) / f"{name}.h5")
    estimator = siamese.SiameseEstimator(config).fit(data, cache_dir=cache)
    result = estimator.result
    test = data.split("test")
    rng = np.random.default_rng([seed, 8])
    pairs = rng.choice(test.n, size=(n_test_pairs, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    features = estimator.embed(test)
    d_p = siamese.feature_distances(features[pairs[:, 0]], features[pairs[:, 1]], feature_distance)
    q = test.quaternions
    d_q = rotations.distance(q[pairs[:, 0]], q[pairs[:, 1]])
    err = d_p - d_q
    runs[name] = {
        "history": result.history,
        "d_p": d_p,
        "d_q": d_q,
        "results": {
            "epochs": result.epochs,
            "training_seconds": result.seconds,
            "stop_reason": result.stop_reason,
            "final_train_loss": result.history["loss"][-1],
            "final_val_mae": result.history["val_mae"][-1],
            "best_val_mae": result.best_val_mae,
            "test_pairs": int(len(pairs)),
            "test_mae": float(np.mean(np.abs(err))),
            "test_rms": float(np.sqrt(np.mean(err**2))),
            "test_mae_of_median_predictor": float(np.mean(np.abs(d_q - np.median(d_q)))),
            "run_dir": str(result.out_dir),
        },
    }
    r = runs[name]["results"]
    print(
        f"{name}: {r['epochs']} epochs in {r['training_seconds']:.0f} s; train {r['final_train_loss']:.3f}, "
        f"val {r['final_val_mae']:.3f}, test MAE {r['test_mae']:.3f} (RMS {r['test_rms']:.3f}; "
        f"a constant guess gives {r['test_mae_of_median_predictor']:.3f})"
    )

# %%
fig, axes = plt.subplots(2, len(datasets), figsize=(5.2 * len(datasets), 9), squeeze=False)
for col, (name, label) in enumerate(zip(datasets, labels)):
    run = runs[name]
    h, r = run["history"], run["results"]
    ax = axes[0, col]
    ax.plot(h["epoch"], h["loss"], "--", color="tab:green", label="training")
    ax.plot(h["epoch"], h["val_mae"], color="tab:orange", label="validation")
    ax.axhline(r["test_mae_of_median_predictor"], color="0.6", lw=0.8, ls=":", label="constant guess (test pairs)")
    ax.set(xlabel="epoch", ylabel="L_DE (MAE, rad)", title=f"(a) {label}")
    ax.text(
        0.97,
        0.95,
        f"train {r['final_train_loss']:.3f}\nval {r['final_val_mae']:.3f}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        bbox=dict(boxstyle="round", fc="white", ec="0.7"),
    )
    ax.legend(loc="center right", fontsize=8)
    ax = axes[1, col]
    ax.hexbin(run["d_q"], run["d_p"], gridsize=40, extent=(0, np.pi, 0, np.pi), mincnt=1, cmap="viridis")
    ax.plot([0, np.pi], [0, np.pi], color="k", lw=0.8)
    ax.set(
        xlabel="d_q (true, rad)",
        ylabel="d̂_p (estimated, rad)",
        xlim=(0, np.pi),
        ylim=(0, np.pi),
        aspect="equal",
        title=f"(b) {r['test_pairs']} test pairs",
    )
    ax.text(
        0.03,
        0.97,
        f"MAE {r['test_mae']:.3f}\nRMS {r['test_rms']:.3f}",
        transform=ax.transAxes,
        va="top",
        bbox=dict(boxstyle="round", fc="white", ec="0.7"),
    )
fig.suptitle(f"Distance learning ({regime} regime, {input_size}×{input_size} px, {config.epochs} epochs max)")
fig.tight_layout()
results = {name: run["results"] | {"history": run["history"]} for name, run in runs.items()}
records.publish("figure-8", globals(), figure=fig, parameters=dict(training=config.to_dict()), results=results)
