"""Orientations for a foreign particle stack: matching it, shifts, CTF-corrected views, `cryo-orient orient`."""

import json
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest

from cryo_orient.data import load_volume, read_particles, write_volume
from cryo_orient.data.dataset import read_dataset
from cryo_orient.geometry import rotations
from cryo_orient.orientation import recovery
from cryo_orient.orientation.alignment import align_rigid
from cryo_orient.orientation.recovery import RecoveryResult
from cryo_orient.orientation.refine import RefineConfig
from cryo_orient.orientation.shifts import center_images, estimate_shifts
from cryo_orient.simulation.matching import match_stack
from cryo_orient.tomography import fsc
from cryo_orient.tomography.ctf import phase_flip
from cryo_orient.tomography.projection import project
from cryo_orient.validation import InputError
from cryo_orient.workflow.orient import (
    ANCHOR_WARNING_DEG,
    LEARNED_MAE_RATIO,
    OrientConfig,
    corrected,
    orient,
    quality,
    refine_config_for,
)
from stacks import make_stack, small_map


@pytest.fixture(scope="module")
def reference(data_mirror):
    if not (data_mirror / "aspire-70s-ctf" / "map48.mrc").is_file():
        pytest.skip("no aspire-70s-ctf/map48.mrc in the data mirror")
    return small_map(data_mirror, 32)


def test_shifts_found_by_cross_correlation(reference):
    volume, pixel = reference
    rng = np.random.default_rng(0)
    refs = project(volume, rotations.uniform_so3(20, rng=1), 32, "nufft")
    truth = rng.uniform(-4, 4, (20, 2))
    images = center_images(refs, -truth) + rng.normal(0, 0.2 * refs.std(), refs.shape)
    found, scores = estimate_shifts(images, refs, max_shift=6)
    assert np.abs(found - truth).max() < 0.3 and scores.min() > 0.5
    # Moving back and forth is exact but for the Nyquist row and column of even sizes (their phase
    # ramp is not Hermitian, so the real part drops half of it).
    back = center_images(center_images(refs, truth), -truth)
    assert np.abs(back - refs).max() < 0.02 * np.abs(refs).max()
    # a search radius below the true offset cannot find it
    small, _ = estimate_shifts(images, refs, max_shift=1)
    assert np.hypot(*small.T).max() <= 1.0 + 1e-9


@pytest.mark.parametrize("invert", [False, True])
def test_match_stack_measures_contrast_noise_and_offsets(tmp_path, reference, invert):
    volume, pixel = reference
    truth = make_stack(tmp_path, volume, pixel, n=400, snr=0.3, shift_sigma=2.0, invert=invert)
    stack = read_particles(truth["star"])
    model = match_stack(stack, volume, rng=0, n_images=400)
    assert model.invert is invert
    assert abs(model.contrast_correlation) > 0.5
    assert model.noise_variance == pytest.approx(truth["noise_variance"], rel=0.1)
    assert model.signal_scale == pytest.approx(1.0, rel=0.25)
    assert model.shift_sigma == pytest.approx(2.0, abs=0.5)
    forced = match_stack(stack, volume, rng=0, n_images=100, invert="no")
    assert forced.invert is False and forced.invert_choice == "no"
    with pytest.raises(InputError, match="reference must be a 32³ map"):
        match_stack(stack, volume[:-1], rng=0)


def test_corrected_view_flips_and_inverts(tmp_path, reference):
    volume, pixel = reference
    truth = make_stack(tmp_path, volume, pixel, n=20, invert=True)
    stack = read_particles(truth["star"])
    view = corrected(stack, "phase_flip", invert=True)
    raw = stack.images("raw", index=[3, 7])
    np.testing.assert_allclose(
        view.images("raw", index=[3, 7]), phase_flip(-raw, truth["params"].subset([3, 7]), pixel), rtol=1e-4, atol=1e-5
    )
    assert view.cache_key != stack.cache_key and view.standardization[0] == -stack.standardization[0]
    assert corrected(stack, "none") is stack


