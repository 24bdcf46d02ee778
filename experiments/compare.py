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
# # Side by side with the standard method: common lines (ASPIRE synchronization voting)
#
# Not a figure of the paper: the comparison it leaves to the reader. On the same simulated
# projections (the test split of 5j0n with SO(3)-uniform full coverage, 1,650 images under the cpu
# profile) and at several noise levels, orientations are estimated (i) by our whole pipeline
# (`cryo_orient.workflow.pipeline.run_case`, with the profile's `[pipeline]` settings, as figure 10, so
# its cached cases are reused) and (ii) by common lines with ASPIRE-Python's `CLSyncVoting` (Shkolnisky &
# Singer 2012; Singer et al. 2010), run on the same raw noisy images in its own environment
# (`.venv-compare`, `experiments/compare/aspire_orientations.py`). Both are aligned to the true
# orientations with the same O(4) alignment (`cryo_orient.orientation.alignment.align`), which removes the
# global rotation and handedness that neither method can know, and reconstructed with the same
# solver from the same images (the clean test projections, as figure 11's "recovered", and the
# noisy ones); FSC against the true map. Panels: (a) E_OR, (b) run time and (c) the FSC 0.5
# resolution against the SNR; (d) the FSC curves of both methods' reconstructions from the clean
# images at every noise level.
#
# ASPIRE's convention (see `experiments/compare/aspire_convention.py`): its `Volume.project(R_A)`
# equals our projection at `R = R_A^T` with the same image and volume indexing, so its rotations
# are transposed into ours. No image transpose or flip is applied (checked: all 16 candidates on a
# random volume; only this one reproduces our projections).
#
# Run time: ASPIRE's is the common-lines matrix, the voting and the rotations (single process, this
# machine, after Fourier-downsampling the images to `aspire_downsample` px). Ours is the estimator's
# training (on the training split) plus orientation recovery; the embedding of the test images
# (seconds) is not timed. Both exclude the reconstruction. ASPIRE settings: `n_theta` rays per
# image (1 degree apart at 360), `n_rad` radial points (0: ASPIRE's ceil(L/2)), no 1-D shift search
# (`aspire_max_shift = 0`: the images are centred, and our pipeline does not search shifts either;
# ASPIRE's default, 0.15 L, multiplies the common-line search by the number of shifts).

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
datasets = ["5j0n-full-so3", "5j0n-full-so3-noise1", "5j0n-full-so3-noise4", "5j0n-full-so3-noise16"]
labels = ["5j0n, noiseless", "5j0n, noise variance 1", "5j0n, noise variance 4", "5j0n, noise variance 16"]
pipeline = {}  # the profile's [pipeline] table (PipelineConfig's settings); {}: its defaults
aspire_python = ".venv-compare/bin/python"
aspire_n_theta = 360
aspire_n_rad = 0
aspire_max_shift = 0.0
aspire_downsample = 58

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient import artifacts
from cryo_orient.data.dataset import read_dataset
from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment
from cryo_orient.workflow import plots, records
from cryo_orient.workflow.pipeline import PipelineConfig, reconstruct_on_map, run_case

sys.path.insert(0, str(Path("experiments") / "compare"))
import aspire_convention  # noqa: E402  (plain numpy)
import aspire_runner  # noqa: E402

out = Path(out_dir)
cache = Path(cache_dir)
if len(labels) != len(datasets):
    raise ValueError(f"need one label per dataset, got {len(labels)} labels for {len(datasets)} datasets")
# The profile's [pipeline] settings, as figure 10's, so that its cached cases are reused.
config = PipelineConfig.from_dict(pipeline)
aspire_settings = dict(
    n_theta=aspire_n_theta, n_rad=aspire_n_rad, max_shift=aspire_max_shift, downsample=aspire_downsample
)


