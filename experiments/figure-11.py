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
# # Figure 11: reconstructions and their Fourier shell correlation with the true map
#
# Per protein (rows), volumes reconstructed from the test projections with (a) the true
# orientations, (b) random orientations (uniform Euler angles in the dataset's box, the paper's
# baseline), (c) the orientations recovered from noiseless projections and (d) from noisy ones,
# both aligned to the truth as the paper did, and (e) beyond the paper, **without ground truth**:
# the recovered orientations (noisy case) with their gauge chosen by common-line consistency
# (`cryo_orient.orientation.gauge`), reconstructed from the noisy images a user would have. Each volume is
# shown as its projections along z, y and x on the true map's grid; the gauge-free volume is first
# placed on the true map by a rigid motion (rotation, possibly a mirror: both are physical), found
# from the orientations and polished on the map. With the `refine` parameter, (f), also beyond the
# paper: (e)'s orientations refined against their own gold-standard half maps, from the noisy
# images, with no reference and no ground truth (`PipelineConfig.refine`,
# `cryo_orient.orientation.refine`), reconstructed with the refined shifts and placed on the map as
# (e); its FSC is also drawn for the refined orientations aligned to the truth and reconstructed in
# the map's frame, as (d) (dashed green): placing a volume by a rigid motion interpolates it, which
# costs resolution that the true orientations' map, never moved, does not pay. Last column: the
# FSC with the true map, with the resolutions at 0.5 (the paper's headline numbers) and 0.143.
#
# As in the paper, (a)–(d) are reconstructed from the *noiseless* test projections; the table
# (`figure-11.csv`) adds every orientation set reconstructed from the noisy projections too.
# Reconstruction: CG on the normal equations with the NUFFT projector
# (`cryo_orient.tomography.reconstruct`), `reconstruction_iterations` iterations of the `pipeline`
# parameter (the profile's `[pipeline]`, as figure 10's; the paper: 100 CGLS iterations with ASTRA),
# in the detector's cube; FSC in one-voxel shells on the true map's grid, no mask (the paper used
# the EMDB FSC server against the original map). No post-processing: the paper set negative voxels
# to 0 and rescaled to the map's maximum before its FSC (the rescaling leaves an FSC unchanged).
# Volumes and RELION STAR files of each case are in `build/<profile>/pipeline/<case>/`. The 70S
# ribosome's map (the cpu profile's stand-in for 5a1a) has no voxel size in its header; 1 Å is
# assumed, so its resolutions are in voxels.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
proteins = ["5j0n", "70S ribosome (stand-in for 5a1a)"]
noiseless_datasets = ["5j0n-full-so3", "ribosome-quarter-so3"]
noisy_datasets = ["5j0n-full-so3-noise16", "ribosome-quarter-so3-snr-12db"]
noisy_labels = ["sigma^2 = 16", "SNR -12 dB"]
pipeline = {}  # the profile's [pipeline] table (PipelineConfig's settings); {}: its defaults
refine = None  # RefineConfig settings: (f) refines each noisy case's gauge-free orientations; None: no (f)

# %%
import csv
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts
from cryo_orient.workflow import plots, records
from cryo_orient.workflow.pipeline import PipelineConfig, run_case, write_outputs

out = Path(out_dir)
if not len(proteins) == len(noiseless_datasets) == len(noisy_datasets) == len(noisy_labels):
    raise ValueError("proteins, noiseless_datasets, noisy_datasets and noisy_labels need one entry per protein")
config = PipelineConfig.from_dict(pipeline)
# The refinement (beyond the paper) runs on the noisy cases only: the images a user would have.
refined_config = None if refine is None else dataclasses.replace(config, refine=dict(refine))
cases = {}
for name in noiseless_datasets + noisy_datasets:
    print(f"== {name}")
    path = Path(sim_dir) / f"{name}.h5"
    case_config = refined_config if (refined_config is not None and name in noisy_datasets) else config
    cases[name] = run_case(path, case_config, cache_dir=cache_dir, progress=False)
    write_outputs(cases[name], path, Path("build") / profile / "pipeline" / name)


# %%
def columns(clean, noisy, noisy_label):
    """(title, case, reconstruction name) of the volume panels of one protein."""
    return [
        ("(a) true orientations", clean, "truth"),
        ("(b) random orientations", clean, "random"),
        ("(c) recovered, noiseless", clean, "recovered"),
        (f"(d) recovered, {noisy_label}", noisy, "recovered"),
        (f"(e) no ground truth, {noisy_label}\nnoisy images", noisy, "gauge_noisy_images"),
        *([(f"(f) (e) refined (beyond the paper)\n{noisy_label}, noisy images", noisy, "refined")] if refine else []),
    ]


def volume_and_fsc(case, name):
    """A panel's volume on the map's grid and its FSC with the true map ("refined": the refinement's,
    placed as (e); "refined_aligned": the refined poses aligned to the truth and reconstructed in the
    map's frame, as (d), curve only)."""
    if name == "refined":
        return case["refined_volume"], case["refined_fsc"]
    if name == "refined_aligned":
        return None, case["refined_aligned_fsc"]
    return case["volumes"][name], case["fsc"][name]


