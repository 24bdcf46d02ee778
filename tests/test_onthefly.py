"""Training one estimator on a library of maps: pseudo-molecules, pairs simulated on the fly
(deterministic per seed, epoch and batch), train_general's run folder and its resume, the CLI."""

import json
import pickle

import numpy as np
import pytest

from cryo_orient import cli
from cryo_orient.data import write_volume
from cryo_orient.data.dataset import read_dataset
from cryo_orient.estimation import onthefly, siamese
from cryo_orient.geometry import rotations
from cryo_orient.simulation import onthefly as sim
from cryo_orient.simulation import pseudomolecules as pm
from cryo_orient.simulation.simulate import simulate_dataset
from cryo_orient.validation import InputError

# Bright, CTF-free, unshifted pairs: a tiny network learns something in a few short epochs.
EASY = dict(snr_db_min=10.0, snr_db_max=20.0, ctf=None, shift_limit=0.0, scale_levels=2)
TINY = dict(input_size=24, n_features=16, batch_size=64, epochs=4, learning_rate=1e-3, seed=1)


@pytest.fixture(scope="module")
def mrc_map(tmp_path_factory):
    """A pseudo-molecule written as an MRC file (a map the library reads from a path)."""
    path = tmp_path_factory.mktemp("maps") / "pseudo.mrc"
    write_volume(path, pm.pseudo_molecule(40, 3.0, rng=np.random.default_rng(11), n_residues=250), 3.0)
    return path


@pytest.fixture(scope="module")
def library(mrc_map):
    return sim.MapLibrary([mrc_map], n_pseudo_molecules=2, seed=5, pseudo_box=40, pseudo_pixel_size=3.0)


# --------------------------------------------------------------------------- pseudo-molecules


def test_pseudo_molecule_is_deterministic_centred_non_negative_and_of_its_box():
    a = pm.pseudo_molecule(48, 3.0, rng=np.random.default_rng(3))
    b = pm.pseudo_molecule(48, 3.0, rng=np.random.default_rng(3))
    c = pm.pseudo_molecule(48, 3.0, rng=np.random.default_rng(4))
    assert a.shape == (48, 48, 48) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() > 0
    grid = np.indices(a.shape).reshape(3, -1)
    centre = (grid * a.ravel()).sum(axis=1) / a.sum()
    np.testing.assert_allclose(centre, [24, 24, 24], atol=0.5)
    # The particle fits the box: hardly any density near its faces.
    edge = np.ones(a.shape, bool)
    edge[3:-3, 3:-3, 3:-3] = False
    assert a[edge].sum() < 0.01 * a.sum()


def test_pseudo_atoms_are_a_chain_of_ca_steps_with_a_protein_like_radius_of_gyration():
    for seed in range(3):
        atoms = pm.pseudo_atoms(300, rng=np.random.default_rng(seed), helix_fraction=0.5)
        assert atoms.shape == (600, 3)  # Cα trace, then one side chain per residue
        ca = atoms[:300]
        np.testing.assert_allclose(np.linalg.norm(np.diff(ca, axis=0), axis=1), pm.CA_STEP, rtol=1e-9)
        ratio = pm.radius_of_gyration(ca) / pm.target_radius_of_gyration(300)
        assert 0.75 < ratio < 1.3, ratio
        d = np.linalg.norm(ca[:, None] - ca[None], axis=2)[np.triu_indices(300, 3)]
        assert (d < 3.0).mean() < 0.005  # excluded volume: few atoms on top of each other
    # Several domains spread the same number of residues wider.
    one = pm.radius_of_gyration(pm.pseudo_atoms(300, rng=np.random.default_rng(0), n_domains=1))
    three = pm.radius_of_gyration(pm.pseudo_atoms(300, rng=np.random.default_rng(0), n_domains=3))
    assert three > one


def test_the_requested_size_sets_the_particles_size():
    small = pm.pseudo_molecule(64, 2.0, rng=np.random.default_rng(0), n_residues=80, n_domains=1)
    large = pm.pseudo_molecule(64, 2.0, rng=np.random.default_rng(0), n_residues=800, n_domains=1)
    assert sim.particle_diameter(small, 2.0) < 0.8 * sim.particle_diameter(large, 2.0)
    assert large.sum() > 5 * small.sum()  # the mass grows with the residues


def test_render_atoms_puts_an_atom_at_the_projection_centre():
    v = pm.render_atoms(np.zeros((1, 3)), 15, 2.0, 6.0)
    assert np.unravel_index(np.argmax(v), v.shape) == (7, 7, 7)
    sigma = 6.0 / (np.pi * np.sqrt(2)) / 2.0
    np.testing.assert_allclose(v.sum(), (2 * np.pi * sigma**2) ** 1.5, rtol=1e-3)
    # x, y, z of a position are the array's last, middle and first axes.
    moved = pm.render_atoms(np.array([[2.0, -4.0, 6.0]]), 15, 2.0, 6.0)
    assert np.unravel_index(np.argmax(moved), v.shape) == (10, 5, 8)


