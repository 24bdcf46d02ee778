import json

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryo_orient.cli import main as cli_main
from cryo_orient.data import load_volume, write_volume
from cryo_orient.data.dataset import read_dataset
from cryo_orient.simulation import simulate
from cryo_orient.simulation.simulate import (
    SimulationConfig,
    add_noise,
    noise_variance_for_snr,
    random_shifts,
    shift_images,
    simulate_dataset,
    standardize,
)
from cryo_orient.tomography.ctf import CTFParams, apply_ctf
from cryo_orient.tomography.projection import project


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    v = np.zeros((12, 14, 16), dtype=np.float32)
    v[3:8, 4:11, 5:12] = rng.random((5, 7, 7))
    path = tmp_path_factory.mktemp("vol") / "blob.mrc"
    with mrcfile.new(path) as m:
        m.set_data(v)
        m.voxel_size = 2.0
    return path


def config(volume_file, **overrides):
    values = {"volume": str(volume_file), "n_projections": 20, "seed": 3} | overrides
    return SimulationConfig(**values)


# ------------------------------------------------------------------ image operations


def test_add_noise_has_the_requested_variance_and_copies():
    images = np.zeros((50, 32, 32), dtype=np.float32)
    noisy = add_noise(images, 16.0, rng=0)
    assert noisy.dtype == np.float32
    assert noisy.var() == pytest.approx(16.0, rel=0.02)
    assert not images.any()
    np.testing.assert_array_equal(noisy, add_noise(images, 16.0, rng=0))
    assert not np.array_equal(noisy, add_noise(images, 16.0, rng=1))
    np.testing.assert_array_equal(add_noise(images + 1, 0.0), images + 1)
    with pytest.raises(ValueError, match=">= 0"):
        add_noise(images, -1.0)


def test_snr_conversion():
    assert noise_variance_for_snr(1.0, snr=1 / 16) == pytest.approx(16.0)
    assert noise_variance_for_snr(2.0, snr_db=-10 * np.log10(16)) == pytest.approx(32.0)
    with pytest.raises(ValueError, match="exactly one"):
        noise_variance_for_snr(1.0)
    with pytest.raises(ValueError, match="positive"):
        noise_variance_for_snr(1.0, snr=0)


def test_random_shifts():
    s = random_shifts(20000, 10, "circular", rng=0)
    assert s.shape == (20000, 2)
    np.testing.assert_array_equal(s, np.trunc(s))
    assert np.abs(s).max() <= 9  # truncation towards 0 of values in (-10, 10)
    # Triangular: |shift| has density falling linearly, so more small than large shifts.
    assert (np.abs(s) < 3).mean() > 2 * (np.abs(s) >= 6).mean()
    sub = random_shifts(1000, 2.5, "subpixel", rng=0)
    assert not np.array_equal(sub, np.round(sub)) and np.abs(sub).max() <= 2.5
    assert not random_shifts(5, 10, "none").any()
    with pytest.raises(ValueError, match="unknown shift mode"):
        random_shifts(3, 1, "wrap")


def test_shift_images_circular_and_subpixel():
    rng = np.random.default_rng(0)
    images = np.zeros((2, 20, 20))
    images[:, 5:15, 5:15] = rng.random((2, 10, 10))
    shifts = np.array([[2.0, -3.0], [0.0, 0.0]])
    rolled = shift_images(images, shifts, "circular")
    np.testing.assert_array_equal(rolled[0], np.roll(images[0], (2, -3), axis=(0, 1)))
    np.testing.assert_array_equal(rolled[1], images[1])
    sub = shift_images(images, shifts, "subpixel")
    np.testing.assert_allclose(sub[0], rolled[0], atol=1e-10)  # integer shift, content far from edges
    edge = np.zeros((1, 8, 8))
    edge[0, :, -1] = 1.0
    assert np.abs(shift_images(edge, [[0.0, 2.0]], "subpixel")).max() < 1e-12  # no wrap-around
    assert shift_images(edge, [[0.0, 2.0]], "circular")[0, :, 1].all()  # wraps
    with pytest.raises(ValueError, match="integers"):
        shift_images(images, [[0.5, 0], [0, 0]], "circular")


def test_standardize():
    x = np.random.default_rng(0).normal(3, 2, (10, 8, 8))
    z = standardize(x)
    assert z.mean() == pytest.approx(0, abs=1e-12) and z.std() == pytest.approx(1)
    with pytest.raises(ValueError, match="standard deviation"):
        standardize(np.ones((2, 3, 3)))


# ------------------------------------------------------------------ config


