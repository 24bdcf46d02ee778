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
# # Beyond the paper: our refinement beside RELION's auto-refine, on the same stack and start
#
# The learned pipeline ends about 10° from the truth; a practical pipeline refines from there.
# This experiment measures our refinement (`cryo_orient.orientation.refine`: local searches
# against gold-standard half maps, the CTF in the matching and the reconstruction) against the
# field's reference, RELION 3.1's auto-refine (`relion_refine_mpi --auto_refine
# --split_random_halves`, `cryo_orient.workflow.relion_refine`), on a stack neither wrote: by
# default the ASPIRE 70S stack of the data mirror (2,000 particles of 48 px at 5 Å, CTF, offsets of
# σ = 3 px, SNR 0.25 by ASPIRE's definition). Every refiner gets the same images (normalised as
# RELION expects: background mean 0, standard deviation 1, RELION's contrast), the same start
# (each true orientation rotated by `start_error_deg` about a random axis, all origins zero; the
# learned pipeline's error, without its failures), the same reference (the true map, low-passed
# to `initial_lowpass` Å for the first iteration) and the same shift range. RELION runs with
# local searches from that start (`--sigma_ang`) and, where `relion_modes` holds "global", its usual
# global search from the reference alone. Ours runs likewise: "local" from the start, and, where
# `our_modes` holds "global", from no start at all (random orientations, zero origins) with
# `global_refine`'s rounds of global search (`RefineConfig.global_rounds`: the whole of SO(3) and
# a shift grid, against the reference, then against each half's map). (a) the orientation error
# against the truth; (b) the FSC of each final map with the true map; (c) the half maps'
# resolution per iteration; (d) wall time.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
cache_dir = "build/tiny/cache"
particles = "aspire-70s-ctf/particles.star"  # with the true angles and origins (the start is made from them)
reference = "aspire-70s-ctf/map48.mrc"
n_particles = 0  # the first n particles (0: all)
start_error_deg = 10.0
seed = 0
invert_contrast = "auto"  # the stack against RELION's contrast: auto (measured), yes, no
background_radius = 21  # pixels: outside is solvent, for the normalisation
particle_diameter = 220.0  # Å: RELION's mask
initial_lowpass = 25.0  # Å: the first iteration's reference low-pass, for both refiners
shift_range_sigmas = 3.0  # the shift search reaches this many of the stack's offset σ (measured)
refine = {}  # RefineConfig settings (cryo_orient.orientation.refine) beyond the above
our_modes = ["local"]  # our runs: local from the start; global from random orientations, the reference alone
global_refine = {"global_rounds": 2, "global_step": 7.5, "global_shift_step": 2.0}  # "global": settings beyond `refine`
relion_modes = ["local", "global"]  # RELION auto-refine runs: local from the start, global from the reference
relion_mpi = 3  # RELION processes: one leader, two workers on 2 cores

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cryo_orient.data import load_volume, read_particles, write_volume
from cryo_orient.data.particles import locate
from cryo_orient.data.relion import read_particle_table, write_particle_stack, write_particles
from cryo_orient.geometry import rotations
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.simulation.matching import match_stack
from cryo_orient.simulation.noise import normalize_background
from cryo_orient.tomography import fsc
from cryo_orient.workflow import plots, records
from cryo_orient.workflow.refine import RefineConfig, load_reference, refine_particles
from cryo_orient.workflow.relion_refine import auto_refine

work = Path("build") / profile / "refinement"
work.mkdir(parents=True, exist_ok=True)
truth_star, reference_map = locate(particles), locate(reference)
truth = read_particles(truth_star)
rows = np.arange(n_particles or truth.n)
truth = truth.subset(rows) if len(rows) < truth.n else truth
table = read_particle_table(truth_star).subset(rows)
pixel = truth.pixel_size
volume, _ = load_reference(reference_map, truth)
write_volume(work / "reference.mrc", volume.astype(np.float32), pixel)  # on the stack's grid, for both refiners