def test_orient_config_checks():
    with pytest.raises(InputError, match="ctf_correction must be one of"):
        OrientConfig(ctf_correction="flip")
    with pytest.raises(InputError, match="n_train must be a positive integer"):
        OrientConfig(n_train=True)
    with pytest.raises(InputError, match="unknown orient setting"):
        OrientConfig.from_dict({"epoch": 3})


def test_quality_warns_on_an_estimator_that_learned_little_and_on_lost_anchors():
    good = quality(0.2, 0.53, [4.0, 6.0, 50.0])
    assert good["warnings"] == [] and good["anchors_median_deg"] == pytest.approx(6.0)
    assert good["val_mae_ratio"] == pytest.approx(0.2 / 0.53)
    learned_little = quality(LEARNED_MAE_RATIO * 0.53 + 0.01, 0.53, [5.0])
    assert len(learned_little["warnings"]) == 1 and "learned little" in learned_little["warnings"][0]
    lost = quality(0.2, 0.53, [ANCHOR_WARNING_DEG + 1.0] * 3)
    assert len(lost["warnings"]) == 1 and "anchors" in lost["warnings"][0]
    assert len(quality(0.56, 0.53, [120.0])["warnings"]) == 2


def test_rigid_alignment_forgives_rotation_and_hand_only():
    q = rotations.uniform_so3(200, rng=0)
    g = rotations.uniform_so3(1, rng=1)[0]
    k = np.array([0.0, 0.0, 1.0, 0.0])
    mirrored = rotations.multiply(rotations.multiply(k, rotations.multiply(q, g)), k)
    fit = align_rigid(q, mirrored)
    assert fit.mirrored and fit.median_error_deg < 1e-6
    assert align_rigid(q, rotations.conjugate(q)).median_error_deg > 30  # R -> Rᵀ: a wrong convention
    assert align_rigid(q, rotations.multiply(g, q)).median_error_deg > 30  # a left factor is not physical


TINY = {
    "n_train": 600,
    "epochs": 3,
    "n_features": 32,
    "n_anchors": 100,
    "recovery_restarts": 1,
    "recovery_max_steps": 1500,
    "reconstruction_iterations": 10,
    "n_measure": 200,
}


@pytest.mark.slow
def test_orient_end_to_end(tmp_path, data_mirror, reference):
    """A stack with CTF, offsets and inverted contrast; the reference at another voxel size (48 px of
    5 Å for a stack of 32 px of 7.5 Å). The written STAR holds our angles and origins and the input's columns."""
    volume, pixel = reference
    truth = make_stack(tmp_path / "in", volume, pixel, n=300, snr=1.0, shift_sigma=1.5, invert=True)
    out = tmp_path / "out"
    result = orient(truth["star"], data_mirror / "aspire-70s-ctf" / "map48.mrc", out, config=TINY, progress=False)
    record = json.loads((out / "orient.json").read_text())
    assert record["stack_model"]["invert"] is True and record["pixel_size"] == pixel
    assert set(record["seconds"]) >= {"match", "simulate", "train", "embed", "recover", "shifts", "reconstruct"}
    written = read_particles(out / "particles.star")
    assert written.n == 300 and written.pixel_size == pytest.approx(pixel)
    assert rotations.distance(written.quaternions, result["quaternions"]).max() < 1e-5
    np.testing.assert_allclose(written.shifts, result["shifts"], atol=1e-5)
    assert "rlnRandomSubset" in written.metadata["star"].particles  # the input's columns are kept
    # the inverted images were written beside the STAR file, so RELION sees RELION's contrast
    assert (out / "particles.mrcs").is_file()
    # (No accuracy is asserted: 3 epochs on 600 images teach the estimator nothing; `make foreign`
    # measures accuracy at full size.) That the orientations are not to be trusted is said, though:
    # the anchors recovered with the stack are far from their known orientations.
    checks = record["quality"]
    assert checks["anchors_median_deg"] > ANCHOR_WARNING_DEG
    assert any("anchors" in line for line in checks["warnings"])
    assert 0.4 < record["estimator"]["constant_val_mae"] < 0.7
    mapped, voxel = load_volume(out / "map.mrc")
    assert voxel == pytest.approx(pixel) and mapped.shape == (32, 32, 32)

    # a rerun loads every stage from the cache and writes the same orientations
    again = orient(truth["star"], data_mirror / "aspire-70s-ctf" / "map48.mrc", out, config=TINY, progress=False)
    np.testing.assert_array_equal(again["quaternions"], result["quaternions"])
    assert sum(again["record"]["seconds"].values()) < 0.2 * sum(record["seconds"].values())
    assert again["record"]["stage_seconds"] == record["stage_seconds"]  # what the stages cost when computed