def test_config_rejects_unknown_keys_and_bad_values(volume_file):
    with pytest.raises(ValueError, match="unknown simulation config key.*noise_var"):
        SimulationConfig.from_dict({"volume": "x", "n_projections": 3, "noise_var": 1})
    with pytest.raises(ValueError, match="n_projections"):
        config(volume_file, n_projections=0)
    with pytest.raises(ValueError, match="not both"):
        config(volume_file, noise_variance=1.0, snr_db=-10.0)
    with pytest.raises(ValueError, match="sampling"):
        config(volume_file, sampling="uniform_S3")
    with pytest.raises(ValueError, match="shift_limit"):
        config(volume_file, shift_limit=-1)


# ------------------------------------------------------------------ datasets


def test_dataset_layout_and_provenance(volume_file, tmp_path):
    path = simulate_dataset(
        config(volume_file, noise_variance=4.0, store_clean=True), tmp_path / "d.h5", progress=False
    )
    data = read_dataset(path)
    size = simulate.default_size((12, 14, 16))
    projections, clean = data.images("standardized"), data.images("clean")
    assert projections.shape == (20, size, size) and projections.dtype == np.float32
    assert clean.shape == (20, size, size) and data.has_clean
    assert data.quaternions.shape == (20, 4) and data.euler.shape == (20, 3)
    np.testing.assert_allclose(np.linalg.norm(data.quaternions, axis=1), 1)
    assert data.config["noise_variance"] == 4.0
    assert data.provenance["seed"] == 3 and data.provenance["version"]
    assert data.provenance["git_commit"]
    assert data.pixel_size == pytest.approx(2.0)
    # Standardised as a whole; the raw image is recovered from the recorded mean and std.
    assert projections.mean() == pytest.approx(0, abs=1e-4)
    assert projections.std() == pytest.approx(1, rel=1e-4)
    mean, std = data.standardization
    np.testing.assert_allclose(data.images("noisy"), projections.astype(np.float64) * std + mean)
    assert (data.images("noisy") - clean).var() == pytest.approx(4.0, rel=0.05)
    # The clean images are the projections of the stored orientations.
    volume = mrcfile.read(volume_file)
    np.testing.assert_allclose(clean, simulate.project(volume, data.quaternions), atol=1e-5)


def test_same_seed_same_dataset_whatever_the_chunking(volume_file, tmp_path):
    c = config(volume_file, noise_variance=1.0, shift_mode="circular", shift_limit=3)
    a = read_dataset(simulate_dataset(c, tmp_path / "a.h5", chunk_size=7, progress=False))
    b = read_dataset(simulate_dataset(c, tmp_path / "b.h5", chunk_size=20, progress=False))
    np.testing.assert_array_equal(a.images("standardized"), b.images("standardized"))
    np.testing.assert_array_equal(a.quaternions, b.quaternions)
    np.testing.assert_array_equal(a.shifts, b.shifts)
    other = read_dataset(simulate_dataset(config(volume_file, seed=4), tmp_path / "c.h5", progress=False))
    assert not np.allclose(other.quaternions, a.quaternions)


def test_noise_does_not_change_the_orientations(volume_file, tmp_path):
    clean = read_dataset(simulate_dataset(config(volume_file), tmp_path / "a.h5", progress=False))
    noisy = read_dataset(simulate_dataset(config(volume_file, noise_variance=16.0), tmp_path / "b.h5", progress=False))
    np.testing.assert_array_equal(clean.quaternions, noisy.quaternions)
    assert not np.allclose(clean.images(), noisy.images())


def test_snr_sets_the_noise_from_the_signal(volume_file, tmp_path):
    data = read_dataset(
        simulate_dataset(config(volume_file, noise_variance=None, snr_db=-10.0), tmp_path / "a.h5", progress=False)
    )
    assert data.noise_variance == pytest.approx(10 * data.metadata["signal_variance"])


def test_euler_sampling_stays_in_the_box(volume_file, tmp_path):
    c = config(volume_file, sampling="uniform_euler", coverage=(2.0, 0.4, 2.0), n_projections=200)
    data = read_dataset(simulate_dataset(c, tmp_path / "a.h5", progress=False))
    assert data.euler[:, 1].max() <= 0.4 * np.pi + 1e-9


