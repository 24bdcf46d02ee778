"""Reconstruction: the Toeplitz normal operator is exact, and a round trip recovers the volume."""

import numpy as np
import pytest
from scipy import ndimage

from cryo_orient.geometry import rotations
from cryo_orient.tomography import fsc
from cryo_orient.tomography.ctf import CTFParams
from cryo_orient.tomography.projection import astra_available, backproject, project
from cryo_orient.tomography.reconstruct import (
    FoldedNormalEquations,
    normal_operator,
    reconstruct,
    reconstruct_folds,
    remove_detector_nyquist,
)


def smooth_blob(shape, seed=0, sigma=1.5):
    """An asymmetric, band-limited density inside a sphere."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    envelope = np.exp(-sum(g.astype(float) ** 2 for g in grids) / (2 * (0.22 * min(shape)) ** 2))
    return ndimage.gaussian_filter(rng.random(shape), sigma) * envelope


@pytest.mark.parametrize("size", [30, 31])
def test_toeplitz_normal_operator_equals_backproject_of_project(size):
    shape = (20, 17, 23)  # odd, even, non-cubic: any axis mix-up shows
    rng = np.random.default_rng(0)
    v = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    q = rotations.uniform_so3(40, rng=rng)
    expected = backproject(remove_detector_nyquist(project(v, q, size, "nufft")), q, shape, "nufft")
    got = normal_operator(q, size, shape)(v)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())


def test_remove_detector_nyquist_is_a_projection():
    rng = np.random.default_rng(1)
    p = rng.standard_normal((3, 16, 16))
    once = remove_detector_nyquist(p)
    np.testing.assert_allclose(remove_detector_nyquist(once), once, atol=1e-12)
    assert not np.allclose(once, p)
    odd = rng.standard_normal((2, 15, 15))
    np.testing.assert_array_equal(remove_detector_nyquist(odd), odd)


def test_round_trip_recovers_the_volume():
    vol = smooth_blob((32, 32, 32), seed=2)
    q = rotations.uniform_so3(300, rng=np.random.default_rng(3))
    p = project(vol, q, None, "nufft")
    before = p.copy()
    res = reconstruct(p, q, vol.shape, "nufft", iterations=100, tol=1e-6)
    np.testing.assert_array_equal(p, before)  # input untouched
    assert res.stop_reason == "tolerance" and res.iterations < 100
    assert np.all(np.diff(res.residuals[:5]) < 0)
    curve = fsc.fsc(res.volume, vol, voxel_size=1.0)
    resolution, crossed = curve.resolution(0.5)
    # Resolution better than 3 voxels (the bar); in fact the curve stays near 1.
    assert resolution < 3.0
    assert curve.correlation.min() > 0.99


def test_wrong_orientations_do_not_reconstruct():
    vol = smooth_blob((24, 24, 24), seed=4)
    rng = np.random.default_rng(5)
    q = rotations.uniform_so3(200, rng=rng)
    p = project(vol, q, None, "nufft")
    good = reconstruct(p, q, vol.shape, "nufft", iterations=30).volume
    bad = reconstruct(p, rotations.uniform_so3(200, rng=rng), vol.shape, "nufft", iterations=30).volume
    # The spherical envelope alone correlates well; the FSC tells the details apart.
    assert fsc.fsc(good, vol, 1.0).resolution(0.5)[0] < 3.0
    assert fsc.fsc(bad, vol, 1.0).resolution(0.5)[0] > 6.0


def test_regularization_shrinks_the_solution():
    vol = smooth_blob((16, 16, 16), seed=6)
    q = rotations.uniform_so3(60, rng=np.random.default_rng(7))
    p = project(vol, q, None, "nufft")
    plain = reconstruct(p, q, vol.shape, "nufft", iterations=50).volume
    damped = reconstruct(p, q, vol.shape, "nufft", iterations=50, regularization=1e4).volume
    assert np.linalg.norm(damped) < 0.9 * np.linalg.norm(plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"projections": np.zeros((3, 8, 9))}, r"shape \(N, size, size\)"),
        ({"quaternions": np.zeros((3, 3))}, r"quaternions must have shape \(N, 4\)"),
        ({"quaternions": np.tile([0, 0, 0, 1.0], (2, 1))}, "one orientation per image"),
        ({"shape": (8, 8)}, "3 positive integers"),
        ({"iterations": -1}, "integer >= 0"),
        ({"iterations": 0}, "all-zero start"),
        ({"iterations": True}, "integer >= 0"),
        ({"regularization": -1.0}, "regularization"),
        ({"backend": "gpu"}, "unknown projection backend"),
        ({"weights": [1.0, 1.0]}, "one per image"),
        ({"weights": [1.0, -1.0, 1.0]}, "finite numbers >= 0"),
        ({"weights": [0.0, 0.0, 0.0]}, "not all zero"),
        ({"weights": [1.0, np.nan, 1.0]}, "finite numbers >= 0"),
        ({"weights": ["a", "b", "c"]}, "weights must be 3 finite numbers"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"projections": np.zeros((3, 8, 8)), "quaternions": np.tile([0, 0, 0, 1.0], (3, 1)), "shape": (8, 8, 8)}
    args.update({k: v for k, v in kwargs.items() if k in args})
    options = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        reconstruct(args["projections"], args["quaternions"], args["shape"], **options)


def test_weights_are_replicated_images():
    """Integer weights fit each image as often as its weight says (a zero weight: not at all),
    and scaling all weights together changes nothing; the input is not modified."""
    vol = smooth_blob((16, 16, 16), seed=3)
    rng = np.random.default_rng(4)
    q = rotations.uniform_so3(24, rng=rng)
    p = project(vol, q, 16, "nufft") + rng.normal(scale=0.05, size=(24, 16, 16))
    weights = np.tile([1, 2, 0, 3], 6)
    kept = p.copy()
    weighted = reconstruct(p, q, vol.shape, "nufft", iterations=12, tol=0, weights=weights).volume
    np.testing.assert_array_equal(p, kept)
    repeat = np.repeat(np.arange(24), weights)
    replicated = reconstruct(p[repeat], q[repeat], vol.shape, "nufft", iterations=12, tol=0).volume
    np.testing.assert_allclose(weighted, replicated, atol=1e-9 * np.abs(replicated).max())
    scaled = reconstruct(p, q, vol.shape, "nufft", iterations=12, tol=0, weights=0.25 * weights).volume
    np.testing.assert_allclose(scaled, weighted, atol=1e-6 * np.abs(weighted).max())
    plain = reconstruct(p, q, vol.shape, "nufft", iterations=12, tol=0).volume
    assert np.abs(plain - weighted).max() > 0.01 * np.abs(plain).max()


@pytest.mark.parametrize("with_ctf", [False, True])
def test_fold_maps_are_the_maps_without_each_fold(with_ctf):
    """Each leave-one-fold-out map is the reconstruction of the other folds' images (weights and
    CTFs per image carried along), and the whole map that of all of them; inputs not modified."""
    vol = smooth_blob((20, 20, 20), seed=6)
    rng = np.random.default_rng(7)
    n = 90
    q = rotations.uniform_so3(n, rng=rng)
    p = project(vol, q, 20, "nufft") + rng.normal(scale=0.05, size=(n, 20, 20))
    weights = rng.uniform(0.5, 1.5, n)
    folds = np.arange(n) % 3
    model = {}
    if with_ctf:
        defocus = rng.uniform(8000, 20000, n)
        ctf = CTFParams.from_columns(
            {
                "rlnDefocusU": defocus,
                "rlnDefocusV": defocus - 300,
                "rlnDefocusAngle": rng.uniform(0, 180, n),
                "rlnVoltage": 300.0,
                "rlnSphericalAberration": 2.7,
                "rlnAmplitudeContrast": 0.1,
            },
            n,
        )
        model = {"ctf": ctf, "pixel_size": 3.0}
    kept = p.copy()
    whole, without = reconstruct_folds(p, q, vol.shape, folds, iterations=15, weights=weights, **model)
    np.testing.assert_array_equal(p, kept)
    assert without.shape == (3, *vol.shape)
    expected = reconstruct(p, q, vol.shape, "nufft", iterations=15, weights=weights, **model).volume
    # Measured: 1e-5 of the maximum (single-precision FFTs, through 15 CG steps).
    np.testing.assert_allclose(whole, expected, atol=1e-4 * np.abs(expected).max())
    for fold in range(3):
        rest = folds != fold
        sub = {"ctf": model["ctf"].subset(np.flatnonzero(rest)), "pixel_size": 3.0} if with_ctf else {}
        expected = reconstruct(p[rest], q[rest], vol.shape, "nufft", iterations=15, weights=weights[rest], **sub)
        np.testing.assert_allclose(without[fold], expected.volume, atol=1e-4 * np.abs(expected.volume).max())
        assert np.abs(without[fold] - whole).max() > 0.01 * np.abs(whole).max()


def test_replacing_a_fold_changes_only_the_maps_that_hold_it():
    vol = smooth_blob((16, 16, 16), seed=8)
    rng = np.random.default_rng(9)
    q = rotations.uniform_so3(60, rng=rng)
    p = project(vol, q, 16, "nufft")
    system = FoldedNormalEquations(vol.shape, 3, iterations=10)
    with pytest.raises(ValueError, match=r"folds \[0, 1, 2\] have no images yet"):
        system.solve()
    for fold in range(3):
        system.set_fold(fold, p[fold::3], q[fold::3])
    before = [system.solve(without=fold) for fold in range(3)]
    system.set_fold(1, p[1::3], rotations.uniform_so3(20, rng=rng))  # fold 1 at other poses
    # Equal to rounding: the left-out fold's terms are subtracted from the sum of all.
    np.testing.assert_allclose(system.solve(without=1), before[1], atol=1e-9 * np.abs(before[1]).max())
    for fold in (0, 2):
        assert np.abs(system.solve(without=fold) - before[fold]).max() > 0.01 * np.abs(before[fold]).max()
    with pytest.raises(ValueError, match="fold must be below the number of folds"):
        system.set_fold(3, p[:2], q[:2])
    for bad in (-1, 3, True):
        with pytest.raises(ValueError, match="without must be"):
            system.solve(without=bad)


@pytest.mark.parametrize(
    "folds, match",
    [
        (np.zeros(12, dtype=int), "K ≥ 2 folds"),
        (np.arange(12) % 3 + 1, "each used"),
        (np.arange(12) % 2 * 0.5, "integer labels"),
        (np.arange(11) % 2, "integer labels"),
    ],
)
def test_fold_labels_are_checked(folds, match):
    q = rotations.uniform_so3(12, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        reconstruct_folds(np.zeros((12, 8, 8)), q, (8, 8, 8), folds)


def test_a_fold_of_zero_weights_is_named():
    q = rotations.uniform_so3(12, rng=np.random.default_rng(0))
    folds, weights = np.arange(12) % 3, np.ones(12)
    weights[folds == 1] = 0.0
    with pytest.raises(ValueError, match="every weight of fold 1 is zero"):
        reconstruct_folds(np.zeros((12, 8, 8)), q, (8, 8, 8), folds, weights=weights)


def test_nan_projection_is_a_clear_error():
    p = np.zeros((2, 8, 8))
    p[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(p, np.tile([0, 0, 0, 1.0], (2, 1)), (8, 8, 8))


@pytest.mark.gpu
def test_astra_cgls_agrees_with_nufft():
    if not astra_available():
        pytest.skip("ASTRA cannot use the GPU here")
    vol = smooth_blob((32, 32, 32), seed=8, sigma=2.0)
    q = rotations.uniform_so3(300, rng=np.random.default_rng(9))
    p = project(vol, q, None, "nufft")
    cpu = reconstruct(p, q, vol.shape, "nufft", iterations=100).volume
    gpu = reconstruct(p, q, vol.shape, "astra", iterations=100).volume
    assert np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1] > 0.98
    assert fsc.fsc(gpu, vol, 1.0).resolution(0.5)[0] < 3.0


def test_no_data_gives_the_zero_volume():
    res = reconstruct(np.zeros((3, 8, 8)), rotations.uniform_so3(3, rng=0), (8, 8, 8), "nufft", x0=np.ones((8, 8, 8)))
    assert not res.volume.any() and res.stop_reason == "tolerance"


@pytest.mark.slow
def test_reruns_are_bit_identical():
    rng = np.random.default_rng(0)
    q = rotations.uniform_so3(200, rng=1)
    p = rng.standard_normal((200, 64, 64))
    runs = [reconstruct(p, q, (45, 45, 45), "nufft", iterations=3).volume for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
