"""RELION's auto-refine as the anchor (workflow.relion_refine), and what its inputs need: normalised
particles (simulation.noise.normalize_background) and a start of known error (rotations.perturb)."""

import shutil

import numpy as np
import pytest

from cryo_orient.data import read_particles
from cryo_orient.data.relion import read_particle_table, write_particle_stack, write_particles
from cryo_orient.geometry import rotations
from cryo_orient.simulation.noise import normalize_background
from cryo_orient.validation import InputError
from cryo_orient.workflow import relion_refine


def test_normalize_background_sets_the_solvent_to_mean_0_std_1_and_inverts():
    rng = np.random.default_rng(0)
    n = 32
    y, x = np.indices((n, n)) - n // 2
    disc = (np.hypot(y, x) <= 8).astype(float)
    images = 5.0 + 2.0 * rng.standard_normal((4, n, n)) + 10 * disc
    before = images.copy()
    out = normalize_background(images, 10)
    outside = np.hypot(y, x) > 10
    np.testing.assert_allclose(out[:, outside].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, outside].std(axis=1), 1, atol=1e-5)
    assert out[:, disc > 0].mean() > 3  # the particle stays bright
    np.testing.assert_allclose(normalize_background(images, 10, invert=True), -out, atol=1e-6)
    np.testing.assert_array_equal(images, before)


def test_normalize_background_refuses_a_radius_without_background():
    with pytest.raises(InputError, match="background pixels"):
        normalize_background(np.ones((2, 16, 16)) + np.arange(256).reshape(16, 16), 12)


def test_perturb_rotates_every_orientation_by_exactly_the_angle():
    q = rotations.uniform_so3(500, rng=1)
    moved = rotations.perturb(q, 10.0, rng=2)
    np.testing.assert_allclose(np.degrees(rotations.distance(q, moved)), 10.0, atol=1e-6)
    np.testing.assert_array_equal(moved, rotations.perturb(q, 10.0, rng=2))
    # The axes are random: the mean displacement of the viewing directions is not along one axis.
    assert not np.allclose(rotations.perturb(q, 10.0, rng=3), moved)
    with pytest.raises(InputError, match=r"\[0, 180\]"):
        rotations.perturb(q, 200.0)


def test_command_modes():
    local = relion_refine.auto_refine_command(
        "p.star", "ref.mrc", "out", mode="local", particle_diameter=200, initial_lowpass=25, sigma_ang=3
    )
    assert "--sigma_ang" in local and local[local.index("--healpix_order") + 1] == "3"
    assert local[local.index("--auto_local_healpix_order") + 1] == "3"  # local from the first iteration
    glob = relion_refine.auto_refine_command("p.star", "ref.mrc", "out", particle_diameter=200, initial_lowpass=25)
    assert "--sigma_ang" not in glob and glob[glob.index("--healpix_order") + 1] == "2"
    assert {"--auto_refine", "--split_random_halves", "--ctf"} <= set(glob)
    # A fixed seed (RELION's default is the clock), and the seed is part of the command (the cache key).
    assert glob[glob.index("--random_seed") + 1] == "0"
    seeded = relion_refine.auto_refine_command(
        "p.star", "ref.mrc", "out", particle_diameter=200, initial_lowpass=25, random_seed=7
    )
    assert seeded[seeded.index("--random_seed") + 1] == "7"
    with pytest.raises(InputError, match="at least 3 MPI"):
        relion_refine.auto_refine_command("p.star", "r.mrc", "o", particle_diameter=2, initial_lowpass=2, mpi=2)
    with pytest.raises(InputError, match="sigma_ang"):
        relion_refine.auto_refine_command("p.star", "r.mrc", "o", mode="local", particle_diameter=2, initial_lowpass=2)