@pytest.mark.slow
def test_orient_writes_what_relion_reads(tmp_path, data_mirror, reference, monkeypatch):
    """Everything after the estimator, judged by RELION: the gauge, the offsets, the CTF
    reconstruction and the written angles and origins. Recovery is replaced by an oracle (the true
    orientations of the anchors and the particles, each 2° off), because on the orientations of an
    estimator that learned nothing the two reconstructions are ill-posed and need not agree (a
    tiny run's orientations may cluster: RELION's map and ours then differed to an FSC of 0.38 on
    CI, and 0.70 to 0.94 on the development machine with other seeds)."""
    if shutil.which("relion_reconstruct") is None:
        pytest.skip("RELION is not installed (apt-get install relion): relion_reconstruct's agreement not checked")
    volume, pixel = reference
    truth = make_stack(tmp_path / "in", volume, pixel, n=300, snr=1.0, shift_sigma=1.5, invert=True)
    out = tmp_path / "out"
    n_anchors = TINY["n_anchors"]

    def oracle(distance, n, **_):
        (training_file,) = (out / "cache" / "training").glob("*.h5")
        training = read_dataset(training_file)
        anchors = training.quaternions[training.split_index("test")[:n_anchors]]
        q = np.concatenate([anchors, truth["quaternions"]])
        assert n == len(q)
        q = rotations.perturb(q, 2.0, rng=np.random.default_rng(5))
        return RecoveryResult(q, np.zeros(1), 1, True, "tolerance", 0.0, {})

    monkeypatch.setattr(recovery, "recover", oracle)
    result = orient(truth["star"], data_mirror / "aspire-70s-ctf" / "map48.mrc", out, config=TINY, progress=False)
    written = read_particles(out / "particles.star")
    # the written angles are the truth's, up to the oracle's 2° and the gauge's fit (no O(4) freedom)
    errors = np.degrees(rotations.distance(written.quaternions, truth["quaternions"]))
    assert np.median(errors) < 3.0, np.median(errors)
    shift_error = np.sqrt(np.mean(np.sum((written.shifts - truth["shifts"]) ** 2, axis=1)))
    assert shift_error < 0.5, shift_error
    mapped, _ = load_volume(out / "map.mrc")
    subprocess.run(
        ["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf", "--angpix", str(pixel)],
        cwd=out,
        check=True,
        capture_output=True,
    )
    curve = fsc.fsc(mrcfile.read(out / "relion.mrc"), mapped, pixel)
    half = curve.frequency <= 0.5 * curve.frequency.max()
    # Measured: 0.995 (the lowest shell to half Nyquist); median angle error 2.06°, offsets 0.11 px RMS.
    assert curve.correlation[half].min() >= 0.9, curve.correlation[half]
    assert result["record"]["stack_model"]["invert"] is True
    # the anchors are the oracle's 2° off: no warning about them
    assert result["record"]["quality"]["anchors_median_deg"] < 5.0
    assert not any("anchors" in line for line in result["record"]["quality"]["warnings"])


def test_orient_refuses_bad_references(tmp_path, data_mirror, reference):
    volume, pixel = reference
    truth = make_stack(tmp_path, volume, pixel, n=20)
    flat = tmp_path / "flat.mrc"
    write_volume(flat, np.ones((32, 32, 30)), pixel)
    with pytest.raises(InputError, match="give a cubic map"):
        orient(truth["star"], flat, tmp_path / "out", config=TINY, progress=False)
    bare = tmp_path / "bare.mrc"
    with mrcfile.new(bare) as m:
        m.set_data(np.ones((32, 32, 32), np.float32))
    with pytest.raises(InputError, match="no voxel size .* --reference-angpix"):
        orient(truth["star"], bare, tmp_path / "out", config=TINY, progress=False)
    assert not (tmp_path / "out" / "particles.star").exists()


