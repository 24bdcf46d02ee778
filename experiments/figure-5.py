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
# # Figure 5: the density maps
#
# The paper shows Chimera renderings of its two maps, 5j0n (3.67 Å voxels) and 5a1a (1 Å). We
# render each map we use from the file itself: an isosurface (marching cubes at a fraction of the
# maximum density) and the three orthogonal projections (sums along z, y and x). 5a1a is not
# available offline; the offline profiles use the 70S ribosome as a clearly labelled stand-in
# for the second protein.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
volumes = ["5j0n", "hand"]
labels = ["5j0n", "hand (test volume)"]
iso_fraction = 0.2

# %%

import matplotlib.pyplot as plt
import numpy as np
from skimage import measure

from cryo_orient import data
from cryo_orient.workflow import records

if len(labels) != len(volumes):
    raise ValueError(f"labels ({len(labels)}) and volumes ({len(volumes)}) must pair up")

fig = plt.figure(figsize=(16, 4 * len(volumes)))
results = {}
for row, (name, label) in enumerate(zip(volumes, labels)):
    volume, voxel = data.load(name)
    # A header voxel size of 0 (the 70S ribosome's) is read as 1 Å with a warning: say so.
    known_voxel = name not in data.REGISTRY or data.REGISTRY[name].voxel_size is not None
    voxel_text = f"{voxel:.4g} Å" if known_voxel else "voxel size unknown (1 Å assumed)"
    level = iso_fraction * float(volume.max())
    verts, faces, _, _ = measure.marching_cubes(volume, level=level, spacing=(voxel,) * 3)
    results[name] = {
        "label": label,
        "shape_zyx": list(volume.shape),
        "voxel_size_A": voxel,
        "voxel_size_known": known_voxel,
        "box_A": [n * voxel for n in volume.shape],
        "min": float(volume.min()),
        "max": float(volume.max()),
        "mean": float(volume.mean()),
        "iso_level": level,
        "n_triangles": len(faces),
        "sha256": data.REGISTRY[name].sha256 if name in data.REGISTRY else None,
    }
    ax = fig.add_subplot(len(volumes), 4, 4 * row + 1, projection="3d")
    # marching_cubes returns (z, y, x) coordinates; draw them as (x, y, z), lit for depth.
    ax.plot_trisurf(
        verts[:, 2], verts[:, 1], faces, verts[:, 0], color=(0.55, 0.7, 0.9), linewidth=0, shade=True, antialiased=False
    )
    extent = np.array(volume.shape[::-1]) * voxel
    ax.set(
        xlim=(0, extent[0]), ylim=(0, extent[1]), zlim=(0, extent[2]), xlabel="x (Å)", ylabel="y (Å)", zlabel="z (Å)"
    )
    ax.set_box_aspect(extent)
    ax.set_title(
        f"{label}: isosurface at {iso_fraction:g} × max\n"
        f"{volume.shape[2]}×{volume.shape[1]}×{volume.shape[0]} voxels (x, y, z), {voxel_text}"
    )
    planes = [(0, "sum along z  [y, x]"), (1, "sum along y  [z, x]"), (2, "sum along x  [z, y]")]
    for k, (axis, plane) in enumerate(planes):
        ax = fig.add_subplot(len(volumes), 4, 4 * row + 2 + k)
        ax.imshow(volume.sum(axis=axis), cmap="gray", origin="lower")
        ax.set_title(plane)
        ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()

records.publish("figure-5", globals(), figure=fig, results=results)
