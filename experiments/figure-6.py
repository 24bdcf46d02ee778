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
# # Figure 6: example projections of 5j0n
#
# (a) P x, (b) P x + n, (c) S_t P x, (d) S_t P x + n, with n ~ N(0, σ² I). The four panels are the
# same projection (index `index`) of four simulated datasets that share their seed, hence their
# orientations (and the two shifted ones their shifts): they differ only by noise and shift.
# Images are shown as stored, i.e. after the paper's global standardisation of each dataset.
# The paper's panels show projection 0, whose angles its generator forced to (0, 0, 0); ours
# are drawn like every other orientation.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
datasets = ["5j0n-half", "5j0n-half-noise16", "5j0n-half-shift", "5j0n-half-shift-noise16"]
index = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient.data.dataset import read_dataset
from cryo_orient.workflow import records

panels, results = [], {}
for letter, name in zip("abcd", datasets):
    data = read_dataset(Path(sim_dir) / f"{name}.h5")
    attrs, config = data.metadata, data.config
    image = data.images("standardized", [index])[0]
    noise = float(attrs["noise_variance"])
    snr_db = 10 * np.log10(attrs["signal_variance"] / noise) if noise > 0 else None
    shift = data.shifts[index]
    results[name] = {
        "euler": data.euler[index].tolist(),
        "quaternion": data.quaternions[index].tolist(),
        "noise_variance": noise,
        "clean_signal_variance": float(attrs["signal_variance"]),
        "snr_db": snr_db,
        "shift_mode": config["shift_mode"],
        "shift_limit": config["shift_limit"],
        "shift_dy_dx": shift.tolist(),
        "seed": config["seed"],
    }
    parts = ["$P x$"]
    if config["shift_mode"] != "none":
        parts[0] = "$S_t P x$"
    if noise > 0:
        parts.append("$n$")
    title = f"({letter}) " + " + ".join(parts)
    detail = []
    if noise > 0:
        detail.append(f"σ²={noise:g} ({snr_db:.1f} dB)")
    if config["shift_mode"] != "none":
        detail.append(f"T={config['shift_limit']:g} px, t=({shift[0]:g}, {shift[1]:g})")
    panels.append((title, "\n".join(detail), image))

# All four share the orientation: the simulation's random streams are split by purpose.
q0 = results[datasets[0]]["quaternion"]
assert all(np.allclose(r["quaternion"], q0) for r in results.values())

fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
for ax, (title, detail, image) in zip(axes, panels):
    ax.imshow(image, cmap="gray", origin="upper")
    ax.set_title(title + ("\n" + detail if detail else "\n"), fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
theta = np.degrees(results[datasets[0]]["euler"])
fig.suptitle(f"5j0n projection {index}: (θ3, θ2, θ1) = ({theta[0]:.0f}°, {theta[1]:.0f}°, {theta[2]:.0f}°)")
fig.tight_layout()

records.publish("figure-6", globals(), figure=fig, results=results)