def test_refine_config_for_sizes_the_shift_searches_to_the_stack():
    """orient --refine's shift searches reach 3 σ of the measured offsets unless set."""
    config = refine_config_for({"max_iterations": 2}, 3.0)
    assert config.shift_range == 9.0 and config.global_shift_range == 0.0  # no global rounds: no global grid
    config = refine_config_for({"global_rounds": 2}, 2.1)
    assert (config.shift_range, config.global_shift_range, config.global_shift_step) == (7.0, 7.0, 7.0 / 4.5)
    assert config.global_shift_centre == "box"
    assert refine_config_for({}, 3.0).global_shift_centre == "current"  # no global grid
    # a global grid of no shifts keeps the current ones; a range given is centred on the box too
    assert refine_config_for({"global_rounds": 1, "global_shift_range": 0.0}, 3.0).global_shift_centre == "current"
    config = refine_config_for({"global_rounds": 1, "global_shift_range": 6.0}, 3.0)
    assert (config.global_shift_centre, config.global_shift_step) == ("box", RefineConfig().global_shift_step)
    # small offsets keep the defaults; settings given are kept
    assert refine_config_for({}, 0.2).shift_range == RefineConfig().shift_range
    config = refine_config_for({"global_rounds": 1, "shift_range": 2.0, "global_shift_range": 4.0}, 3.0)
    assert (config.shift_range, config.global_shift_range) == (2.0, 4.0)
    with pytest.raises(InputError, match="unknown"):
        refine_config_for({"shift_rang": 2.0}, 3.0)
    with pytest.raises(InputError, match="global_rounds must be an integer"):
        refine_config_for({"global_rounds": "2"}, 3.0)
    for bad in (np.nan, -1.0, np.inf):
        with pytest.raises(InputError, match="offset σ must be a finite number"):
            refine_config_for({}, bad)


def test_refine_settings_reads_every_form_of_the_refine_argument():
    """orient and map_free take refine as None/False, True, settings or a RefineConfig; a
    RefineConfig's settings are all given, so that sizing leaves it as it is."""
    from cryo_orient.orientation.refine import refine_settings

    assert refine_settings(None) is None and refine_settings(False) is None
    assert refine_settings(True) == {}
    given = {"global_rounds": 2}
    settings = refine_settings(given)
    assert settings == given and settings is not given  # a copy: the caller's dict is not touched
    config = RefineConfig(global_rounds=1, shift_range=2.0, global_shift_range=4.0)
    assert refine_config_for(refine_settings(config), 3.0) == config  # used as it is, not sized
    assert refine_config_for(refine_settings(True), 3.0).shift_range == 9.0
    with pytest.raises(InputError, match="unknown"):
        refine_settings({"shift_rang": 2.0})
    with pytest.raises(InputError, match="needs a table of settings"):
        refine_settings("global")


def test_cli_orient_refine_passes_settings_for_sizing(monkeypatch, tmp_path):
    """`cryo-orient orient --refine --refine-set ...` hands orient the settings, not a finished
    RefineConfig, so that the shift searches are sized to the stack (a RefineConfig is used as is)."""
    from cryo_orient import cli
    from cryo_orient.workflow import orient as orient_module

    seen = {}
    monkeypatch.setattr(orient_module, "orient", lambda *a, **k: seen.update(k))
    args = ["orient", "p.star", "--reference", "m.mrc", "--out", str(tmp_path), "--refine"]
    assert cli.main([*args, "--refine-set", "global_rounds=2"]) in (0, None)
    assert seen["refine"] == {"global_rounds": 2}
    assert refine_config_for(seen["refine"], 3.0).global_shift_centre == "box"
