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
# # Figure 12: the four orientation samplings
#
# (a) viewing directions on the sphere, (b) distribution of the distance d_q between random
# pairs, (c) Euler angles (θ3, θ2, θ1), (d) quaternion components. The four samplings of the paper
# (its code's coverage values, which differ from its text: 0.4π, not π/2):
# SO(3)-uniform over all of SO(3) (the paper's `uniform_S2` with AngCoverage [2, 1, 2]),
# Euler-uniform [2, 1, 2] (`uniform_angles`), the "half" set, Euler-uniform [2, 0.4, 2], and the
# "quarter, half in-plane" set, SO(3)-uniform restricted to [1, 0.4, 1].
#
# Our quaternions are those of R = Rz(θ3) Ry(θ2) Rz(θ1) (see `cryo_orient.geometry.rotations`); the paper's
# were those of C Rᵀ C with C = Rx(π), which is (−x, y, z, w) of ours: the x histogram is mirrored,
# the others and every distance are the same.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
n_orientations = 5000
n_pairs = 10000
n_shown = 2000
seed = 0
samplings = [
    ["SO(3)-uniform [2, 1, 2]", "uniform_so3", [2.0, 1.0, 2.0]],
    ["Euler-uniform [2, 1, 2]", "uniform_euler", [2.0, 1.0, 2.0]],
    ["half: Euler-uniform [2, 0.4, 2]", "uniform_euler", [2.0, 0.4, 2.0]],
    ["quarter: SO(3)-uniform [1, 0.4, 1]", "uniform_so3", [1.0, 0.4, 1.0]],
]

# %%

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient.geometry import rotations
from cryo_orient.workflow import records

colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
streams = np.random.SeedSequence(seed).spawn(len(samplings))
sets, stats = [], {}
for (label, method, coverage), ss in zip(samplings, streams):
    rng = np.random.default_rng(ss)
    q = rotations.sample_orientations(n_orientations, method, coverage, rng=rng)
    i, j = rng.integers(0, n_orientations, size=(2, n_pairs))
    d = rotations.distance(q[i], q[j])
    euler = rotations.quaternion_to_euler(q)
    sets.append((label, q, d, euler))
    stats[label] = {
        "method": method,
        "coverage": coverage,
        "d_q_mean": float(d.mean()),
        "d_q_median": float(np.median(d)),
        "d_q_max": float(d.max()),
        "euler_max": euler.max(axis=0).tolist(),
        "d_q_histogram": np.histogram(d, bins=32, range=(0, np.pi))[0].tolist(),
    }

# %%
fig = plt.figure(figsize=(16, 12))
grid = fig.add_gridspec(3, 4, height_ratios=[1.2, 1, 1])
for k, ((label, q, d, euler), color) in enumerate(zip(sets, colors)):
    ax = fig.add_subplot(grid[0, k], projection="3d")
    v = rotations.viewing_direction(q[:n_shown])
    ax.scatter(*v.T, s=1, color=color)
    ax.set_box_aspect((1, 1, 1))
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xticks=[], yticks=[], zticks=[])
    ax.set_title(f"(a) {label}", fontsize=9)

ax = fig.add_subplot(grid[1, 0])
for (label, q, d, euler), color in zip(sets, colors):
    ax.hist(d, bins=50, range=(0, np.pi), histtype="step", color=color, label=label, density=True)
ax.set(xlabel="$d_q$ (rad)", ylabel="density", title=f"(b) $d_q$ of {n_pairs:,} random pairs")
ax.legend(fontsize=7)
for k, name in enumerate(["θ3 (in-plane)", "θ2 (tilt)", "θ1 (azimuth)"]):
    ax = fig.add_subplot(grid[1, k + 1])
    top = np.pi if k == 1 else 2 * np.pi
    for (label, q, d, euler), color in zip(sets, colors):
        ax.hist(euler[:, k], bins=50, range=(0, top), histtype="step", color=color, density=True)
    ax.set(xlabel=f"{name} (rad)", title=f"(c) {name}")
for k, name in enumerate(["x", "y", "z", "w"]):
    ax = fig.add_subplot(grid[2, k])
    for (label, q, d, euler), color in zip(sets, colors):
        ax.hist(q[:, k], bins=50, range=(-1, 1), histtype="step", color=color, density=True)
    ax.set(xlabel=f"quaternion {name}", title=f"(d) component {name}")
fig.suptitle(f"Orientation samplings, {n_orientations:,} each (seed {seed})")
fig.tight_layout(rect=(0, 0, 1, 0.97))

results = stats
records.publish("figure-12", globals(), figure=fig, results=results)
