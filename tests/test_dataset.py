"""The Dataset type and its HDF5 reader: lazy images, splits, kinds, validation of shapes and counts."""

import shutil

import h5py
import mrcfile
import numpy as np
import pytest

from cryo_orient.data import splits
from cryo_orient.data.dataset import Dataset, read_dataset
from cryo_orient.simulation.simulate import SimulationConfig, simulate_dataset
from cryo_orient.validation import InputError

N = 48


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    v = np.zeros((12, 12, 12), dtype=np.float32)
    v[3:8, 4:10, 2:9] = rng.random((5, 6, 7))
    volume = folder / "blob.mrc"
    with mrcfile.new(volume) as m:
        m.set_data(v)
        m.voxel_size = 2.5
    base = dict(volume=str(volume), n_projections=N, seed=1)
    paths = {
        "clean": simulate_dataset(SimulationConfig(**base), folder / "clean.h5", progress=False),
        "noisy": simulate_dataset(
            SimulationConfig(**base, noise_variance=2.0, store_clean=True), folder / "noisy.h5", progress=False
        ),
        "noisy_only": simulate_dataset(
            SimulationConfig(**base, noise_variance=2.0), folder / "noisy_only.h5", progress=False
        ),
        "shifted": simulate_dataset(
            SimulationConfig(**base, shift_mode="circular", shift_limit=2.0, store_clean=True),
            folder / "shifted.h5",
            progress=False,
        ),
    }
    return folder, paths


def test_reads_what_the_simulator_wrote(files):
    _, paths = files
    ds = read_dataset(paths["noisy"])
    assert isinstance(ds, Dataset) and len(ds) == ds.n == N
    assert ds.quaternions.shape == (N, 4) and ds.euler.shape == (N, 3) and ds.shifts.shape == (N, 2)
    assert ds.pixel_size == pytest.approx(2.5) and ds.image_size == ds.images().shape[-1]
    assert ds.noise_variance == 2.0 and ds.has_clean and not ds.shifted
    assert dict(ds.ctf) == {}
    assert ds.config["n_projections"] == N and "version" in ds.provenance
    with h5py.File(paths["noisy"]) as f:
        np.testing.assert_array_equal(ds.images("standardized"), f["projections"][()])
        np.testing.assert_array_equal(ds.images("clean"), f["clean"][()].astype(np.float64))
        mean, std = f.attrs["standardization_mean"], f.attrs["standardization_std"]
        np.testing.assert_array_equal(ds.images("noisy"), f["projections"][()].astype(np.float64) * std + mean)
        assert ds.cache_key == f.attrs["cache_key"]


def test_splits_are_table_1s_and_read_only_their_rows(files):
    _, paths = files
    ds = read_dataset(paths["noisy"])
    train, val, test = splits.train_val_test_split(N)
    for name, index in (("train", train), ("val", val), ("test", np.sort(test)), ("all", np.arange(N))):
        part = ds.split(name)
        np.testing.assert_array_equal(part.index, index)
        np.testing.assert_array_equal(part.quaternions, ds.quaternions[index])
        np.testing.assert_array_equal(part.images("standardized"), ds.images("standardized")[index])
        np.testing.assert_array_equal(part.images("clean", [2, 0]), ds.images("clean")[index[[2, 0]]])
    # A subset of a subset indexes the file's rows, not the view's positions twice.
    sub = ds.split("test").subset(np.array([1, 0]))
    np.testing.assert_array_equal(sub.index, np.sort(test)[[1, 0]])
    with pytest.raises(InputError, match="split must be one of"):
        ds.split("validation")
    with pytest.raises(InputError, match="out of range"):
        ds.subset(np.array([N]))


def test_image_kinds_and_their_refusals(files):
    _, paths = files
    clean = read_dataset(paths["clean"])
    # Noiseless and centred: the stored images are the clean ones.
    np.testing.assert_array_equal(clean.images("clean"), clean.images("noisy"))
    with pytest.raises(InputError, match="no clean projections"):
        read_dataset(paths["noisy_only"]).images("clean")
    shifted = read_dataset(paths["shifted"])
    assert shifted.shifted
    with pytest.raises(InputError, match="shifted"):
        shifted.images("noisy")
    assert shifted.images("clean").shape == (N, shifted.image_size, shifted.image_size)
    with pytest.raises(InputError, match="image kind must be one of"):
        clean.images("unstandardized")
    # "raw" is "noisy" without the refusal of shifted images
    np.testing.assert_array_equal(clean.images("raw"), clean.images("noisy"))
    assert shifted.images("raw").shape == (N, shifted.image_size, shifted.image_size)


def _copy_with(files, name, edit):
    folder, paths = files
    target = folder / name
    shutil.copy(paths["noisy"], target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


@pytest.mark.parametrize(
    "name, edit, match",
    [
        # The case: a file with 43 quaternions for 48 images.
        (
            "short_q.h5",
            lambda f: (f.__delitem__("quaternions"), f.create_dataset("quaternions", data=np.ones((43, 4)))),
            r"quaternions must have shape \(48, 4\).*got \(43, 4\)",
        ),
        (
            "wide_shifts.h5",
            lambda f: (f.__delitem__("shifts"), f.create_dataset("shifts", data=np.zeros((N, 3)))),
            r"shifts must have shape \(48, 2\)",
        ),
        ("nan_euler.h5", lambda f: f["euler"].__setitem__(0, [np.nan, 0, 0]), "euler hold NaN"),
        (
            "short_clean.h5",
            lambda f: (f.__delitem__("clean"), f.create_dataset("clean", data=np.zeros((40, 3, 3)))),
            "clean images",
        ),
        ("no_std.h5", lambda f: f.attrs.__delitem__("standardization_std"), r"lacks \['standardization_std'\]"),
        ("bad_config.h5", lambda f: f.attrs.__setitem__("config", "{not json"), "'config' attribute is not valid JSON"),
    ],
)
def test_inconsistent_files_are_refused_with_the_reason(files, name, edit, match):
    path = _copy_with(files, name, edit)
    with pytest.raises(InputError, match=match) as err:
        read_dataset(path)
    assert str(path) in str(err.value) and "simulate it again" in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cryo-orient simulate"):
        read_dataset(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_dataset(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not a cryo_orient dataset"):
        read_dataset(tmp_path / "other.h5")
    (tmp_path / "p.txt").write_text("data_\n")
    with pytest.raises(InputError, match="no reader for '.txt'"):
        read_dataset(tmp_path / "p.txt")


def test_inputs_are_not_modified_and_views_are_independent(files):
    _, paths = files
    ds = read_dataset(paths["noisy"])
    images = ds.images("clean")
    images[:] = 0
    assert np.any(ds.images("clean"))  # every call reads anew
    part = ds.split("test")
    assert part.quaternions is not ds.quaternions and len(ds) == N