def fsc_columns(clean_curve, noisy_curve) -> dict:
    """Resolutions (Å) at 0.5 and 0.143 of the reconstructions from the clean and the noisy images, and
    whether each curve crossed the threshold (if not, the value is the last shell's: an upper bound)."""
    out = {}
    for prefix, curve in (("fsc", clean_curve), ("fsc_noisy_images", noisy_curve)):
        for threshold in (0.5, 0.143):
            res, crossed = curve.resolution(threshold)
            out[f"{prefix}_{threshold}_angstrom"] = res
            out[f"{prefix}_{threshold}_crossed"] = crossed
    return out


# %%
rows, curves, reference = [], {}, {}
for name, label in zip(datasets, labels):
    print(f"== {name}")
    path = Path(sim_dir) / f"{name}.h5"
    case = run_case(path, config, cache_dir=cache, progress=False)
    data = read_dataset(path)
    test_split = data.split("test")
    test, clean, noisy = test_split.index, test_split.images("clean"), test_split.images("noisy")
    if not np.array_equal(test, case["test_indices"]):
        raise RuntimeError("run_case's test split differs from the dataset's test split")
    s = case["summary"]
    noise, signal = data.noise_variance, float(data.metadata["signal_variance"])
    common = {
        "dataset": name,
        "label": label,
        "noise_variance": noise,
        "snr_db": float(10 * np.log10(signal / noise)) if noise > 0 else None,
    }

    result = aspire_runner.cached_orientations(
        aspire_python, path, data.cache_key, test, aspire_settings, cache / "compare"
    )
    q_aspire = rotations.matrix_to_quaternion(
        aspire_convention.nearest_rotation(aspire_convention.aspire_to_matrices(result["rotations"]))
    )
    aligned = alignment.align(case["q_true"], q_aspire)
    print(
        f"ASPIRE: {result['seconds']:.0f} s, E_OR median {np.degrees(aligned.median_error):.2f}, "
        f"mean {np.degrees(aligned.mean_error):.2f} deg"
    )
    ours = {"recovered": case["fsc"]["recovered"], "recovered_noisy_images": case["fsc"]["recovered_noisy_images"]}
    theirs = {
        which: reconstruct_on_map(
            images, aligned.aligned, config, case["truth"], case["voxel_size"], cache_dir=cache / "compare"
        )["fsc"]
        for which, images in (("recovered", clean), ("recovered_noisy_images", noisy))
    }
    curves[name] = {"siamese": ours, "aspire-cl-sync-voting": theirs}
    for method, e_median, e_mean, seconds, fscs, extra in (
        (
            "siamese",
            s["E_OR_median"],
            s["E_OR_mean"],
            s["estimator"]["seconds"] + s["recovery_seconds"],
            ours,
            {"training_seconds": s["estimator"]["seconds"], "recovery_seconds": s["recovery_seconds"]},
        ),
        (
            "aspire-cl-sync-voting",
            aligned.median_error,
            aligned.mean_error,
            result["seconds"],
            theirs,
            {
                "aspire_seconds": result["seconds"],
                "aspire_common_lines_seconds": result["seconds_clmatrix"],
                "aspire_voting_seconds": result["seconds_voting"],
                "aspire_version": result["aspire_version"],
                "aspire_parameters": result["parameters"],
            },
        ),
    ):
        rows.append(
            common
            | {
                "method": method,
                "E_OR_median_deg": float(np.degrees(e_median)),
                "E_OR_mean_deg": float(np.degrees(e_mean)),
                "seconds": float(seconds),
                **fsc_columns(fscs["recovered"], fscs["recovered_noisy_images"]),
                "reflected": bool(aligned.reflected) if method != "siamese" else bool(s["reflected"]),
            }
            | extra
        )
    reference[name] = fsc_columns(case["fsc"]["truth"], case["fsc"]["truth_noisy_images"])
    nyquist = 2 * case["voxel_size"]
    n_test = len(test)
    del case, data, test_split, clean, noisy