# The stack as RELION expects it, one file for every refiner: contrast measured against the
# reference, background normalised.
model = match_stack(truth, volume, invert=invert_contrast, rng=seed)
images = normalize_background(truth.images("raw"), background_radius, invert=model.invert)
write_particle_stack(work / "particles.mrcs", images, pixel)
names = [f"{k + 1:06d}@particles.mrcs" for k in range(truth.n)]
start_q = rotations.perturb(truth.quaternions, start_error_deg, rng=seed)
start_star = work / "start.star"
write_particles(start_star, table, quaternions=start_q, shifts=np.zeros((truth.n, 2)), image_names=names)
shift_range = float(np.ceil(shift_range_sigmas * model.shift_sigma))
lowpass_fraction = 2 * pixel / initial_lowpass  # of Nyquist
config = RefineConfig.from_dict({"shift_range": shift_range, "initial_lowpass": lowpass_fraction} | dict(refine))
print(
    f"{truth.n} particles of {truth.image_size} px at {pixel:g} Å; contrast inverted: {model.invert} "
    f"(correlation {model.contrast_correlation:+.2f}); offsets σ = {model.shift_sigma:.2f} px -> shift range "
    f"{shift_range:g} px; start {start_error_deg:g}° off"
)

# %% [markdown]
# The runs. RELION's are cached by their command lines (`relion.json` beside their outputs); ours
# is not (it reruns in a few minutes).

# %%
runs = {}
# "global": no start; the global search's shift grid spans the local search's range.
random_star = work / "random-start.star"
random_q = rotations.uniform_so3(truth.n, rng=seed)
write_particles(random_star, table, quaternions=random_q, shifts=np.zeros((truth.n, 2)), image_names=names)
our_runs = {
    "local": ("ours", start_star, config),
    "global": (
        "ours global",
        random_star,
        RefineConfig.from_dict(config.to_dict() | {"global_shift_range": shift_range} | dict(global_refine)),
    ),
}
for mode in our_modes:
    name, star, settings = our_runs[mode]
    started = time.perf_counter()
    ours = refine_particles(
        star, work / "reference.mrc", work / name.replace(" ", "-"), config=settings, progress=False
    )
    result = ours["result"]
    runs[name] = {
        "quaternions": result.quaternions,
        "shifts": result.shifts,
        "map": result.volume,
        "half_maps": result.half_maps,
        "resolution": result.resolution,
        "iterations": [(row["iteration"], row["resolution"]) for row in result.log],
        "seconds": time.perf_counter() - started,
        "config": settings.to_dict(),
    }
for mode in relion_modes:
    run = auto_refine(
        start_star,
        work / "reference.mrc",
        work / f"relion-{mode}",
        mode=mode,
        particle_diameter=particle_diameter,
        initial_lowpass=initial_lowpass,
        sigma_ang=start_error_deg / 3,
        offset_range=shift_range,
        offset_step=1.0,
        mpi=relion_mpi,
    )
    runs[f"RELION {mode}"] = {
        "quaternions": run.quaternions,
        "shifts": run.shifts,
        "map": load_volume(run.map)[0],
        "half_maps": (load_volume(run.half1)[0], load_volume(run.half2)[0]),
        "resolution": run.resolution,
        "iterations": [(row["iteration"], row["resolution"]) for row in run.iterations],
        "seconds": run.seconds,
        "command": " ".join(run.command),
    }

# %% [markdown]
# The evaluation against the truth. The reference is the true map, so every run stays in its frame:
# the raw error is the measure; the error after the best rotation and hand (`align_rigid`) is shown
# beside it, for a global search that may settle in another frame.

