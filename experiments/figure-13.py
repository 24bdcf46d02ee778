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
# The whole pipeline (`cryo_orient.workflow.pipeline`, with the profile's `[pipeline]` settings, as
# figures 10 and 11) on projections whose Euler angles, not orientations, are uniform: views crowd
# near the poles (θ2 near 0 and π). (a) L_OR over recovery steps with the histogram of the
# per-orientation errors after alignment (median and mean marked); (b) the FSC with the true map of
# reconstructions from the true, random, recovered-and-aligned, and gauge-free (common lines, no
# ground truth) orientations. The paper's panel (b) carried the resolution labels of its uniform
# case (12.2 / 7.6 Å) verbatim, so its values are unverified; ours are computed.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
dataset = "5j0n-full-euler"
pipeline = {}  # the profile's [pipeline] table (PipelineConfig's settings); {}: its defaults

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from cryo_orient.workflow import plots, records
from cryo_orient.workflow.pipeline import PipelineConfig, run_case, write_outputs

config = PipelineConfig.from_dict(pipeline)
path = Path(sim_dir) / f"{dataset}.h5"
case = run_case(path, config, cache_dir=cache_dir, progress=False)
write_outputs(case, path, Path("build") / profile / "pipeline" / dataset)
s = case["summary"]

# %%
fig, (ax, ax_fsc) = plt.subplots(1, 2, figsize=(13, 4.8))
plots.pipeline_case_panel(ax, case, f"(a) 5j0n, uniform Euler angles ({s['n_test']} test projections)")
shown = []
for name, label, style in (
    ("truth", "true orientations", dict(color="k")),
    ("random", "random orientations", dict(color="0.6")),
    ("recovered", "recovered (aligned to the truth)", dict(color="tab:blue")),
    ("gauge", "recovered, no ground truth (common lines)", dict(color="tab:purple", ls="-.")),
):
    curve = case["fsc"][name]
    shown.append(
        (
            f"{label}: {curve.resolution(0.5)[0]:.1f} / {curve.resolution(0.143)[0]:.1f} Å",
            curve.frequency,
            curve.correlation,
            style,
        )
    )
plots.fsc_curves(
    ax_fsc,
    shown,
    title="(b) FSC with the true map",
    legend_kw=dict(fontsize=8, title="resolution at 0.5 / 0.143", title_fontsize=8, loc="lower left"),
)
fig.tight_layout()
results = s
records.publish("figure-13", globals(), figure=fig, parameters=dict(pipeline=config.to_dict()), results=results)
