"""Gauge choice from common lines, and the rigid placement of the resulting volume."""

import numpy as np
import pytest

from cryo_orient.geometry import rotations, volumes
from cryo_orient.orientation import alignment, gauge
from cryo_orient.tomography import fsc
from cryo_orient.tomography.projection import project
from cryo_orient.tomography.reconstruct import reconstruct


@pytest.fixture(scope="module")
def scene():
    # A few Gaussian blobs of different sizes off centre: a molecule without symmetry.
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    vol = np.zeros(shape)
    for _ in range(6):
        centre = rng.uniform(-6, 6, size=3)
        width = rng.uniform(1.2, 2.5)
        vol += rng.uniform(0.5, 1.0) * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * width**2))
    q = rotations.uniform_so3(200, rng=rng)
    return vol, q, project(vol, q, None, "nufft")


def scrambled(q, conj, seed):
    rng = np.random.default_rng(seed)
    a, b = rotations.uniform_so3(2, rng=rng)
    base = rotations.conjugate(q) if conj else q
    return rotations.multiply(rotations.multiply(a[None], base), b[None])


def test_true_orientations_score_higher_than_random(scene):
    _, q, p = scene
    lines = gauge.common_lines(p)
    true = gauge.common_line_score(lines, q, rng=0)
    random = gauge.common_line_score(lines, rotations.uniform_so3(len(q), rng=1), rng=0)
    assert true > 0.99 and random < true - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("conj", [False, True])
def test_choose_gauge_recovers_a_consistent_volume(scene, conj):
    vol, q, p = scene
    q_hat = scrambled(q, conj, seed=3 + conj)
    choice = gauge.choose_gauge(p, q_hat, n_images=150, n_pairs=2000, n_candidates=1000, rng=0)
    assert choice.conjugated == conj
    frame = gauge.volume_frame(alignment.align(q, choice.quaternions))
    assert frame["gauge_error"] < 0.01 and not frame["reflected"]
    rec = reconstruct(p, choice.quaternions, vol.shape, "nufft", iterations=50).volume
    placed = volumes.transform_volume(rec, frame["matrix"])
    assert volumes.correlation(placed, vol) > 0.97
    assert fsc.fsc(placed, vol, 1.0).resolution(0.5)[0] < 3.0


def test_wrong_gauge_reconstructs_badly(scene):
    vol, q, p = scene
    q_hat = scrambled(q, False, seed=7)
    frame = gauge.volume_frame(alignment.align(q, q_hat))
    assert frame["gauge_error"] > 0.1
    rec = reconstruct(p, q_hat, vol.shape, "nufft", iterations=50).volume
    placed = volumes.transform_volume(rec, frame["matrix"])
    assert fsc.fsc(placed, vol, 1.0).resolution(0.5)[0] > 4.0


def test_choose_gauge_bad_inputs(scene):
    _, q, p = scene
    with pytest.raises(ValueError, match="one quaternion per image"):
        gauge.choose_gauge(p, q[:-1])
    with pytest.raises(ValueError, match="must be square images, got 41 x 40"):
        gauge.choose_gauge(p[:, :, :-1], q)
    bad = p.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gauge.choose_gauge(bad, q)
    with pytest.raises(ValueError, match="n_candidates"):
        gauge.choose_gauge(p, q, n_candidates=0)


def test_transform_volume_conventions():
    rng = np.random.default_rng(2)
    v = rng.random((9, 9, 9))
    np.testing.assert_allclose(volumes.transform_volume(v, np.eye(3)), v, atol=1e-12)
    # W(x) = V(M x) with M = Rz(90°): M (x, y, z) = (-y, x, z), so W[z, y, x] = V[z, x, -y]
    # (indices about the centre 4: V[z, x, 8 - y]).
    Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    w = volumes.transform_volume(v, Rz)
    expected = np.transpose(v, (0, 2, 1))[:, ::-1, :]
    np.testing.assert_allclose(w, expected, atol=1e-9)
    # Point inversion about the centre voxel (odd sides): a flip of every axis.
    np.testing.assert_allclose(volumes.transform_volume(v, -np.eye(3)), v[::-1, ::-1, ::-1], atol=1e-9)
    with pytest.raises(ValueError, match="orthogonal"):
        volumes.transform_volume(v, 2 * np.eye(3))
