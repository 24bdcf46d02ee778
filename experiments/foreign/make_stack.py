"""Write a particle stack of the kind of the mirror's ASPIRE 70S one, with RELION's own projector.

For machines without the data mirror (`make foreign-stack`): the 70S ribosome map of the registry
(65³; its header has no voxel size, so it is given the one that puts 48 px of 5 Å over the same
field of view, as ASPIRE's 65 -> 48 downsampling did) resampled to 48³ at 5 Å, uniform random
orientations, a CTF per particle (seven defoci from 1.0 to 2.5 µm, 300 kV, Cs 2 mm, amplitude
contrast 0.1), Gaussian offsets of σ = 3 px, projected by `relion_project --ctf` (which applies
the CTF and the offsets in RELION's conventions), then white noise at the given SNR (signal
variance of the CTF-modulated images over noise variance) and, like ASPIRE's stack, the contrast
opposite to RELION's. Where RELION is absent our own projector makes the images (said in the log
and in README.txt). Outputs in OUT: map48.mrc, particles.mrcs, particles.star (true angles and
origins: for evaluation), particles_noangles.star (what `cryo-orient orient` reads), README.txt.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

from cryo_orient import data
from cryo_orient.data.relion import quaternions_to_relion, write_particle_stack
from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation.shifts import center_images
from cryo_orient.tomography.ctf import CTFParams, apply_ctf
from cryo_orient.tomography.projection import project


def _tables(q, defocus, origins, pixel, box, names=None):
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [pixel],
            "rlnSphericalAberration": [2.0],
            "rlnVoltage": [300.0],
            "rlnAmplitudeContrast": [0.1],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    angles = quaternions_to_relion(q)
    particles = pd.DataFrame(
        {
            "rlnOpticsGroup": 1,
            "rlnDefocusU": defocus,
            "rlnDefocusV": defocus,
            "rlnDefocusAngle": 0.0,
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": origins[:, 0],
            "rlnOriginYAngst": origins[:, 1],
        }
    )
    if names is not None:
        particles.insert(0, "rlnImageName", names)
    return {"optics": optics, "particles": particles}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--shift-sigma", type=float, default=3.0, help="offsets' standard deviation, px per axis")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--relion-contrast", action="store_true", help="keep RELION's contrast (default: inverted)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    box, pixel = 48, 5.0
    volume, _ = data.load("70s-ribosome")
    volume = volumes.resample_volume(volume, pixel * box / volume.shape[0], pixel, box)
    data.write_volume(out / "map48.mrc", volume, pixel)

    rng = np.random.default_rng(args.seed)
    q = rotations.uniform_so3(args.n, rng=rng)
    defocus = rng.choice(np.linspace(10000.0, 25000.0, 7), size=args.n)
    shifts = rng.normal(0.0, args.shift_sigma, (args.n, 2))  # (dy, dx) px
    origins = -shifts[:, ::-1] * pixel  # RELION's origin, x first, in Å
    relion = shutil.which("relion_project")
    if relion:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            starfile.write(_tables(q, defocus, origins, pixel, box), Path(tmp) / "angles.star")
            shutil.copy(out / "map48.mrc", Path(tmp) / "map.mrc")
            cmd = [relion, "--i", "map.mrc", "--o", "proj", "--ang", "angles.star", "--ctf", "--angpix", str(pixel)]
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            clean = mrcfile.read(Path(tmp) / "proj.mrcs").astype(np.float64)
        made_by = "relion_project --ctf (RELION's projector, CTF and offsets)"
    else:
        params = CTFParams.from_columns(
            {"rlnDefocusU": defocus, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.0, "rlnAmplitudeContrast": 0.1},
            args.n,
        )
        clean = center_images(apply_ctf(project(volume, q, box, "nufft"), params, pixel), -shifts)
        made_by = "cryo_orient's projector (RELION was not found)"
        print("relion_project not found: the images are made with our own projector", file=sys.stderr)
    noise_variance = clean.var() / args.snr
    images = clean + rng.normal(0.0, np.sqrt(noise_variance), clean.shape)
    if not args.relion_contrast:
        images = -images
    write_particle_stack(out / "particles.mrcs", images, pixel)
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(args.n)]
    tables = _tables(q, defocus, origins, pixel, box, names)
    starfile.write(tables, out / "particles.star", overwrite=True)
    blind = tables["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    )
    starfile.write({"optics": tables["optics"], "particles": blind}, out / "particles_noangles.star", overwrite=True)
    contrast = "RELION's" if args.relion_contrast else "inverted (as ASPIRE's)"
    (out / "README.txt").write_text(
        f"{args.n} particles of {box} px at {pixel} Å made by {made_by}; SNR {args.snr}, "
        f"offsets σ {args.shift_sigma} px, seed {args.seed}, contrast {contrast}.\n"
        "particles.star has the true angles and origins (evaluation only); particles_noangles.star is the input.\n"
    )
    print(f"{out}: {args.n} particles ({made_by})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