# %%
summary = {
    "n_particles": truth.n,
    "image_size": truth.image_size,
    "pixel_size": pixel,
    "stack_model": model.to_dict(),
    "shift_range_px": shift_range,
    "refine_config": config.to_dict(),
}
start_errors = np.degrees(rotations.distance(truth.quaternions, start_q))
summary["start"] = {
    "median_error_deg": float(np.median(start_errors)),
    "shift_rms_error_px": float(np.sqrt(np.mean(truth.shifts**2))),
}
curves, errors = {}, {"start": start_errors}
for name, run in runs.items():
    e = np.degrees(rotations.distance(truth.quaternions, run["quaternions"]))
    errors[name] = e
    fit = align_rigid(truth.quaternions, run["quaternions"])
    curve = fsc.fsc(run["map"], volume, pixel)
    # The half maps' FSC with one mask for all (RELION reports its final one without a mask).
    halves = fsc.fsc(*run["half_maps"], pixel, mask="soft_sphere")
    curves[name] = curve
    summary[name] = {
        "median_error_deg": float(np.median(e)),
        "mean_error_deg": float(np.mean(e)),
        "p90_error_deg": float(np.percentile(e, 90)),
        "aligned_median_error_deg": fit.median_error_deg,
        "mirrored": fit.mirrored,
        "shift_rms_error_px": float(np.sqrt(np.mean((run["shifts"] - truth.shifts) ** 2))),
        "half_map_resolution_angstrom": float(run["resolution"]),
        "half_map_resolution_soft_sphere_angstrom": halves.resolution(0.143)[0],
        "fsc_truth_0.5_angstrom": curve.resolution(0.5)[0],
        "fsc_truth_0.143_angstrom": curve.resolution(0.143)[0],
        "iterations": len(run["iterations"]) - (1 if name.startswith("ours") else 0),
        "seconds": float(run["seconds"]),
    } | {key: run[key] for key in ("command", "config") if key in run}
for mode in ("local", "global"):
    ours_name = "ours" if mode == "local" else "ours global"
    if ours_name in runs and f"RELION {mode}" in runs:
        summary[f"{ours_name.replace(' ', '_')}_over_relion_{mode}"] = {
            "time_ratio": summary[ours_name]["seconds"] / summary[f"RELION {mode}"]["seconds"],
            "median_error_ratio": summary[ours_name]["median_error_deg"]
            / summary[f"RELION {mode}"]["median_error_deg"],
        }
for name, values in summary.items():
    print(name, values)

# %%
fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
ax = axes[0, 0]
bins = np.linspace(0, max(20.0, 2 * start_error_deg), 61)
for k, (name, e) in enumerate(errors.items()):
    ax.hist(
        np.clip(e, 0, bins[-1]),
        bins=bins,
        histtype="step",
        lw=1.5,
        color="0.5" if name == "start" else f"C{k - 1}",  # each run the colour of panels (b) and (c)
        label=f"{name}: median {np.median(e):.2f}°, mean {np.mean(e):.2f}°",
    )
ax.set(xlabel="error against the truth (°; the last bin holds all beyond)", ylabel="particles")
random_note = " (ours global: random)" if "ours global" in runs else ""
ax.set_title(f"(a) {truth.n} particles, start {start_error_deg:g}° off{random_note}")
ax.legend(fontsize=8)
plots.fsc_results(axes[0, 1], curves, title="(b) FSC of each final map with the true map")
ax = axes[1, 0]
for name, run in runs.items():
    its = np.array(run["iterations"], dtype=float)
    ax.plot(its[:, 0], its[:, 1], "o-", label=name)
ax.axhline(2 * pixel, color="gray", lw=0.8, ls=":", label="Nyquist")
ax.set(xlabel="iteration", ylabel="half maps' resolution, FSC 0.143 (Å)", title="(c) resolution per iteration")
ax.legend(fontsize=8)
ax = axes[1, 1]
names_ = list(runs)
ax.barh(names_, [summary[n]["seconds"] for n in names_], color="C0")
for k, n in enumerate(names_):
    ax.text(summary[n]["seconds"], k, f" {summary[n]['seconds']:.0f} s", va="center", fontsize=8)
ax.set(xlabel="wall time (s, 2 cores)", title="(d) time to convergence (ours: to its stop)")
fig.suptitle("Beyond the paper: refinement, ours beside RELION 3.1 auto-refine (same images, start, reference)")
fig.tight_layout()
records.publish(
    "refinement",
    globals(),
    figure=fig,
    parameters=dict(particles=str(truth_star), reference=str(reference_map)),
    results=summary,
)
