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
# # Beyond the paper: one estimator for proteins it has never seen (leave-one-out)
#
# The paper trains its distance estimator on projections of the very map whose orientations it
# then recovers. Here, for every protein P of `proteins`, one general estimator is trained on a
# library of maps **without P** (the other registered maps and `n_pseudo_molecules` procedurally
# generated pseudo-molecules, `cryo_orient.simulation.pseudomolecules`), every batch simulated on
# the fly (`cryo_orient.estimation.onthefly.train_general`: random map, scale, noise, shifts and,
# where `simulation` sets one, CTF). It then runs the whole pipeline on P's datasets as a
# pretrained estimator (`PipelineConfig(estimator="pretrained")`): embed the test split, recover
# (Eq. 4), choose the gauge, reconstruct; and, with `refine`, refine the gauge-free orientations
# against their own half maps (no reference, no ground truth). Beside it, the same pipeline with
# the estimator trained on P itself (the `pipeline` parameter's, figure 10's: the same cache).
#
# Bars: E_OR median after alignment (mean as a dot), per dataset, for the unseen-protein and the
# same-protein estimators, before and (hatched) after refinement. Table: the same numbers with the
# estimators' validation MAE and the FSC 0.5 of the noisy images' reconstruction.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
proteins = ["5j0n", "70s-ribosome"]  # registry names; each left out of its own general estimator
labels = ["5j0n", "70S ribosome"]
datasets = ["5j0n-full-so3", "5j0n-full-so3-noise16", "ribosome-quarter-so3"]
dataset_proteins = ["5j0n", "5j0n", "70s-ribosome"]  # the protein (of `proteins`) of each dataset
library = ["5j0n", "70s-ribosome", "hand"]  # the registered maps the general estimators draw from
n_pseudo_molecules = 4
training = {"input_size": 16, "n_features": 32, "batch_size": 16, "epochs": 2, "seed": 0}
simulation = {"snr_db_min": -12.0, "snr_db_max": 10.0, "shift_limit": 0.0}  # OnTheFlyConfig settings
ctf = False  # draw a CTF per batch (OnTheFlyConfig's default one); the simulated datasets here have none
steps_per_epoch = 4
n_val_pairs = 64
pipeline = {}  # the profile's [pipeline] table: recovery, gauge, reconstruction and the same-protein estimator
refine = None  # RefineConfig settings: also refine each case (beyond the paper); None: no

# %%
import csv
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts
from cryo_orient.estimation.onthefly import train_general
from cryo_orient.workflow import records
from cryo_orient.workflow.pipeline import PipelineConfig, run_case
from cryo_orient.workflow.stages import digest

if len(proteins) != len(labels) or len(datasets) != len(dataset_proteins):
    raise ValueError("need one label per protein and one protein (dataset_proteins) per dataset")
unknown = [p for p in set(proteins) | set(dataset_proteins) if p not in library or p not in proteins]
if unknown:
    raise ValueError(f"proteins {sorted(unknown)} are not both in `proteins` and in the library {library}")
base = PipelineConfig.from_dict(pipeline)
drawn = dict(simulation) | ({} if ctf else {"ctf": None})
cache = Path(cache_dir)


def general_estimator(left_out):
    """Train (or load) the general estimator of the library without ``left_out``: its run folder."""
    maps = [m for m in library if m != left_out]
    folder = cache / "general" / digest(maps, n_pseudo_molecules, training, drawn, steps_per_epoch, n_val_pairs)
    result = train_general(
        maps,
        dict(training),
        folder,
        n_pseudo_molecules=n_pseudo_molecules,
        simulation=drawn,
        steps_per_epoch=steps_per_epoch,
        n_val_pairs=n_val_pairs,
        progress=False,
    )
    print(
        f"general estimator without {left_out}: maps {maps} + {n_pseudo_molecules} pseudo-molecules, "
        f"{result.epochs} epochs, val MAE {result.history['val_mae'][-1]:.3f} ({folder})"
    )
    return folder, result


rows, cases = [], {}
for protein, label in zip(proteins, labels):
    folder, general = general_estimator(protein)
    unseen = dataclasses.replace(base, estimator="pretrained", estimator_options={"path": str(folder)})
    estimators = {"unseen": unseen, "same protein": base}
    for name in [d for d, p in zip(datasets, dataset_proteins) if p == protein]:
        for which, config in estimators.items():
            config = config if refine is None else dataclasses.replace(config, refine=dict(refine))
            print(f"== {name}, {which}")
            case = run_case(Path(sim_dir) / f"{name}.h5", config, cache_dir=cache_dir, progress=False)
            cases[(name, which)] = case
            s = case["summary"]
            estimator = s["estimator"]
            row = {
                "protein": label,
                "dataset": name,
                "estimator": which,
                "val_mae": round(float(estimator.get("final_val_mae", np.nan)), 4),
                "test_pair_mae": round(s["test_pair_mae"], 4),
                "E_OR_median": round(s["E_OR_median"], 4),
                "E_OR_mean": round(s["E_OR_mean"], 4),
                "fsc_0.5_noisy_images": round(s["fsc"]["gauge_noisy_images"]["resolution_0.5"], 3),
                "unwound": s["topology"]["unwound"],
            }
            if "refinement" in s:
                r = s["refinement"]
                row |= {
                    "refined_E_OR_median": round(r["E_OR_median"], 4),
                    "refined_E_OR_mean": round(r["E_OR_mean"], 4),
                    "refined_fsc_0.5": round(r["fsc"]["resolution_0.5"], 3),
                    "refinement_rounds": r["rounds"],
                }
            rows.append(row)
            print(row)

# %%
names = list(datasets)
fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.8))
colours = {"unseen": "tab:orange", "same protein": "tab:blue"}
width = 0.2 if refine else 0.35
for k, which in enumerate(colours):
    picked = [next(r for r in rows if r["dataset"] == n and r["estimator"] == which) for n in names]
    steps = [("", "E_OR_median", "E_OR_mean", None)]
    if refine:
        steps.append((", refined", "refined_E_OR_median", "refined_E_OR_mean", "//"))
    for j, (suffix, median, mean, hatch) in enumerate(steps):
        x = np.arange(len(names)) + (k * len(steps) + j - (2 * len(steps) - 1) / 2) * width
        ax.bar(
            x,
            [r[median] for r in picked],
            width,
            color=colours[which],
            hatch=hatch,
            label=which + suffix,
            edgecolor="k" if hatch else None,
        )
        ax.plot(x, [r[mean] for r in picked], "k.", ms=5)
ax.set_xticks(np.arange(len(names)), names, rotation=15, fontsize=8)
ax.set_ylabel("E_OR median (rad; dot: mean)")
ax.set_title("Unseen protein (trained without it) against trained on it", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()

with artifacts.atomic_output(Path(out_dir) / "generalization.csv") as tmp:
    with open(tmp, "w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
parameters = dict(
    proteins=proteins,
    datasets=datasets,
    dataset_proteins=dataset_proteins,
    library=library,
    n_pseudo_molecules=n_pseudo_molecules,
    training=training,
    simulation=drawn,
    steps_per_epoch=steps_per_epoch,
    pipeline=base.to_dict(),
    refine=refine,
)
records.publish(
    "generalization",
    globals(),
    figure=fig,
    outputs=["generalization.png", "generalization.csv"],
    parameters=parameters,
    results={"rows": rows},
)
