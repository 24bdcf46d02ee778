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
# # Figure 9: sensitivity of distance learning to shifts and noise (5j0n, "half" coverage)
#
# One distance estimator per condition (noise σ² ∈ {0, 5, 10, 16, 20, 25}; circular shifts of up to
# T ∈ {0, 5, 10, 15, 20} px), each trained on that condition's fixed noisy dataset. Boxes: the
# distribution over epochs of the per-epoch training loss and validation MAE (as the paper). Text:
# L_OR and E_OR from recovering the *test* orientations (1,650 at P = 5,000) from the estimator's
# distances, aligned to the truth; E_OR as mean and median (the paper printed a last-batch mean).
#
# Differences from the paper, on purpose: recovery uses only the test split (the paper's sweeps
# recovered all 5,000 projections, including the estimator's training and validation images);
# recovery uses this library's settings with restarts (the paper's single Adam run gets stuck in
# local minima, see Figure 7). Beside L_OR we print Eq. 4's loss at the *true* orientations: when
# L_OR is far below it, the estimated distances fit another configuration better than the truth.
# The same distances are also recovered with the paper's optimiser (`paper_recovery_mode`: one Adam
# run from its Euler box), the faithful comparison: on this restricted set our recovery finds an
# "unwound" configuration (the paper's head cannot represent d_q on a full in-plane loop; see the
# coverage figure), which the topology check flags without ground truth.
# Our method beside them (`our_head`): a second estimator per condition with the squared head
# `2 arccos √cos(f_i, f_j)`, which can represent d_q on a full in-plane loop, recovered with our
# recovery. Extra: σ² = 16 trained with fresh noise drawn every batch instead
# of one fixed noisy dataset.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
noise_datasets = [
    "5j0n-half",
    "5j0n-half-noise5",
    "5j0n-half-noise10",
    "5j0n-half-noise16",
    "5j0n-half-noise20",
    "5j0n-half-noise25",
]
noise_variances = [0, 5, 10, 16, 20, 25]
shift_datasets = ["5j0n-half", "5j0n-half-shift5", "5j0n-half-shift10", "5j0n-half-shift15", "5j0n-half-shift"]
shift_limits = [0, 5, 10, 15, 20]
fresh_noise_dataset = "5j0n-half-noise16"
leaky_recovery_datasets = ["5j0n-half"]
input_size = 29
n_features = 512
regime = "batch"
batch_size = 32
epochs = 2
recovery_mode = "improved"
recovery_restarts = 3
recovery_max_steps = 20000
paper_recovery_mode = "faithful"  # None: no second recovery
our_head = "squared_cosine"  # our method's head, trained beside the paper's on both sweeps; None: none
seed = 0

# %%
import csv
import dataclasses
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts
from cryo_orient.data.dataset import read_dataset
from cryo_orient.estimation import siamese
from cryo_orient.orientation import alignment, topology
from cryo_orient.workflow import pipeline, plots, records

out = Path(out_dir)
cache = Path(cache_dir)
config = siamese.TrainingConfig(
    input_size=input_size, n_features=n_features, regime=regime, batch_size=batch_size, epochs=epochs, seed=seed
)
recovery_config = pipeline.PipelineConfig(
    recovery_mode=recovery_mode, recovery_restarts=recovery_restarts, recovery_max_steps=recovery_max_steps, seed=seed
)
for names, values, what in (
    (noise_datasets, noise_variances, "noise_variances"),
    (shift_datasets, shift_limits, "shift_limits"),
):
    if len(names) != len(values):
        raise ValueError(f"{what} needs one value per dataset: {len(values)} values for {len(names)} datasets")


