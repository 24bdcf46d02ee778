"""Map-free orientations (`cryo-orient orient ... --estimator DIR`): contrast without a reference,
the estimator's input correction, the command's outputs, its cache, and RELION's reading of them."""

import json
import shutil

import mrcfile
import numpy as np
import pytest

from cryo_orient import cli
from cryo_orient.data import load_volume, read_particles
from cryo_orient.estimation import make_estimator, onthefly
from cryo_orient.geometry import rotations
from cryo_orient.simulation.matching import blob_contrast
from cryo_orient.simulation.simulate import SimulationConfig, simulate_dataset
from cryo_orient.validation import InputError
from cryo_orient.workflow import pipeline
from cryo_orient.workflow.map_free import estimator_correction, orient_map_free
from cryo_orient.workflow.orient import OrientConfig
from stacks import make_stack, small_map

BOX = 32
# A few short epochs of a tiny network (it learns little: accuracy is not what these tests check).
TRAINING = dict(input_size=24, n_features=16, batch_size=64, epochs=2, learning_rate=1e-3, seed=1)
SIMULATION = dict(snr_db_min=0.0, snr_db_max=10.0, shift_limit=0.0, scale_levels=2)
RECOVERY = {"recovery_restarts": 1, "recovery_max_steps": 400, "reconstruction_iterations": 10}


@pytest.fixture(scope="module")
def reference(data_mirror):
    if not (data_mirror / "aspire-70s-ctf" / "map48.mrc").is_file():
        pytest.skip("no aspire-70s-ctf/map48.mrc in the data mirror")
    return small_map(data_mirror, BOX)


@pytest.fixture(scope="module")
def estimator(tmp_path_factory, reference):
    """A general estimator's run folder, trained on the reference map with a CTF (phase-flipped)."""
    volume, pixel = reference
    folder = tmp_path_factory.mktemp("general")
    path = folder / "map.mrc"
    with mrcfile.new(path) as m:
        m.set_data(volume.astype(np.float32))
        m.voxel_size = pixel
    onthefly.train_general(
        [str(path)], TRAINING, folder / "run", simulation=SIMULATION, steps_per_epoch=4, n_val_pairs=64, progress=False
    )
    return folder / "run"


def test_blob_contrast_tells_relions_contrast_from_the_opposite(tmp_path, reference):
    volume, pixel = reference
    relion = make_stack(tmp_path / "relion", volume, pixel, n=300, snr=0.2)
    inverted = make_stack(tmp_path / "inverted", volume, pixel, n=300, snr=0.2, invert=True)
    invert, correlation = blob_contrast(read_particles(relion["star"]))
    assert not invert and correlation > 0.5, correlation
    invert, correlation = blob_contrast(read_particles(inverted["star"]))
    assert invert and correlation < -0.5, correlation
    # Given choices are kept (with the measured correlation, for the record).
    assert blob_contrast(read_particles(inverted["star"]), invert="no")[0] is False


def test_blob_contrast_refuses_a_stack_without_a_blob(tmp_path, reference):
    volume, pixel = reference
    noise = make_stack(tmp_path, volume, pixel, n=100, snr=1e-6, seed=3)
    with pytest.raises(InputError, match="give --invert-contrast yes or no"):
        blob_contrast(read_particles(noise["star"]))


def test_the_input_correction_follows_the_estimators_training(tmp_path, estimator):
    config = OrientConfig(ctf_correction="wiener")
    assert estimator_correction(estimator, config) == "phase_flip"  # trained on phase-flipped batches
    run = json.loads((estimator / "run.json").read_text())
    run["identity"]["simulation"]["ctf"] = None
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert estimator_correction(tmp_path, config) == "none"
    run["identity"]["trainer"] = "train"
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert estimator_correction(tmp_path, config) == "wiener"  # a dataset's run: as configured