@pytest.mark.slow
def test_relion_local_auto_refine_improves_a_start_and_is_read_back_in_the_input_order(tmp_path, data_mirror):
    if shutil.which("relion_refine_mpi") is None or shutil.which("mpirun") is None:
        pytest.skip("RELION is not installed (apt-get install relion openmpi-bin): its auto-refine not run")
    star = data_mirror / "aspire-70s-ctf" / "particles.star"
    if not star.is_file():
        pytest.skip(f"no ASPIRE 70S stack at {star}")
    n = 120
    truth = read_particles(star).subset(np.arange(n))
    images = normalize_background(truth.images("raw"), 21, invert=True)  # ASPIRE's contrast is RELION's negative
    write_particle_stack(tmp_path / "particles.mrcs", images, truth.pixel_size)
    start = rotations.perturb(truth.quaternions, 8.0, rng=0)
    write_particles(
        tmp_path / "start.star",
        read_particle_table(star).subset(np.arange(n)),
        quaternions=start,
        shifts=np.zeros((n, 2)),
        image_names=[f"{k + 1:06d}@particles.mrcs" for k in range(n)],
    )
    settings = dict(mode="local", particle_diameter=220, initial_lowpass=25, sigma_ang=2.7, offset_range=9)
    said = []
    run = relion_refine.auto_refine(
        tmp_path / "start.star",
        data_mirror / "aspire-70s-ctf" / "map48.mrc",
        tmp_path / "relion",
        log=said.append,
        **settings,
    )
    errors = np.degrees(rotations.distance(truth.quaternions, run.quaternions))
    # Measured on 120 particles: median about 3°, RMS shift error about 1 px (start: 8°, 4 px).
    assert np.median(errors) < 6.0
    assert np.sqrt(np.mean((run.shifts - truth.shifts) ** 2)) < 2.5
    assert 10 < run.resolution < 60 and run.iterations and run.map.is_file() and run.seconds > 0
    again = relion_refine.auto_refine(
        tmp_path / "start.star",
        data_mirror / "aspire-70s-ctf" / "map48.mrc",
        tmp_path / "relion",
        log=said.append,
        **settings,
    )
    assert "cached" in said[-1]
    np.testing.assert_array_equal(again.quaternions, run.quaternions)


def _fake_run(tmp_path, n=6):
    """A STAR file of n particles (one stack) and a folder holding what a finished RELION run leaves,
    its particles written in reversed order, with the record auto_refine writes."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 16, 16))
    write_particle_stack(tmp_path / "particles.mrcs", images, 2.0)
    import mrcfile

    with mrcfile.new(tmp_path / "ref.mrc") as mrc:
        mrc.set_data(np.zeros((16, 16, 16), np.float32))
        mrc.voxel_size = 2.0
    q = rotations.uniform_so3(n, rng=1)
    (tmp_path / "in.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n_rlnSphericalAberration\n"
        "_rlnAmplitudeContrast\n_rlnImageSize\n_rlnImageDimensionality\n1 2.0 300 2.7 0.1 16 2\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n"
        + "".join(f"{k + 1:06d}@particles.mrcs 1\n" for k in range(n))
    )
    star = tmp_path / "in.star"
    table = read_particle_table(star)
    out = tmp_path / "relion"
    out.mkdir()
    order = np.arange(n)[::-1]
    write_particles(
        out / "run_data.star",
        table.subset(order),
        quaternions=q[order],
        shifts=np.zeros((n, 2)),
        image_names=[f"{k + 1:06d}@particles.mrcs" for k in order],
    )
    (out / "run_model.star").write_text("data_model_general\n_rlnCurrentResolution 12.5\n")
    (out / "run_class001.mrc").write_bytes(b"")
    settings = dict(mode="global", particle_diameter=30, initial_lowpass=10)
    command = relion_refine.auto_refine_command(star.name, (tmp_path / "ref.mrc").resolve(), out.resolve(), **settings)
    record = {
        "command": command,
        "seconds": 1.0,
        "image_keys": [f"{k + 1}@particles.mrcs" for k in range(n)],
        "inputs": relion_refine._input_digests(star.resolve(), (tmp_path / "ref.mrc").resolve(), table),
    }
    import json

    (out / "relion.json").write_text(json.dumps(record))
    return star, tmp_path / "ref.mrc", out, q, settings, images


def test_a_cached_run_is_read_back_in_the_input_order_and_a_changed_input_is_not_reused(tmp_path, monkeypatch):
    star, ref, out, q, settings, images = _fake_run(tmp_path)
    said = []
    run = relion_refine.auto_refine(star, ref, out, log=said.append, **settings)
    assert "cached" in said[-1] and run.resolution == 12.5
    np.testing.assert_allclose(np.abs(np.sum(run.quaternions * q, axis=1)), 1, atol=1e-5)  # reordered back
    # The same images written again (mrcfile stamps the time in the header): still the cached run.
    write_particle_stack(tmp_path / "particles.mrcs", images, 2.0)
    assert relion_refine.auto_refine(star, ref, out, log=said.append, **settings).resolution == 12.5
    # A rewritten stack with other images (same path, same names): the cache must not be used.
    write_particle_stack(tmp_path / "particles.mrcs", np.ones((6, 16, 16)) + np.arange(256).reshape(16, 16), 2.0)
    monkeypatch.setattr(relion_refine.shutil, "which", lambda program: None)
    with pytest.raises(relion_refine.UnavailableError, match="mpirun is not installed"):
        relion_refine.auto_refine(star, ref, out, log=said.append, **settings)