def test_pseudo_molecule_rejects_bad_arguments():
    with pytest.raises(InputError, match="box"):
        pm.pseudo_molecule(4, 2.0, rng=0)
    with pytest.raises(InputError, match="residues"):
        pm.pseudo_atoms(50, rng=0, n_domains=3)
    with pytest.raises(InputError, match="helix_fraction"):
        pm.pseudo_atoms(50, rng=0, helix_fraction=1.5)


# --------------------------------------------------------------------------- pairs on the fly


def test_the_relative_rotations_spread_the_distances_flat():
    d = rotations.distance(np.array([0, 0, 0, 1.0]), sim.relative_rotations(20000, np.random.default_rng(0)))
    counts, _ = np.histogram(d, bins=8, range=(0, np.pi))
    np.testing.assert_allclose(counts, 2500, rtol=0.1)


def test_a_batch_is_a_function_of_its_generator_and_its_labels_are_the_distances(library):
    a = sim.simulate_pairs(library, 12, 24, rng=np.random.default_rng([0, 3, 1, 2]))
    b = sim.simulate_pairs(library, 12, 24, rng=np.random.default_rng([0, 3, 1, 2]))
    c = sim.simulate_pairs(library, 12, 24, rng=np.random.default_rng([0, 3, 1, 3]))
    for field in ("images_a", "images_b", "labels", "quaternions_a", "maps", "snr_db"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images_a, c.images_a)
    # A library sent to a worker process (pickled, without its cache) makes the same batch.
    copied = sim.simulate_pairs(pickle.loads(pickle.dumps(library)), 12, 24, rng=np.random.default_rng([0, 3, 1, 2]))
    assert np.array_equal(copied.images_a, a.images_a) and np.array_equal(copied.images_b, a.images_b)
    assert a.images_a.shape == a.images_b.shape == (12, 24, 24) and a.images_a.dtype == np.float32
    assert np.all(np.isfinite(a.images_a)) and np.all(np.isfinite(a.images_b))
    both = np.stack([a.images_a, a.images_b])
    assert abs(both.mean()) < 1e-4 and abs(both.std() - 1) < 1e-4  # standardised over the batch
    np.testing.assert_allclose(a.labels, rotations.distance(a.quaternions_a, a.quaternions_b), atol=1e-6)
    np.testing.assert_array_equal(
        a.labels,
        siamese._pair_labels(
            np.concatenate([a.quaternions_a, a.quaternions_b]), np.stack([np.arange(12), np.arange(12, 24)], 1)
        ),
    )
    assert len(np.unique(a.maps)) <= 2  # maps_per_batch
    # One scale and one SNR per map of the batch, the pixel size from the particle's diameter.
    for m in np.unique(a.maps):
        rows = a.maps == m
        assert len(np.unique(a.pixel_size[rows])) == 1 and len(np.unique(a.snr_db[rows])) == 1
        fill = library.maps[m].diameter / (a.pixel_size[rows][0] * 24)
        assert 0.4 - 1e-9 <= fill <= 0.8 + 1e-9


def test_the_images_are_the_projections_of_the_labels_orientations(library):
    # Noise-free, CTF-free, unshifted: each image is the standardised projection at its orientation.
    clean = dict(snr_db_min=100.0, snr_db_max=100.0, ctf=None, shift_limit=0.0, maps_per_batch=1, scale_levels=1)
    batch = sim.simulate_pairs(library, 4, 24, clean, rng=np.random.default_rng(7))
    m = batch.maps[0]
    volume = library.volume_at(m, batch.pixel_size[0], 24)
    from cryo_orient.tomography.projection import project

    expected = project(volume, np.concatenate([batch.quaternions_a, batch.quaternions_b]), 24, "nufft")
    expected = (expected - expected.mean()) / expected.std()
    got = np.concatenate([batch.images_a, batch.images_b])
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_the_ctf_is_applied_and_phase_flipped(library):
    base = dict(snr_db_min=100.0, snr_db_max=100.0, shift_limit=0.0, maps_per_batch=1, scale_levels=1)
    plain = sim.simulate_pairs(library, 6, 24, base | {"ctf": None}, rng=np.random.default_rng(1))
    flipped = sim.simulate_pairs(library, 6, 24, base, rng=np.random.default_rng(1))
    assert np.array_equal(plain.quaternions_a, flipped.quaternions_a)
    assert not np.allclose(plain.images_a, flipped.images_a, atol=1e-2)
    # Phase flipping leaves a low-passed-like image positively correlated with the CTF-free one.
    r = np.corrcoef(plain.images_a.ravel(), flipped.images_a.ravel())[0, 1]
    assert r > 0.3


def test_the_library_reads_registered_maps(data_mirror, monkeypatch):
    monkeypatch.setenv("DATA_MIRROR", str(data_mirror))
    lib = sim.MapLibrary(["hand"])
    assert lib.maps[0].volume.shape == (64, 64, 64) and lib.fingerprints[0]["name"] == "hand"
    batch = sim.simulate_pairs(lib, 4, 24, rng=0)
    assert np.all(np.isfinite(batch.images_a))