@pytest.mark.slow
def test_map_free_orient_writes_relions_angles_and_caches(tmp_path, reference, estimator):
    volume, pixel = reference
    truth = make_stack(tmp_path / "stack", volume, pixel, n=200, snr=1.0, shift_sigma=0.0, invert=True)
    out = tmp_path / "out"
    result = orient_map_free(truth["star"], estimator, out, config=RECOVERY, progress=False, log=lambda s: None)
    record = json.loads((out / "orient.json").read_text())
    assert record["mode"] == "map-free" and record["contrast"]["invert"] is True
    assert record["input_correction"] == "phase_flip" and set(record["seconds"]) == {"embed", "recover", "reconstruct"}
    written = read_particles(out / "particles.star")
    assert written.n == 200 and (out / "particles.mrcs").is_file()  # the inverted images, RELION's contrast
    assert rotations.distance(written.quaternions, result["quaternions"]).max() < 1e-5
    mapped, voxel = load_volume(out / "map.mrc")
    assert voxel == pytest.approx(pixel) and mapped.shape == (BOX,) * 3
    again = orient_map_free(truth["star"], estimator, out, config=RECOVERY, progress=False, log=lambda s: None)
    np.testing.assert_array_equal(again["quaternions"], result["quaternions"])
    assert again["record"]["seconds"] == {}  # every stage from the cache

    # The files are written by orient's own writer (workflow.orient.write_outputs), whose angles,
    # origins and contrast RELION reads right (tests/test_orient.py runs relion_reconstruct on them).


@pytest.mark.slow
def test_map_free_orient_refines_from_its_own_half_maps(tmp_path, reference, estimator):
    volume, pixel = reference
    truth = make_stack(tmp_path / "stack", volume, pixel, n=120, snr=1.0, shift_sigma=1.0)
    out = tmp_path / "out"
    settings = {"max_iterations": 1, "reconstruction_iterations": 5, "local_steps": 2}
    result = orient_map_free(
        truth["star"], estimator, out, config=RECOVERY, refine=settings, progress=False, log=lambda s: None
    )
    assert {"half1.mrc", "half2.mrc", "fsc.csv", "refine.json", "particles.star"} <= {p.name for p in out.iterdir()}
    assert result["record"]["refinement"]["rounds"] == 1 and result["shifts"].shape == (120, 2)
    written = read_particles(out / "particles.star")
    assert set(written.metadata["star"].particles["rlnRandomSubset"]) == {1, 2}


def test_cli_orient_needs_one_of_reference_and_estimator(tmp_path, capsys):
    for extra in ([], ["--reference", "m.mrc", "--estimator", "run"]):
        with pytest.raises(cli.Exit) as err:
            cli.main(["orient", "p.star", "--out", str(tmp_path), *extra])
        assert err.value.code == 2 and "give either --reference" in capsys.readouterr().err
    with pytest.raises(cli.Exit) as err:
        cli.main(["orient", "p.star", "--estimator", "run", "--epochs", "3", "--out", str(tmp_path)])
    assert err.value.code == 2 and "--epochs: no use with --estimator" in capsys.readouterr().err


def test_cli_map_free_orient_on_a_missing_estimator_is_one_line(tmp_path, reference, capsys):
    volume, pixel = reference
    truth = make_stack(tmp_path / "stack", volume, pixel, n=20)
    with pytest.raises(cli.Exit) as err:
        cli.main(["orient", str(truth["star"]), "--estimator", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    message = capsys.readouterr().err.strip()
    assert err.value.code != 0 and len(message.splitlines()) == 1 and "is not a training run" in message


def test_a_pretrained_estimator_runs_the_pipeline(tmp_path, reference, estimator):
    volume, pixel = reference
    path = tmp_path / "map.mrc"
    with mrcfile.new(path) as m:
        m.set_data(volume.astype(np.float32))
        m.voxel_size = pixel
    dataset = simulate_dataset(
        SimulationConfig(volume=str(path), n_projections=60, seed=4), tmp_path / "d.h5", progress=False
    )
    settings = dict(
        estimator="pretrained",
        estimator_options={"path": str(estimator)},
        recovery_restarts=1,
        recovery_max_steps=200,
        reconstruction_iterations=3,
        gauge_images=10,
        gauge_pairs=100,
        gauge_candidates=20,
    )
    case = pipeline.run_case(dataset, settings, cache_dir=tmp_path / "cache", progress=False, log=None)
    described = case["summary"]["estimator"]
    assert described["name"] == "pretrained" and described["path"] == str(estimator)
    assert described["key"].startswith("pretrained-") and np.isfinite(case["summary"]["E_OR_median"])
    # The key is the run's (identity and history), not the folder's name: a copy has the same key.
    copy = tmp_path / "copy"
    shutil.copytree(estimator, copy)
    a = make_estimator("pretrained", path=estimator).fit(None)
    b = make_estimator("pretrained", path=copy).fit(None)
    assert a.key == b.key == described["key"]
    with pytest.raises(InputError, match="needs estimator_options.path"):
        make_estimator("pretrained")