def views(volume):
    """Projections along z, y, x side by side, each scaled to its own range."""
    panels = [volume.sum(axis=a) for a in range(3)]
    panels = [(p - p.min()) / (np.ptp(p) or 1.0) for p in panels]
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 2)), constant_values=np.nan) for p in panels]
    return np.hstack(padded)


volume_cmap = plt.get_cmap("gray_r").copy()
volume_cmap.set_bad("white")  # the gaps between the three views


curve_styles = [
    ("truth", "clean", "true orientations", dict(color="k")),
    ("truth_noisy_images", "noisy", "true orientations, {noisy}, noisy images", dict(color="k", ls="--")),
    ("random", "clean", "random orientations", dict(color="0.6")),
    ("recovered", "clean", "recovered, noiseless", dict(color="tab:blue")),
    ("recovered", "noisy", "recovered, {noisy}", dict(color="tab:red")),
    ("recovered_noisy_images", "noisy", "recovered, {noisy}, noisy images", dict(color="tab:red", ls="--")),
    ("gauge", "clean", "no GT, noiseless", dict(color="tab:blue", ls=":")),
    ("gauge_noisy_images", "noisy", "no GT, {noisy}, noisy images", dict(color="tab:purple", ls="-.")),
]

if refine:
    curve_styles.append(("refined", "noisy", "(e) refined, {noisy}, noisy images", dict(color="tab:green")))
    curve_styles.append(
        ("refined_aligned", "noisy", "refined, aligned to GT, {noisy}, noisy images", dict(color="tab:green", ls="--"))
    )
n_volumes = 6 if refine else 5
fig, axes = plt.subplots(
    len(proteins),
    n_volumes + 1,
    figsize=(5.6 * (n_volumes + 1), 3.6 * len(proteins)),
    squeeze=False,
    gridspec_kw={"width_ratios": [1.6] * n_volumes + [1.4]},
)
rows = []
for r, (protein, clean_name, noisy_name, noisy_label) in enumerate(
    zip(proteins, noiseless_datasets, noisy_datasets, noisy_labels)
):
    clean, noisy = cases[clean_name], cases[noisy_name]
    for c, (title, case, volume_name) in enumerate(columns(clean, noisy, noisy_label)):
        ax = axes[r, c]
        volume, curve = volume_and_fsc(case, volume_name)
        ax.imshow(views(volume), cmap=volume_cmap, origin="lower")
        res = curve.resolution(0.5)[0]
        ax.set_title(f"{title}\nFSC 0.5: {res:.1f} Å", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(protein)
    shown = []
    for volume_name, which, label, style in curve_styles:
        curve = volume_and_fsc(clean if which == "clean" else noisy, volume_name)[1]
        res5, res1 = curve.resolution(0.5)[0], curve.resolution(0.143)[0]
        shown.append(
            (f"{label.format(noisy=noisy_label)}: {res5:.1f} / {res1:.1f} Å", curve.frequency, curve.correlation, style)
        )
    plots.fsc_curves(
        axes[r, n_volumes],
        shown,
        title=f"FSC with the true map ({protein})",
        legend_kw=dict(
            fontsize=7,
            title="resolution at 0.5 / 0.143",
            title_fontsize=7.5,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
        ),
    )
    for case_name, case in ((clean_name, clean), (noisy_name, noisy)):
        curves = dict(case["fsc"])
        if "refined_fsc" in case:
            curves |= {
                "refined_noisy_images": case["refined_fsc"],
                "refined_aligned_noisy_images": case["refined_aligned_fsc"],
            }
        for volume_name, curve in curves.items():
            s = curve.summary()
            refined = volume_name.startswith("refined")
            errors = case["summary"]["refinement"] if refined else case["summary"]
            rows.append(
                {
                    "protein": protein,
                    "dataset": case_name,
                    "reconstruction": volume_name,
                    "fsc_0.5_angstrom": round(s["resolution_0.5"], 3),
                    "crossed_0.5": s["crossed_0.5"],
                    "fsc_0.143_angstrom": round(s["resolution_0.143"], 3),
                    "crossed_0.143": s["crossed_0.143"],
                    "E_OR_median": round(errors["E_OR_median"], 4),
                    "E_OR_mean": round(errors["E_OR_mean"], 4),
                }
            )
fig.tight_layout()


def write_csv(path):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


with artifacts.atomic_output(out / "figure-11.csv") as tmp:
    write_csv(tmp)
for row in rows:
    print(row)
results = {
    name: {
        "fsc": case["summary"]["fsc"],
        "gauge": case["summary"]["gauge"],
        "E_OR_median": case["summary"]["E_OR_median"],
        "E_OR_mean": case["summary"]["E_OR_mean"],
        **({"refinement": case["summary"]["refinement"]} if "refinement" in case["summary"] else {}),
    }
    for name, case in cases.items()
}
outputs, recorded = ["figure-11.png", "figure-11.csv"], dict(pipeline=config.to_dict(), refine=refine)
records.publish("figure-11", globals(), figure=fig, outputs=outputs, parameters=recorded, results=results)