def test_cache_hit_skips_and_config_change_recomputes(volume_file, tmp_path, monkeypatch):
    path = simulate_dataset(config(volume_file), tmp_path / "a.h5", progress=False)
    stamp = path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(simulate, "project", lambda *a, **k: calls.append(1) or pytest.fail("recomputed"))
    assert simulate_dataset(config(volume_file), path, progress=False) == path
    assert path.stat().st_mtime_ns == stamp and not calls
    monkeypatch.undo()
    simulate_dataset(config(volume_file, noise_variance=2.0), path, progress=False)
    assert read_dataset(path).noise_variance == 2.0


def test_map_fingerprint_is_its_content(volume_file, tmp_path):
    """A map rewritten with the same data keys the same dataset (mrcfile stamps the time into its
    header), other data or another voxel size another one."""
    data, voxel = load_volume(volume_file)
    key = simulate.volume_source(config(volume_file))[2]
    again = write_volume(tmp_path / "again.mrc", data, voxel)
    with mrcfile.open(again, mode="r+") as mrc:
        mrc.add_label("rewritten")  # as a later write's time stamp: other header bytes
    assert again.read_bytes() != volume_file.read_bytes()
    assert simulate.volume_source(config(again))[2] == key
    other_voxel = write_volume(tmp_path / "voxel.mrc", data, 2 * voxel)
    other_data = write_volume(tmp_path / "data.mrc", 2 * data, voxel)
    assert key not in {simulate.volume_source(config(p))[2] for p in (other_voxel, other_data)}


def test_failure_leaves_no_partial_file(volume_file, tmp_path, monkeypatch):
    real_project = simulate.project
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated crash")
        return real_project(*args, **kwargs)

    monkeypatch.setattr(simulate, "project", flaky)
    target = tmp_path / "a.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        # the pilot covers the first 512 projections; force a second projection call
        simulate_dataset(config(volume_file, n_projections=600), target, chunk_size=256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_simulate(volume_file, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"volume": str(volume_file), "n_projections": 5}))
    out = tmp_path / "cli.h5"
    assert cli_main(["simulate", "--config", str(cfg), "--set", "noise_variance=3", "--out", str(out), "--quiet"]) == 0
    assert read_dataset(out).noise_variance == 3.0
    with pytest.raises(SystemExit, match="unknown simulation config key"):
        cli_main(["simulate", "--config", str(cfg), "--set", "noise=3", "--out", str(out)])


def test_ctf_is_applied_per_image_and_stored(volume_file, tmp_path):
    ctf = {"defocus_min": 8000.0, "defocus_max": 20000.0, "astigmatism": 500.0, "pixel_size": 3.0}
    path = simulate_dataset(config(volume_file, store_clean=True, ctf=ctf), tmp_path / "ctf.h5", progress=False)
    ds = read_dataset(path)
    params = CTFParams.from_columns(ds.ctf, ds.n)
    assert 8000 <= params.defocus_u.min() and params.defocus_v.max() <= 20000 + 500
    assert np.ptp(params.defocus_u - params.defocus_v) > 0  # astigmatic, different per image
    volume = mrcfile.read(volume_file)
    expected = apply_ctf(project(volume, ds.quaternions, ds.image_size), params, 3.0)
    np.testing.assert_allclose(ds.images("clean"), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert ds.pixel_size == 3.0
    # The CTF has its own random stream: orientations stay those of the CTF-free dataset.
    plain = read_dataset(simulate_dataset(config(volume_file), tmp_path / "plain.h5", progress=False))
    np.testing.assert_array_equal(plain.quaternions, ds.quaternions)
    assert plain.ctf == {} and plain.cache_key != ds.cache_key


def test_ctf_copied_from_a_star_file(volume_file, tmp_path):
    star = tmp_path / "p.star"
    optics = pd.DataFrame(
        {"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0], "rlnVoltage": [200.0], "rlnSphericalAberration": [2.0]}
    )
    optics["rlnAmplitudeContrast"] = 0.07
    particles = pd.DataFrame({"rlnDefocusU": [11000.0, 12000.0, 13000.0], "rlnOpticsGroup": [1, 1, 1]})
    starfile.write({"optics": optics, "particles": particles}, star)
    path = simulate_dataset(config(volume_file, ctf={"from_star": str(star)}), tmp_path / "s.h5", progress=False)
    ds = read_dataset(path)
    assert set(ds.ctf["rlnDefocusU"]) <= {11000.0, 12000.0, 13000.0} and ds.pixel_size == 2.0
    np.testing.assert_allclose(ds.ctf["rlnVoltage"], 200.0)
    np.testing.assert_allclose(ds.ctf["rlnDefocusV"], ds.ctf["rlnDefocusU"])
    with pytest.raises(ValueError, match="unknown ctf setting"):
        config(volume_file, ctf={"defocus": 1.0})
