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
# # Figure 15: recovered orientations before and after alignment
#
# Orientations recovered from distances are defined only up to the O(4) transform that leaves
# every distance unchanged (left and right quaternion multiplication, and conjugation). Before
# alignment they look nothing like the truth; after `cryo_orient.orientation.alignment.align` (spectral
# initialisation, sign-aware Procrustes and geodesic refinement, both handedness) they coincide.
# Shown for the Figure 14 run: true (green) and recovered (red) viewing directions, and the
# histograms of the per-orientation error d_q(q_i, T q̂_i), with mean and median.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
mode = "faithful"
n_shown = 1000

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment
from cryo_orient.workflow import records

out = Path(out_dir)
saved = np.load(out / "figure-14.npz")
if f"q_recovered_{mode}" not in saved:
    raise ValueError(f"figure-14.npz has no run in mode {mode!r}; it has {list(saved['modes'])}")
q_true, q_rec = saved["q_true"], saved[f"q_recovered_{mode}"]
result = alignment.align(q_true, q_rec)
stages = [("before alignment", q_rec, result.errors_before), ("after alignment", result.aligned, result.errors)]

# %%
fig = plt.figure(figsize=(12, 9))
for col, (name, q, errors) in enumerate(stages):
    ax = fig.add_subplot(2, 2, col + 1, projection="3d")
    ax.scatter(*rotations.viewing_direction(q_true[:n_shown]).T, s=2, color="tab:green", label="true")
    ax.scatter(*rotations.viewing_direction(q[:n_shown]).T, s=2, color="tab:red", alpha=0.6, label="recovered")
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xticks=[], yticks=[], zticks=[], title=f"directions, {name}")
    ax.set_box_aspect((1, 1, 1))
    ax.legend(fontsize=8, loc="upper left")
    ax = fig.add_subplot(2, 2, col + 3)
    ax.hist(errors, bins=60, color="tab:red", alpha=0.8)
    ax.axvline(np.mean(errors), color="k", label=f"mean {np.mean(errors):.3g} rad")
    ax.axvline(np.median(errors), color="k", ls="--", label=f"median {np.median(errors):.3g} rad")
    ax.set(xlabel="$d_q(q_i, T\\hat q_i)$ (rad)", ylabel="orientations", title=f"errors, {name}")
    ax.legend(fontsize=8)
fig.suptitle(
    f"{len(q_true):,} orientations recovered from exact distances ({mode} settings); "
    f"{'reflected (det T = -1)' if result.reflected else 'det T = +1'}"
)
fig.tight_layout()
results = alignment.summary(result)
records.publish("figure-15", globals(), figure=fig, results=results)
