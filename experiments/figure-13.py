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
# # Figure 13: non-uniform orientation sampling (uniform Euler angles), 5j0n, noiseless
#
# The whole pipeline (`cryo_orient.workflow.pipeline`, as figures 10 and 11) on projections whose Euler
# angles, not orientations, are uniform: views crowd near the poles (θ2 near 0 and π). (a) L_OR
# over recovery steps with the histogram of the per-orientation errors after alignment (median
# and mean marked); (b) the FSC with the true map of reconstructions from the true, random,
# recovered-and-aligned, and gauge-free (common lines, no ground truth) orientations. The paper's
# panel (b) carried the resolution labels of its uniform case (12.2 / 7.6 Å) verbatim, so its
# values are unverified; ours are computed.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
dataset = "5j0n-full-euler"
input_size = 16
n_features = 32
regime = "batch"
batch_size = 8
epochs = 2
fresh_noise = True
recovery_restarts = 3
recovery_max_steps = 20000
reconstruction_iterations = 5
reconstruction_backend = "nufft"
gauge_images = 400
gauge_pairs = 500
gauge_candidates = 200
seed = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts

from cryo_orient.workflow import pipeline

out = Path(out_dir)
config = pipeline.PipelineConfig(
    training=dict(input_size=input_size, n_features=n_features, regime=regime, batch_size=batch_size,
                  epochs=epochs, seed=seed),
    fresh_noise=fresh_noise, recovery_restarts=recovery_restarts, recovery_max_steps=recovery_max_steps,
    reconstruction_iterations=reconstruction_iterations, reconstruction_backend=reconstruction_backend,
    gauge_images=gauge_images, gauge_pairs=gauge_pairs,
    gauge_candidates=gauge_candidates, seed=seed)
path = Path(sim_dir) / f"{dataset}.h5"
case = pipeline.run_case(path, config, cache_dir=Path("build") / profile / "cache", progress=False)
pipeline.write_outputs(case, path, Path("build") / profile / "pipeline" / dataset)
s = case["summary"]

# %%
fig, (ax, ax_fsc) = plt.subplots(1, 2, figsize=(13, 4.8))
ax.plot(np.arange(1, len(case["losses"]) + 1), case["losses"], color="tab:blue", lw=0.8)
ax.axhline(s["L_at_true_orientations"], color="tab:blue", ls=":", lw=1, label="L_OR at the true orientations")
ax.set(xlabel="recovery step", ylabel="L_OR", yscale="log", title=f"(a) 5j0n, uniform Euler angles ({s['n_test']} test projections)")
ax.legend(loc="upper right", fontsize=8)
ax.text(0.03, 0.04, f"L_DE train {s['estimator']['final_train_loss']:.3f}, val {s['estimator']['final_val_mae']:.3f}\n"
        f"L_OR {s['L_OR']:.4g}\nE_OR median {s['E_OR_median']:.3f}, mean {s['E_OR_mean']:.3f} rad",
        transform=ax.transAxes, fontsize=8, va="bottom", bbox=dict(boxstyle="round", fc="white", ec="0.7"))
inset = ax.inset_axes([0.55, 0.38, 0.42, 0.38])
inset.hist(case["errors"], bins=40, color="tab:red", alpha=0.8)
inset.axvline(s["E_OR_median"], color="k", lw=1.2, label="median")
inset.axvline(s["E_OR_mean"], color="k", lw=1.2, ls="--", label="mean")
inset.set_xlabel("d_q(q_i, T q̂_i) (rad)", fontsize=7)
inset.tick_params(labelsize=7)
inset.legend(fontsize=6)
for name, label, style in (("truth", "true orientations", dict(color="k")),
                           ("random", "random orientations", dict(color="0.6")),
                           ("recovered", "recovered (aligned to the truth)", dict(color="tab:blue")),
                           ("gauge", "recovered, no ground truth (common lines)", dict(color="tab:purple", ls="-."))):
    curve = case["fsc"][name]
    ax_fsc.plot(curve.frequency, curve.correlation, lw=1.2,
                label=f"{label}: {curve.resolution(0.5)[0]:.1f} / {curve.resolution(0.143)[0]:.1f} Å", **style)
for threshold in (0.5, 0.143):
    ax_fsc.axhline(threshold, color="0.5", lw=0.6, ls=":")
ax_fsc.set(xlabel="spatial frequency (1/Å)", ylabel="FSC", ylim=(-0.1, 1.02), title="(b) FSC with the true map")
ax_fsc.legend(fontsize=8, title="resolution at 0.5 / 0.143", title_fontsize=8, loc="lower left")
fig.tight_layout()
artifacts.save_figure(fig, out / "figure-13.png")
artifacts.write_record(
    out, "figure-13", outputs=["figure-13.png"],
    parameters=dict(profile=profile, dataset=dataset, pipeline=config.to_dict()),
    results=s,
)
