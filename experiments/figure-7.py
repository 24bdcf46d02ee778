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
# # Figure 7: orientation recovery from perturbed distances
#
# E_OR (error after alignment to the true orientations) and L_OR (the recovery loss) against the
# perturbation σ of the distances, for the test split (1,650 of P = 5,000) of two orientation sets:
# the 5j0n "half" set (Euler-uniform, θ2 ∈ [0, 0.4π]) and the second protein's "quarter" set
# (SO(3)-uniform restricted to θ1 ∈ [0, 0.4π]). Only orientations enter this experiment, so the
# second protein's identity does not matter here.
#
# Two ways of perturbing the distances:
# - **redrawn** (the paper's): d̂ = d_q + N(0, σ) drawn anew at every step. The paper's axis says
#   σ², but its code used σ as a standard deviation; the noise averages out over steps.
# - **fixed** (realistic): one error per pair, the same every time the pair is drawn, as a
#   learned estimator's error would be.
#
# Both the paper's optimisation settings (`faithful`) and this library's (`improved`) are run.
# A single run can end in a local minimum of Eq. 4 (E_OR ≈ 1.1–1.2 rad, with an L_OR far above
# the other runs at the same σ), with either settings, on these restricted-coverage sets. The
# paper's settings are run once, as the paper did; ours use `restarts` independent starts and keep
# the one with the lowest final loss, which needs no ground truth. Nothing is rerun or dropped
# afterwards; runs that still end with E_OR > 0.5 rad are counted in the title.
# L_OR is the mean of the last 10 training losses, as in the paper (for redrawn noise it
# includes the noise variance σ²). E_OR is reported as the mean (the paper's Eq. 5) and the
# median (what its figures show).

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
n_projections = 5000
sigmas = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
ways = ["redrawn", "fixed"]
orientation_sets = [
    ["5j0n half: Euler-uniform [2, 0.4, 2]", "uniform_euler", [2.0, 0.4, 2.0]],
    ["quarter: SO(3)-uniform [2, 1, 0.4]", "uniform_so3", [2.0, 1.0, 0.4]],
]
modes = ["faithful", "improved"]
restarts = [1, 3]
max_steps = 30000
seed = 0

# %%
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts
from cryo_orient.data import splits
from cryo_orient.estimation import exact
from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment, recovery
from cryo_orient.workflow import records

out = Path(out_dir)
cache = Path(cache_dir) / "figure-7"
rows = []
for s, (label, method, coverage) in enumerate(orientation_sets):
    q_all = rotations.sample_orientations(n_projections, method, coverage, rng=np.random.default_rng([seed, s]))
    _, _, test = splits.train_val_test_split(n_projections)
    q_true = q_all[np.sort(test)]
    if len(restarts) != len(modes):
        raise ValueError(f"restarts ({restarts}) needs one count per mode ({modes})")
    for (w, way), (k, sigma), (mode, n_starts) in itertools.product(
        enumerate(ways), enumerate(sigmas), zip(modes, restarts)
    ):

        def run():
            rng = np.random.default_rng([seed, s, w, k])
            dist = exact.perturbed_distances(q_true, sigma, redrawn=(way == "redrawn"), rng=rng)
            result = recovery.recover(
                dist, len(q_true), mode=mode, max_steps=max_steps, restarts=n_starts, rng=rng, progress=False
            )
            aligned = alignment.align(q_true, result.quaternions)
            return {
                "set": label,
                "mode": mode,
                "restarts": n_starts,
                "way": way,
                "sigma": sigma,
                "n": len(q_true),
                "L_OR": float(np.mean(result.losses[-10:])),
                "steps": result.steps,
                "stop_reason": result.stop_reason,
                "seconds": result.seconds,
                "E_OR_mean": aligned.mean_error,
                "E_OR_median": aligned.median_error,
                "reflected": aligned.reflected,
            }

        key = dict(
            set=label,
            method=method,
            coverage=coverage,
            n_projections=n_projections,
            way=way,
            sigma=sigma,
            mode=mode,
            max_steps=max_steps,
            seed=seed,
        )
        if n_starts != 1:  # single-start keys stay as they were, so their cached runs stay valid
            key["restarts"] = n_starts
        row = artifacts.cached_json(cache, key, run, version=2)
        row.setdefault("restarts", 1)  # cached before the restarts column existed
        rows.append(row)
        print(
            f"{label[:12]:12s} {mode:8s} {way:8s} σ={sigma:.1f}: E_OR mean {row['E_OR_mean']:.4f}, "
            f"median {row['E_OR_median']:.4f} rad; L_OR {row['L_OR']:.3g} ({row['steps']} steps, "
            f"{row['seconds']:.0f} s)"
        )

header = "set,mode,way,sigma,n,E_OR_mean_rad,E_OR_median_rad,L_OR,steps,stop_reason,seconds\n"
csv = header + "".join(
    f'"{r["set"]}",{r["mode"]},{r["way"]},{r["sigma"]},{r["n"]},{r["E_OR_mean"]:.6g},{r["E_OR_median"]:.6g},'
    f"{r['L_OR']:.6g},{r['steps']},{r['stop_reason']},{r['seconds']:.1f}\n"
    for r in rows
)
artifacts.save_text(csv, out / "figure-7.csv")

# %% [markdown]
# Plot (reads only the numbers computed above).

# %%
fig, axes = plt.subplots(
    len(modes), len(orientation_sets), figsize=(6.5 * len(orientation_sets), 4.5 * len(modes)), squeeze=False
)
styles = {"redrawn": ("o", "-"), "fixed": ("s", "--")}
for (m, mode), (c, (label, _, _)) in itertools.product(enumerate(modes), enumerate(orientation_sets)):
    ax = axes[m, c]
    twin = ax.twinx()
    for way in ways:
        sel = [r for r in rows if r["set"] == label and r["way"] == way and r["mode"] == mode]
        x = [r["sigma"] for r in sel]
        marker, line = styles[way]
        ax.plot(x, [r["E_OR_mean"] for r in sel], marker=marker, ls=line, color="tab:red", label=f"E_OR mean, {way}")
        ax.plot(
            x,
            [r["E_OR_median"] for r in sel],
            marker=marker,
            ls=line,
            color="tab:red",
            alpha=0.45,
            mfc="none",
            label=f"E_OR median, {way}",
        )
        twin.plot(x, [r["L_OR"] for r in sel], marker=marker, ls=line, color="tab:blue", label=f"L_OR, {way}")
    n_starts = restarts[m]
    ax.set(
        xlabel="σ: standard deviation of the distance perturbation (rad)",
        title=f"{label}\n{mode} settings, best of {n_starts} start{'s' if n_starts > 1 else ''} by final loss",
    )
    ax.set_ylabel("E_OR (rad)", color="tab:red")
    twin.set_ylabel("L_OR", color="tab:blue")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
stuck = sum(r["E_OR_mean"] > 0.5 for r in rows)
fig.suptitle(
    f"Recovery of {rows[0]['n']:,} orientations from perturbed distances "
    "(redrawn: new noise each step, the paper's; fixed: one error per pair)\n"
    f"{stuck} of {len(rows)} runs ended in a local minimum (E_OR > 0.5 rad), shown as they are",
    fontsize=10,
)
fig.tight_layout()
results = {"runs": rows, "runs_with_E_OR_above_0.5_rad": stuck}
records.publish("figure-7", globals(), figure=fig, outputs=["figure-7.png", "figure-7.csv"], results=results)