def evaluate(name, fresh=False, recover_all=False, with_our_head=False):
    """Train (cached), embed the test split, recover its orientations (cached), align to the truth.

    ``recover_all``: recover every projection of the dataset instead, training and validation
    images included, as the authors' sweeps did (their leakage, measured here for comparison).
    ``with_our_head``: also train an estimator with ``our_head`` and recover its distances with
    our recovery (keys prefixed ``{our_head}_``).
    """
    data = read_dataset(Path(sim_dir) / f"{name}.h5")
    test = data.split("all" if recover_all else "test")
    q_true = test.quaternions

    def estimate(head):
        estimator = siamese.SiameseEstimator(dataclasses.replace(config, feature_distance=head), fresh_noise=fresh)
        estimator.fit(data, cache_dir=cache / "siamese")
        distances = estimator.distance_function(estimator.embed(test))
        # Eq. 4's loss at the true orientations: if the recovered L_OR is far below it, the estimated
        # distances fit another configuration better than the truth, and no optimiser can fix that.
        fit = pipeline.pair_fit(distances, q_true, np.random.default_rng([seed, 90]))
        return estimator.result, distances, fit["L_at_true_orientations"], fit["test_pair_mae"]

    run, distances, loss_at_truth, test_mae = estimate(config.feature_distance)

    def recover(rc, run, distances):
        def compute():
            result = pipeline.recover_orientations(distances, test.n, rc, rng=np.random.default_rng([seed, 9]))
            aligned = alignment.align(q_true, result["quaternions"])
            return {
                "L_OR": result["final_loss"],
                "steps": len(result["losses"]),
                "recovery_seconds": result["seconds"],
                "E_OR_mean": aligned.mean_error,
                "E_OR_median": aligned.median_error,
                "reflected": aligned.reflected,
                "topology": topology.check_topology(result["quaternions"]).as_dict(),
            }

        key = {
            "run": str(run.out_dir),
            "mode": rc.recovery_mode,
            "restarts": rc.recovery_restarts,
            "max_steps": rc.recovery_max_steps,
            "seed": seed,
            "with": "topology",  # records from before the topology check lack it: compute them again
        } | ({"recover_all": True} if recover_all else {})
        out = dict(artifacts.cached_json(cache / "figure-9", key, compute))
        out["unwound"] = out.pop("topology")["unwound"]
        return out

    rec = recover(recovery_config, run, distances)
    if paper_recovery_mode:
        paper = recover(
            dataclasses.replace(recovery_config, recovery_mode=paper_recovery_mode, recovery_restarts=1), run, distances
        )
        rec |= {f"paper_{k}": v for k, v in paper.items()}
    if with_our_head and our_head:
        head_run, head_distances, head_loss_at_truth, head_test_mae = estimate(our_head)
        ours = recover(recovery_config, head_run, head_distances) | {
            "final_val_mae": head_run.history["val_mae"][-1],
            "test_mae": head_test_mae,
            "L_at_true_orientations": head_loss_at_truth,
            "training_seconds": head_run.seconds,
        }
        rec |= {f"{our_head}_{k}": v for k, v in ours.items()}
    summary = {
        "dataset": name,
        "fresh_noise": fresh,
        "recovered": test.n,
        "epochs": run.epochs,
        "training_seconds": run.seconds,
        "median_train_loss": float(np.median(run.history["loss"])),
        "median_val_mae": float(np.median(run.history["val_mae"])),
        "final_val_mae": run.history["val_mae"][-1],
        "test_mae": test_mae,
        "L_at_true_orientations": loss_at_truth,
        **rec,
    }
    print(
        f"{name}{' (fresh noise)' if fresh else ''}: val MAE {summary['final_val_mae']:.3f}, "
        f"L_OR {rec['L_OR']:.3g} (at the truth {loss_at_truth:.3g}), E_OR mean {rec['E_OR_mean']:.3f} / "
        f"median {rec['E_OR_median']:.3f} rad{', likely unwound' if rec['unwound'] else ''}"
        + (
            f"; the paper's recovery: L_OR {rec['paper_L_OR']:.3g}, E_OR mean {rec['paper_E_OR_mean']:.3f} / "
            f"median {rec['paper_E_OR_median']:.3f} rad{', likely unwound' if rec['paper_unwound'] else ''}"
            if paper_recovery_mode
            else ""
        )
        + (
            f"; {our_head} head, our recovery: val MAE {rec[f'{our_head}_final_val_mae']:.3f}, "
            f"E_OR mean {rec[f'{our_head}_E_OR_mean']:.3f} / median {rec[f'{our_head}_E_OR_median']:.3f} rad"
            f"{', likely unwound' if rec[f'{our_head}_unwound'] else ''}"
            if f"{our_head}_E_OR_mean" in rec
            else ""
        )
    )
    return {"history": run.history, "summary": summary}