def test_bad_library_and_settings_are_input_errors(library):
    with pytest.raises(InputError, match="empty"):
        sim.MapLibrary([])
    with pytest.raises(InputError, match="fill_min"):
        sim.OnTheFlyConfig(fill_min=0.9, fill_max=0.5)
    with pytest.raises(InputError, match="unknown ctf setting"):
        sim.OnTheFlyConfig(ctf={"from_star": "x.star"})
    with pytest.raises(InputError, match="shift_limit"):
        sim.simulate_pairs(library, 2, 16, {"shift_limit": 8.0}, rng=0)


def test_the_pydataset_batches_depend_on_seed_epoch_and_index_only(library):
    import keras

    def make(epoch, seed=0):
        return onthefly.pair_dataset(library, EASY, size=24, batch_size=6, steps=3, seed=seed, epoch=epoch)

    ds = make(1)
    assert isinstance(ds, keras.utils.PyDataset) and len(ds) == 3
    (a, b), labels = ds[1]
    assert a.shape == b.shape == (6, 24, 24, 1) and labels.shape == (6,)
    (a2, b2), labels2 = make(1)[1]  # a fresh dataset, as after a resume
    assert np.array_equal(a, a2) and np.array_equal(b, b2) and np.array_equal(labels, labels2)
    assert not np.array_equal(ds[0][0][0], a)
    assert not np.array_equal(make(2)[1][0][0], a)
    assert not np.array_equal(make(1, seed=1)[1][0][0], a)
    batch = ds.batch(1)
    np.testing.assert_array_equal(batch.labels, labels)
    np.testing.assert_allclose(labels, rotations.distance(batch.quaternions_a, batch.quaternions_b), atol=1e-6)
    with pytest.raises(IndexError):
        ds.batch(3)


# --------------------------------------------------------------------------- train_general


def _train(library, out_dir, **config):
    return onthefly.train_general(
        library, TINY | config, out_dir, simulation=EASY, steps_per_epoch=6, n_val_pairs=64, progress=False
    )


@pytest.mark.slow
def test_train_general_learns_writes_a_run_folder_and_resumes_exactly(library, mrc_map, tmp_path, monkeypatch):
    full = _train(library, tmp_path / "full", feature_distance="squared_cosine")
    assert full.history["epoch"] == [1, 2, 3, 4]
    assert full.history["loss"][-1] < full.history["loss"][0]
    assert full.history["pairs_seen"][-1] == 4 * 6 * 64
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["stop_reason"] == "epochs" and run["provenance"]["trainer"] == "train_general"
    assert [m["name"] for m in run["identity"]["library"]] == [str(mrc_map), "pseudo-5-0", "pseudo-5-1"]

    calls = {"n": 0}
    original = onthefly._pair_metrics

    def dies_at_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(onthefly, "_pair_metrics", dies_at_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(library, tmp_path / "cut", feature_distance="squared_cosine")
    monkeypatch.setattr(onthefly, "_pair_metrics", original)
    assert siamese.load_run(tmp_path / "cut").history["epoch"] == [1, 2]
    resumed = _train(library, tmp_path / "cut", feature_distance="squared_cosine")
    assert resumed.history["loss"] == full.history["loss"]  # bit-identical, not merely close
    assert resumed.history["val_mae"] == full.history["val_mae"]
    with pytest.raises(InputError, match="different training run"):
        _train(library, tmp_path / "cut", feature_distance="cosine")

    # The estimator of the folder embeds any dataset (resized to its input size).
    dataset = simulate_dataset(
        {"volume": str(mrc_map), "n_projections": 12, "size": 40, "seed": 2}, tmp_path / "d.h5", progress=False
    )
    estimator = siamese.SiameseEstimator.load(tmp_path / "cut")
    assert estimator.result.config.feature_distance == "squared_cosine"
    features = estimator.embed(read_dataset(dataset))
    assert features.shape == (12, 16) and np.all(np.isfinite(features))


def test_train_general_refuses_the_batch_regime(library):
    with pytest.raises(InputError, match="regime"):
        onthefly.train_general(library, {"regime": "batch"}, None, progress=False)


def test_cli_train_general(mrc_map, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-general", "--maps", str(mrc_map), "--pseudo-molecules", "1", "--epochs", "1"]
    argv += ["--steps-per-epoch", "2", "--batch-size", "4", "--input-size", "16", "--n-features", "8"]
    argv += ["--val-pairs", "8", "--simulation", "snr_db_min=-5", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert "1 epochs" in capsys.readouterr().out
    assert {"model.keras", "history.csv", "run.json"} <= {p.name for p in out.iterdir()}
    run = siamese.load_run(out)
    assert run.config.input_size == 16 and run.config.regime == "uniform"
    assert json.loads((out / "run.json").read_text())["identity"]["simulation"]["snr_db_min"] == -5


def test_cli_train_general_needs_maps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-general", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: nothing to train on; give --maps NAME_OR_MRC ... and/or --pseudo-molecules N"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-general", "--pseudo-molecules", "1", "--simulation", "snr", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "--simulation expects KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