# %%
METHODS = {
    "siamese": ("ours: Siamese distances + recovery", "tab:blue", "o"),
    "aspire-cl-sync-voting": ("common lines: ASPIRE sync voting", "tab:red", "s"),
}
finite = [r["snr_db"] for r in rows if r["snr_db"] is not None]
noiseless_x = (max(finite) if finite else 0.0) + 6.0  # where the noiseless case sits on the SNR axis


def xpos(row):
    return noiseless_x if row["snr_db"] is None else row["snr_db"]


def series(method, key):
    sel = sorted((r for r in rows if r["method"] == method), key=xpos)
    return np.array([xpos(r) for r in sel]), np.array([r[key] for r in sel], dtype=float)


fig, axes = plt.subplots(1, 4, figsize=(23, 4.8))
ax = axes[0]
for method, (label, color, marker) in METHODS.items():
    x, med = series(method, "E_OR_median_deg")
    ax.plot(x, med, color=color, marker=marker, label=f"{label}, median")
    x, mean = series(method, "E_OR_mean_deg")
    ax.plot(x, mean, color=color, marker=marker, ls="--", mfc="white", label=f"{label}, mean")
ax.set(ylabel="E_OR after alignment (degrees)", yscale="log", title="(a) orientation error")
ax.legend(fontsize=7.5)

ax = axes[1]
x, ours_total = series("siamese", "seconds")
_, ours_rec = series("siamese", "recovery_seconds")
x2, theirs = series("aspire-cl-sync-voting", "seconds")
_, voting = series("aspire-cl-sync-voting", "aspire_voting_seconds")
ax.plot(x, ours_total, color="tab:blue", marker="o", label="ours: training + recovery")
ax.plot(x, ours_rec, color="tab:blue", marker="o", ls=":", mfc="white", label="ours: recovery only")
ax.plot(x2, theirs, color="tab:red", marker="s", label="ASPIRE: common lines + voting + rotations")
ax.plot(x2, voting, color="tab:red", marker="s", ls=":", mfc="white", label="ASPIRE: voting only")
ax.set(ylabel="seconds (this machine, shared cores)", yscale="log", title="(b) run time to orientations")
ax.legend(fontsize=7.5)

ax = axes[2]
for method, (label, color, marker) in METHODS.items():
    x, res = series(method, "fsc_0.5_angstrom")
    ax.plot(x, res, color=color, marker=marker, label=f"{label}, clean images")
    x, res = series(method, "fsc_noisy_images_0.5_angstrom")
    ax.plot(x, res, color=color, marker=marker, ls="--", mfc="white", label=f"{label}, noisy images")
ref_x = np.array([noiseless_x if r["snr_db"] is None else r["snr_db"] for r in rows if r["method"] == "siamese"])
for key, ls, label in (
    ("fsc_0.5_angstrom", "-", "true orientations, clean images"),
    ("fsc_noisy_images_0.5_angstrom", "--", "true orientations, noisy images"),
):
    ref = np.array([reference[r["dataset"]][key] for r in rows if r["method"] == "siamese"])
    order = np.argsort(ref_x)
    ax.plot(ref_x[order], ref[order], color="0.55", ls=ls, lw=1, label=label)
ax.axhline(nyquist, color="0.6", lw=0.8, ls=":", label=f"Nyquist ({nyquist:.1f} Å)")
ax.set(ylabel="FSC 0.5 resolution (Å, lower is better)", title="(c) reconstruction: FSC 0.5 with the true map")
ax.legend(fontsize=7)

ax = axes[3]
shades = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(datasets)))
shown = []
for method, (method_label, _, _) in METHODS.items():
    for shade, name, label in zip(shades, datasets, labels):
        curve = curves[name][method]["recovered"]
        shown.append(
            (
                f"{label}, {method_label.split(':')[0]}: {curve.resolution(0.5)[0]:.1f} Å",
                curve.frequency,
                curve.correlation,
                dict(color=shade, ls="-" if method == "siamese" else "--"),
            )
        )
