"""A small particle stack of the kind other programs write (RELION STAR + MRCS, CTF, offsets, noise),
made here so that tests know its truth; shared by the tests of matching, orient and RELION."""

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryo_orient.data.relion import quaternions_to_relion, write_particle_stack
from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation.shifts import center_images
from cryo_orient.tomography.ctf import CTFParams, apply_ctf
from cryo_orient.tomography.projection import project


def small_map(mirror: Path, box: int = 32) -> tuple[np.ndarray, float]:
    """The ASPIRE 70S map (48 px, 5 Å) resampled to ``box`` px over the same field of view."""
    volume = mrcfile.read(mirror / "aspire-70s-ctf" / "map48.mrc").astype(np.float64)
    pixel = 5.0 * 48 / box
    return volumes.resample_volume(volume, 5.0, pixel, box), pixel


def make_stack(folder: Path, volume, pixel, *, n=200, snr=0.5, shift_sigma=1.5, invert=False, seed=0):
    """Write ``folder/particles.star`` (no angles, no origins) and its stack; return the truth."""
    rng = np.random.default_rng(seed)
    box = volume.shape[0]
    q = rotations.uniform_so3(n, rng=rng)
    defocus = rng.uniform(10000, 25000, n)
    columns = {
        "rlnDefocusU": defocus + 200,
        "rlnDefocusV": defocus - 200,
        "rlnDefocusAngle": rng.uniform(0, 180, n),
        "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7,
        "rlnAmplitudeContrast": 0.1,
    }
    params = CTFParams.from_columns(columns, n)
    clean = apply_ctf(project(volume, q, box, "nufft"), params, pixel)
    shifts = rng.normal(0, shift_sigma, (n, 2)) if shift_sigma else np.zeros((n, 2))
    moved = center_images(clean, -shifts)  # centring by -s moves the particle by +s
    noise_variance = clean.var() / snr
    images = moved + rng.normal(0, np.sqrt(noise_variance), moved.shape)
    if invert:
        images = -images
    folder.mkdir(parents=True, exist_ok=True)
    write_particle_stack(folder / "stack.mrcs", images, pixel)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [0.1],
            "rlnSphericalAberration": [2.7],
            "rlnVoltage": [300.0],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnDefocusU": columns["rlnDefocusU"],
            "rlnDefocusV": columns["rlnDefocusV"],
            "rlnDefocusAngle": columns["rlnDefocusAngle"],
            "rlnOpticsGroup": 1,
            "rlnRandomSubset": np.arange(n) % 2 + 1,
        }
    )
    starfile.write({"optics": optics, "particles": particles}, folder / "particles.star", overwrite=True)
    angles = quaternions_to_relion(q)
    return {
        "quaternions": q,
        "angles": angles,
        "shifts": shifts,
        "noise_variance": noise_variance,
        "snr": snr,
        "params": params,
        "star": folder / "particles.star",
    }