noise = [evaluate(name, with_our_head=True) for name in noise_datasets]
shifts = [evaluate(name, with_our_head=True) for name in shift_datasets]
fresh = evaluate(fresh_noise_dataset, fresh=True) if fresh_noise_dataset else None
leaky = [evaluate(name, recover_all=True) for name in leaky_recovery_datasets]

# %%
fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
for ax, runs, values, title, unit in (
    (axes[0], shifts, shift_limits, "(a) shifts", "T = {} px"),
    (axes[1], noise, noise_variances, "(b) noise", "σ² = {}"),
):
    x = np.arange(len(runs))
    train = [r["history"]["loss"] for r in runs]
    val = [r["history"]["val_mae"] for r in runs]
    b1 = ax.boxplot(train, positions=x - 0.18, widths=0.3, patch_artist=True, showfliers=False)
    b2 = ax.boxplot(val, positions=x + 0.18, widths=0.3, patch_artist=True, showfliers=False)
    for box in b1["boxes"]:
        box.set_facecolor("tab:green")
    for box in b2["boxes"]:
        box.set_facecolor("tab:orange")
    top = max(max(max(t), max(v)) for t, v in zip(train, val))
    for k, r in enumerate(runs):
        s = r["summary"]
        ax.text(
            k,
            top * 1.03,
            f"L_OR {s['L_OR']:.2e}\n(truth {s['L_at_true_orientations']:.2e})\n"
            f"E_OR {s['E_OR_mean']:.3f}\n(median {s['E_OR_median']:.3f})"
            + (f"\npaper's recovery\nE_OR {s['paper_E_OR_mean']:.3f}" if "paper_E_OR_mean" in s else "")
            + (
                f"\n{plots.head_label(our_head)}, ours\nE_OR {s[f'{our_head}_E_OR_mean']:.3f}"
                if f"{our_head}_E_OR_mean" in s
                else ""
            ),
            ha="center",
            va="bottom",
            fontsize=7.5,
        )
    ax.set_xticks(x, [unit.format(v) for v in values])
    ax.set_ylim(0, top * (1.4 + 0.3 * bool(paper_recovery_mode) + 0.3 * bool(our_head)))
    ax.set(ylabel="L_DE over epochs (MAE, rad)", title=title)
    ax.legend([b1["boxes"][0], b2["boxes"][0]], ["training", "validation"], loc="lower right")
if fresh is not None:
    s = fresh["summary"]
    plots.note(
        axes[1],
        f"σ² = 16, fresh noise every batch:\nval MAE {s['final_val_mae']:.3f}, "
        f"E_OR {s['E_OR_mean']:.3f} (median {s['E_OR_median']:.3f})",
    )
for r in leaky:
    s = r["summary"]
    plots.note(
        axes[0],
        f"{s['dataset']}, all {s['recovered']:,} projections recovered (training images included,\n"
        f"as the paper's sweeps): E_OR {s['E_OR_mean']:.3f} (median {s['E_OR_median']:.3f})",
    )
fig.suptitle(
    f"5j0n, half coverage: one estimator per condition ({input_size}×{input_size} px, "
    f"{config.epochs} epochs, {regime} regime); recovery of the test split (E_OR in rad)"
)
fig.tight_layout()

rows = (
    [{"sweep": "noise", "value": v} | r["summary"] for v, r in zip(noise_variances, noise)]
    + [{"sweep": "shift", "value": v} | r["summary"] for v, r in zip(shift_limits, shifts)]
    + ([{"sweep": "noise (fresh)", "value": 16} | fresh["summary"]] if fresh else [])
    + [{"sweep": "all projections recovered (the paper's leakage)", "value": None} | r["summary"] for r in leaky]
)
buf = io.StringIO()
writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
writer.writeheader()
writer.writerows(rows)
artifacts.save_text(buf.getvalue(), out / "figure-9.csv")
results = {"rows": rows}
outputs, recorded = ["figure-9.png", "figure-9.csv"], dict(training=config.to_dict())
records.publish("figure-9", globals(), figure=fig, outputs=outputs, parameters=recorded, results=results)