plots.fsc_curves(
    ax,
    shown,
    title="(d) FSC with the true map, clean images",
    legend_kw=dict(fontsize=6.5, title="FSC 0.5 (solid: ours, dashed: common lines)", title_fontsize=7),
)

ticks = sorted(set(xpos(r) for r in rows))
for ax in axes[:3]:
    ax.set_xticks(ticks, [("noiseless" if t == noiseless_x else f"{t:.0f}") for t in ticks])
    ax.set_xlabel("SNR (dB)")
    ax.grid(alpha=0.3, which="both", lw=0.5)
first_aspire = next(r for r in rows if r["method"] == "aspire-cl-sync-voting")
fig.suptitle(
    f"Our pipeline against common lines (ASPIRE {first_aspire['aspire_version']} CLSyncVoting), the same "
    f"{n_test} test projections at each noise level ({', '.join(datasets)})",
    fontsize=10,
)
fig.tight_layout()


# %%
def fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def res(row, key):
    """A resolution, as an upper bound ("≤") when the FSC never fell below the threshold."""
    return ("" if row[key.replace("_angstrom", "_crossed")] else "≤ ") + fmt(row[key], 1)


params = first_aspire["aspire_parameters"]
lines = [
    "# Our pipeline against common lines (ASPIRE synchronization voting)",
    "",
    f"Profile `{profile}`, {n_test} test projections per dataset, the same images for both methods. "
    "E_OR: geodesic error after the O(4) alignment to the truth (degrees). Time, in seconds on this machine "
    "(its 2 cores were shared with other jobs during these runs: compare orders of magnitude only): ours is the "
    "estimator's training plus orientation recovery; ASPIRE's is common lines, voting and rotations "
    f"(`n_theta` = {params['n_theta']}, `n_rad` = {params['n_rad']}, images Fourier-downsampled to "
    f"{params['image_size']} px, no shift search). FSC with the true map, from the clean test "
    'projections (as figure 11\'s "recovered") and from the noisy ones; resolutions in Å.',
    "",
    "| dataset | SNR (dB) | method | E_OR median (°) | E_OR mean (°) | time (s) | FSC 0.5 (Å) | FSC 0.143 (Å) "
    "| FSC 0.5, noisy images (Å) | FSC 0.143, noisy images (Å) |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
]
for r in rows:
    snr = "∞ (noiseless)" if r["snr_db"] is None else f"{r['snr_db']:.1f}"
    lines.append(
        f"| {r['dataset']} | {snr} | {r['method']} | {fmt(r['E_OR_median_deg'])} | {fmt(r['E_OR_mean_deg'])} "
        f"| {fmt(r['seconds'], 0)} | {res(r, 'fsc_0.5_angstrom')} | {res(r, 'fsc_0.143_angstrom')} "
        f"| {res(r, 'fsc_noisy_images_0.5_angstrom')} | {res(r, 'fsc_noisy_images_0.143_angstrom')} |"
    )
lines += [
    "",
    "With the true orientations (reference): "
    + "; ".join(
        f"{name}: {res(ref, 'fsc_0.5_angstrom')} / {res(ref, 'fsc_0.143_angstrom')} Å (clean images), "
        f"{res(ref, 'fsc_noisy_images_0.5_angstrom')} / {res(ref, 'fsc_noisy_images_0.143_angstrom')} Å (noisy images)"
        for name, ref in reference.items()
    )
    + f' (FSC 0.5 / 0.143; Nyquist {nyquist:.1f} Å; "≤": the FSC stayed above '
    "the threshold up to the last shell).",
    "",
]
artifacts.save_text("\n".join(lines), out / "compare.md")
print("\n".join(lines))

results = {"rows": rows, "true_orientations": reference, "n_test": n_test, "nyquist_angstrom": nyquist}
recorded = dict(pipeline=config.to_dict(), aspire=aspire_settings | {"python": aspire_python, "resolved": params})
records.publish(
    "compare", globals(), figure=fig, outputs=["compare.png", "compare.md"], parameters=recorded, results=results
)
