"""Tests of cryo_orient.geometry.rotations: conventions, conversions, distances, sampling."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

import cryo_orient
from cryo_orient.geometry import rotations as rot
from cryo_orient.validation import InputError

FULL = np.array([2.0, 1.0, 2.0])
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def rz(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def ry(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def axis_angle(axis, angle):
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    return np.append(np.sin(angle / 2) * axis, np.cos(angle / 2))


def random_angles(n, seed, margin=0.0):
    """Canonical Euler angles; ``margin`` keeps theta2 away from gimbal lock."""
    g = np.random.default_rng(seed)
    t3 = g.uniform(0, 2 * np.pi, n)
    t2 = g.uniform(margin, np.pi - margin, n)
    t1 = g.uniform(0, 2 * np.pi, n)
    return np.stack([t3, t2, t1], axis=-1)


def naive_distance(q1, q2):
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    q2 = q2 / np.linalg.norm(q2, axis=-1, keepdims=True)
    dot = np.abs(np.sum(q1 * q2, axis=-1))
    return 2 * np.arccos(np.clip(dot, -1, 1))


# --------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------


def test_import_does_not_load_tensorflow():
    lib = str(Path(cryo_orient.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=lib + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (
        "import sys, cryo_orient.geometry.rotations as r; "
        "r.distance(r.uniform_so3(3, 0), r.uniform_so3(3, 1)); "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, "importing cryo_orient.geometry.rotations imported tensorflow\n" + res.stderr


# --------------------------------------------------------------------------------------------
# Conventions and conversions
# --------------------------------------------------------------------------------------------


def test_euler_conversions_match_scipy_intrinsic_zyz():
    g = np.random.default_rng(0)
    # Outside the canonical ranges too: the conversion must not assume them.
    angles = g.uniform(-7, 7, (500, 3))
    ref = Rotation.from_euler("ZYZ", angles)
    np.testing.assert_allclose(rot.euler_to_quaternion(angles), ref.as_quat(canonical=True), atol=1e-12)
    np.testing.assert_allclose(rot.euler_to_matrix(angles), ref.as_matrix(), atol=1e-12)
    q = ref.as_quat()
    np.testing.assert_allclose(rot.quaternion_to_matrix(q), ref.as_matrix(), atol=1e-12)
    np.testing.assert_allclose(rot.matrix_to_quaternion(ref.as_matrix()), ref.as_quat(canonical=True), atol=1e-12)


def test_euler_matrix_is_rz_ry_rz_in_stored_order():
    t3, t2, t1 = 0.3, 1.1, 2.5
    expected = rz(t3) @ ry(t2) @ rz(t1)
    np.testing.assert_allclose(rot.euler_to_matrix([t3, t2, t1]), expected, atol=1e-14)
    np.testing.assert_allclose(rot.quaternion_to_matrix(rot.euler_to_quaternion([t3, t2, t1])), expected, atol=1e-14)


def test_euler_round_trip_in_canonical_ranges():
    angles = random_angles(2000, 1, margin=1e-3)
    back = rot.quaternion_to_euler(rot.euler_to_quaternion(angles))
    np.testing.assert_allclose(back, angles, atol=1e-9)


def test_quaternion_to_euler_ranges_and_rotation_for_any_quaternion():
    g = np.random.default_rng(2)
    q = g.normal(size=(3000, 4)) * g.uniform(0.1, 10, (3000, 1))  # any sign, any norm
    e = rot.quaternion_to_euler(q)
    assert np.all((e[:, 0] >= 0) & (e[:, 0] < 2 * np.pi))
    assert np.all((e[:, 1] >= 0) & (e[:, 1] <= np.pi))
    assert np.all((e[:, 2] >= 0) & (e[:, 2] < 2 * np.pi))
    assert np.max(rot.distance(rot.euler_to_quaternion(e), q)) < 1e-12


@pytest.mark.parametrize("t2", [0.0, np.pi])
def test_quaternion_to_euler_gimbal_lock_sets_theta1_zero(t2):
    angles = np.array([[0.7, t2, 2.0], [5.9, t2, 1.3], [0.0, t2, 0.0]])
    q = rot.euler_to_quaternion(angles)
    e = rot.quaternion_to_euler(q)
    np.testing.assert_array_equal(e[:, 2], 0.0)
    np.testing.assert_allclose(e[:, 1], t2, atol=1e-15)
    assert np.all((e[:, 0] >= 0) & (e[:, 0] < 2 * np.pi))
    assert np.max(rot.distance(rot.euler_to_quaternion(e), q)) < 1e-12


def test_quaternion_to_euler_never_returns_two_pi():
    # Angles of -1e-20 rad would wrap to 2 pi - 1e-20, which rounds to 2 pi, out of range.
    q = np.array([[0.0, np.sin(0.5), -1e-20, np.cos(0.5)], [1e-20, np.sin(0.5), 0.0, np.cos(0.5)]])
    e = rot.quaternion_to_euler(q)
    assert np.all(e[:, [0, 2]] < 2 * np.pi)
    assert np.max(rot.distance(rot.euler_to_quaternion(e), q)) < 1e-15


def test_small_tilt_is_recovered_accurately():
    # arccos(R[2, 2]) would give ~1e-8 absolute error here; the quaternion route is exact.
    angles = np.array([[1.0, 1e-9, 2.0]])
    e = rot.quaternion_to_euler(rot.euler_to_quaternion(angles))
    np.testing.assert_allclose(e[0, 1], 1e-9, rtol=1e-6)


def test_matrix_to_quaternion_near_half_turns_uses_stable_branches():
    g = np.random.default_rng(3)
    axes = g.normal(size=(300, 3))
    # Half turns have w = 0, where the trace-based formula alone breaks down.
    for angle in (np.pi, np.pi - 1e-9, 2.0):
        ref = Rotation.from_rotvec(angle * axes / np.linalg.norm(axes, axis=1, keepdims=True))
        q = rot.matrix_to_quaternion(ref.as_matrix())
        assert np.max(rot.distance(q, ref.as_quat())) < 1e-12
        np.testing.assert_allclose(rot.quaternion_to_matrix(q), ref.as_matrix(), atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-15)


def test_matrix_to_quaternion_single_matrix_shape():
    q = rot.matrix_to_quaternion(rz(0.5))
    assert q.shape == (4,)
    np.testing.assert_allclose(q, axis_angle([0, 0, 1], 0.5), atol=1e-15)


def test_canonical_is_unit_w_nonnegative_same_rotation_and_matches_scipy():
    g = np.random.default_rng(4)
    q = g.normal(size=(500, 4)) * 3
    c = rot.canonical(q)
    np.testing.assert_allclose(np.linalg.norm(c, axis=-1), 1.0, atol=1e-15)
    assert np.all(c[:, 3] >= 0)
    assert np.max(rot.distance(c, q)) < 1e-12
    np.testing.assert_allclose(c, rot.canonical(-q), atol=0)
    # Ties at w == 0: the first non-zero component decides, as in scipy.
    ties = np.array([[-1.0, 2, 0, 0], [0, -1, 1, 0], [0, 0, -1, 0], [1, -1, 0, 0]])
    np.testing.assert_allclose(rot.canonical(ties), Rotation.from_quat(ties).as_quat(canonical=True), atol=1e-15)


def test_multiply_composes_like_matrices_and_scipy():
    g = np.random.default_rng(5)
    a, b = rot.uniform_so3(200, g), rot.uniform_so3(200, g)
    ab = rot.multiply(a, b)
    np.testing.assert_allclose(
        rot.quaternion_to_matrix(ab), rot.quaternion_to_matrix(a) @ rot.quaternion_to_matrix(b), atol=1e-12
    )
    np.testing.assert_allclose(
        rot.canonical(ab), (Rotation.from_quat(a) * Rotation.from_quat(b)).as_quat(canonical=True), atol=1e-12
    )
    # Not commutative: the order matters.
    assert np.max(rot.distance(ab, rot.multiply(b, a))) > 0.1


def test_conjugate_is_inverse():
    q = rot.uniform_so3(100, 6)
    np.testing.assert_allclose(
        rot.canonical(rot.multiply(q, rot.conjugate(q))), np.broadcast_to(IDENTITY, q.shape), atol=1e-15
    )
    np.testing.assert_allclose(
        rot.quaternion_to_matrix(rot.conjugate(q)), np.swapaxes(rot.quaternion_to_matrix(q), -1, -2), atol=1e-14
    )


def test_multiply_broadcasts():
    a = rot.uniform_so3(5, 7)[:, None, :]
    b = rot.uniform_so3(3, 8)[None, :, :]
    assert rot.multiply(a, b).shape == (5, 3, 4)


# --------------------------------------------------------------------------------------------
# Projection geometry
# --------------------------------------------------------------------------------------------


def test_viewing_direction_is_rt_ez_and_ignores_in_plane_angle():
    angles = random_angles(300, 9)
    v = rot.viewing_direction(rot.euler_to_quaternion(angles))
    expected = np.array([rz(-t1) @ ry(-t2) @ [0, 0, 1.0] for _, t2, t1 in angles])
    np.testing.assert_allclose(v, expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-15)
    other = angles.copy()
    other[:, 0] = np.random.default_rng(10).uniform(0, 2 * np.pi, len(angles))
    np.testing.assert_allclose(rot.viewing_direction(rot.euler_to_quaternion(other)), v, atol=1e-12)


def test_viewing_direction_is_the_papers_astra_ray():
    # The paper's ASTRA geometry: ray = R_A e_z with R_A = from_euler("ZYZ", angles).T.
    angles = random_angles(300, 11)
    r_astra = np.swapaxes(Rotation.from_euler("ZYZ", angles).as_matrix(), -1, -2)
    ray = r_astra @ np.array([0, 0, 1.0])
    np.testing.assert_allclose(rot.viewing_direction(rot.euler_to_quaternion(angles)), ray, atol=1e-12)


def test_papers_extrinsic_quaternions_give_the_same_distances():
    angles = random_angles(200, 12)
    ours = rot.euler_to_quaternion(angles)
    paper = Rotation.from_euler("zyz", angles).as_quat()  # the paper's euler2quaternion
    # Different quaternions ...
    assert np.max(rot.distance(ours, paper)) > 1.0
    # ... related by M_paper = C R^T C with C = Rx(pi) ...
    c = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(
        rot.quaternion_to_matrix(paper), c @ np.swapaxes(rot.quaternion_to_matrix(ours), -1, -2) @ c, atol=1e-12
    )
    # ... hence identical pairwise distances, the paper's labels.
    d_ours = rot.distance(ours[:, None], ours[None, :])
    d_paper = rot.distance(paper[:, None], paper[None, :])
    np.testing.assert_allclose(d_ours, d_paper, atol=1e-12)
    assert d_ours.max() > 2.5  # a non-trivial check


# --------------------------------------------------------------------------------------------
# Distance
# --------------------------------------------------------------------------------------------


def test_distance_known_rotations():
    for axis in ([1, 0, 0], [0, 1, 0], [1, 2, -3]):
        for angle in (0.0, 0.5, 2.0, np.pi - 1e-6, np.pi):
            q = axis_angle(axis, angle)
            assert rot.distance(IDENTITY, q) == pytest.approx(angle, abs=1e-15, rel=1e-14)
    # Angles beyond pi are the same as 2 pi - angle about the same axis.
    assert rot.distance(IDENTITY, axis_angle([0, 0, 1], 4.0)) == pytest.approx(2 * np.pi - 4.0)
    assert isinstance(rot.distance(IDENTITY, IDENTITY), float)
    assert rot.distance(IDENTITY, IDENTITY) == 0.0


def test_distance_properties():
    g = np.random.default_rng(13)
    q1, q2 = rot.uniform_so3(1000, g), rot.uniform_so3(1000, g)
    a, b = rot.uniform_so3(1000, g), rot.uniform_so3(1000, g)
    d = rot.distance(q1, q2)
    assert np.all((d >= 0) & (d <= np.pi))
    np.testing.assert_allclose(rot.distance(q2, q1), d, atol=1e-15)
    np.testing.assert_allclose(rot.distance(-q1, q2), d, atol=1e-15)
    np.testing.assert_allclose(rot.distance(3 * q1, 0.1 * q2), d, atol=1e-14)
    np.testing.assert_allclose(
        rot.distance(rot.multiply(rot.multiply(a, q1), b), rot.multiply(rot.multiply(a, q2), b)), d, atol=1e-12
    )
    np.testing.assert_allclose(rot.distance(rot.conjugate(q1), rot.conjugate(q2)), d, atol=1e-14)
    np.testing.assert_array_equal(rot.distance(q1, q1), 0.0)
    np.testing.assert_array_equal(rot.distance(q1, -q1), 0.0)


def test_distance_matches_naive_formula_where_that_is_accurate():
    g = np.random.default_rng(14)
    q1, q2 = rot.uniform_so3(5000, g), rot.uniform_so3(5000, g)
    d = rot.distance(q1, q2)
    ok = (d > 1e-2) & (d < np.pi - 1e-2)
    np.testing.assert_allclose(d[ok], naive_distance(q1, q2)[ok], atol=1e-12)


def test_distance_is_accurate_for_tiny_angles():
    for angle in (1e-7, 1e-10, 3e-14):
        for axis in ([1, 0, 0], [0.3, -0.2, 0.9]):
            d = rot.distance(IDENTITY, axis_angle(axis, angle))
            assert d == pytest.approx(angle, rel=1e-12)
    # The naive arccos form is far off at 1e-7; this is what the stable form fixes.
    assert abs(naive_distance(IDENTITY, axis_angle([1, 0, 0], 1e-7)) - 1e-7) > 1e-3 * 1e-7
    # Away from the identity, components carry ~1e-16 absolute rounding.
    base = axis_angle([0, 0, 1], 1.234)
    d = rot.distance(base, axis_angle([0, 0, 1], 1.234 + 1e-7))
    assert d == pytest.approx(1e-7, rel=1e-8)


def test_distance_broadcasts():
    a = rot.uniform_so3(5, 15)
    b = rot.uniform_so3(3, 16)
    d = rot.distance(a[:, None], b[None, :])
    assert d.shape == (5, 3)
    np.testing.assert_allclose(d[2, 1], rot.distance(a[2], b[1]))
    assert rot.distance(a, IDENTITY).shape == (5,)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "func", [rot.canonical, rot.quaternion_to_euler, rot.quaternion_to_matrix, rot.viewing_direction, rot.conjugate]
)
def test_quaternion_shape_errors_name_shapes(func):
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\).*\(5, 3\)"):
        func(np.ones((5, 3)))
    with pytest.raises(ValueError, match="Transpose"):
        func(np.ones((4, 7)))


def test_quaternion_value_errors():
    with pytest.raises(ValueError, match="finite"):
        rot.distance([np.nan, 0, 0, 1], IDENTITY)
    with pytest.raises(ValueError, match="finite"):
        rot.multiply([np.inf, 0, 0, 1], IDENTITY)
    with pytest.raises(ValueError, match="zero quaternion"):
        rot.distance(IDENTITY, np.zeros(4))
    with pytest.raises(ValueError, match="zero quaternion"):
        rot.quaternion_to_euler(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="real numbers"):
        rot.distance(["a", "b", "c", "d"], IDENTITY)


def test_euler_and_matrix_errors():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*\(4,\)"):
        rot.euler_to_quaternion([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="finite"):
        rot.euler_to_matrix([0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\).*\(2, 3\)"):
        rot.matrix_to_quaternion(np.ones((2, 3)))
    with pytest.raises(ValueError, match="orthonormal"):
        rot.matrix_to_quaternion(2 * np.eye(3))
    with pytest.raises(ValueError, match="determinant"):
        rot.matrix_to_quaternion(np.diag([1.0, 1.0, -1.0]))


def test_inputs_are_not_mutated():
    q = np.array([[0.0, 0.0, 0.0, -2.0], [1.0, 2.0, 3.0, 4.0]])
    e = np.array([[7.0, -1.0, 9.0]])
    m = rz(0.3)
    copies = [x.copy() for x in (q, e, m)]
    rot.canonical(q), rot.distance(q, q[::-1]), rot.quaternion_to_euler(q)
    rot.quaternion_to_matrix(q), rot.viewing_direction(q), rot.conjugate(q), rot.multiply(q, q)
    rot.euler_to_quaternion(e), rot.euler_to_matrix(e), rot.matrix_to_quaternion(m)
    for x, c in zip((q, e, m), copies):
        np.testing.assert_array_equal(x, c)


# --------------------------------------------------------------------------------------------
# TensorFlow distance
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def test_distance_tf_matches_numpy(tf):
    g = np.random.default_rng(17)
    q1 = g.normal(size=(2000, 4))
    q2 = np.concatenate([g.normal(size=(1000, 4)), q1[1000:] + 1e-6 * g.normal(size=(1000, 4))])
    d_np = rot.distance(q1, q2)
    d64 = rot.distance_tf(tf.constant(q1), tf.constant(q2))
    assert d64.dtype == tf.float64
    np.testing.assert_allclose(d64.numpy(), d_np, atol=1e-10)
    d32 = rot.distance_tf(tf.constant(q1, tf.float32), tf.constant(q2, tf.float32))
    assert d32.dtype == tf.float32
    np.testing.assert_allclose(d32.numpy(), d_np, atol=2e-6)
    d_b = rot.distance_tf(q1[:5, None], q2[None, :3])
    np.testing.assert_allclose(d_b.numpy(), rot.distance(q1[:5, None], q2[None, :3]), atol=1e-10)


def test_distance_tf_has_no_float32_floor_unlike_tfg(tf):
    quaternion = pytest.importorskip("tensorflow_graphics.geometry.transformation").quaternion
    for angle in (1e-4, 1e-5):
        q1 = tf.constant(IDENTITY, tf.float32)
        q2 = tf.constant(axis_angle([1, 2, 3], angle), tf.float32)
        ours = float(rot.distance_tf(q1, q2))
        theirs = float(np.squeeze(quaternion.relative_angle(q1, q2)))
        assert ours == pytest.approx(angle, rel=1e-3)
        assert theirs > 1e-3  # tfg's floor: the documented reason for not using it


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_distance_tf_gradient_finite_at_and_near_zero(tf, dtype):
    base = rot.uniform_so3(4, 18)
    near = base + np.array([1e-6, 0, 0, 0])
    for q2 in (base, -base, near):
        q1 = tf.Variable(base, dtype=dtype)
        with tf.GradientTape() as tape:
            d = tf.reduce_sum(rot.distance_tf(q1, tf.constant(q2, dtype)))
        grad = tape.gradient(d, q1).numpy()
        assert np.all(np.isfinite(grad))
        assert np.max(np.abs(grad)) < 10  # |d(distance)/dq| <= 4 for unit q


def test_distance_tf_gradient_matches_finite_differences(tf):
    q1 = rot.uniform_so3(3, 19)
    q2 = rot.uniform_so3(3, 20)
    v = tf.Variable(q1)
    with tf.GradientTape() as tape:
        d = tf.reduce_sum(rot.distance_tf(v, tf.constant(q2)))
    grad = tape.gradient(d, v).numpy()
    h = 1e-6
    fd = np.zeros_like(q1)
    for i in range(3):
        for j in range(4):
            step = np.zeros(4)
            step[j] = h
            up, down = rot.distance(q1[i] + step, q2[i]), rot.distance(q1[i] - step, q2[i])
            fd[i, j] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-6)


def test_distance_tf_errors(tf):
    with pytest.raises(TypeError, match="same dtype"):
        rot.distance_tf(tf.constant(IDENTITY, tf.float32), tf.constant(IDENTITY, tf.float64))
    with pytest.raises(TypeError, match="floating"):
        rot.distance_tf(tf.constant([0, 0, 0, 1]), tf.constant([0, 0, 0, 1]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        rot.distance_tf(tf.ones((2, 3)), tf.ones((2, 3)))


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------

SAMPLERS = [
    lambda n, rng: rot.uniform_so3(n, rng=rng),
    lambda n, rng: rot.uniform_euler(n, rng=rng),
    lambda n, rng: rot.uniform_so3_in_box(n, (2, 0.4, 2), rng=rng),
    lambda n, rng: rot.sample_orientations(n, "uniform_S2", (1, 1, 0.4), rng=rng),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_reproducible_and_seed_dependent(sampler):
    a = sampler(50, 123)
    assert a.shape == (50, 4)
    np.testing.assert_array_equal(a, sampler(50, 123))
    np.testing.assert_array_equal(a, sampler(50, np.random.default_rng(123)))
    assert not np.allclose(a, sampler(50, 124))
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, atol=1e-15)
    assert np.all(a[:, 3] >= 0)
    # A Generator is advanced, so successive calls differ.
    g = np.random.default_rng(5)
    assert not np.allclose(sampler(50, g), sampler(50, g))
    assert sampler(0, 1).shape == (0, 4)


def test_uniform_so3_is_haar_uniform():
    q = rot.uniform_so3(20000, rng=2021)
    # The angle to any fixed rotation has density (1 - cos d) / pi on [0, pi].
    for ref in (IDENTITY, axis_angle([1, -1, 2], 2.0)):
        d = rot.distance(q, ref)
        p = stats.kstest(d, lambda x: (x - np.sin(x)) / np.pi).pvalue
        assert p > 1e-3
    # Uniform Euler sampling is not Haar-uniform: the same test must reject it.
    d = rot.distance(rot.uniform_euler(20000, rng=2021), IDENTITY)
    assert stats.kstest(d, lambda x: (x - np.sin(x)) / np.pi).pvalue < 1e-6


def test_uniform_euler_is_the_papers_uniform_angles():
    coverage, offset = (1.0, 0.4, 1.0), (0.5, 0.1, 0.2)
    q, e = rot.uniform_euler(5000, coverage, offset, rng=3, return_euler=True)
    # Same formula and draw order as theta_k = (s_k + c_k U(0, 1)) pi.
    u = np.random.default_rng(3).random((5000, 3))
    np.testing.assert_allclose(e, (np.array(offset) + np.array(coverage) * u) * np.pi, atol=1e-15)
    np.testing.assert_allclose(q, rot.euler_to_quaternion(e), atol=0)
    for k in range(3):
        lo, hi = offset[k] * np.pi, (offset[k] + coverage[k]) * np.pi
        assert stats.kstest(e[:, k], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    # The angles returned are the canonical angles of the quaternions.
    np.testing.assert_allclose(rot.quaternion_to_euler(q), e, atol=1e-9)


def test_uniform_euler_allows_fixed_angles():
    q, e = rot.uniform_euler(10, (2, 0, 0), (0, 0.5, 0.25), rng=1, return_euler=True)
    np.testing.assert_array_equal(e[:, 1:], np.broadcast_to([0.5 * np.pi, 0.25 * np.pi], (10, 2)))
    v = rot.viewing_direction(q)
    np.testing.assert_allclose(v, np.broadcast_to(v[0], v.shape), atol=1e-12)


@pytest.mark.parametrize(
    "coverage, offset",
    [
        ((2, 0.4, 2), (0, 0, 0)),  # 5j0n "half"
        ((2, 1, 0.4), (0, 0, 0)),  # 5a1a "quarter"
        ((1, 0.4, 1), (0, 0, 0)),  # 5a1a "quarter, half in-plane"
        ((0.3, 0.2, 0.5), (1.5, 0.7, 1.2)),
    ],
)
def test_uniform_so3_in_box_exact_count_box_and_distribution(coverage, offset):
    n = 3000
    q, e = rot.uniform_so3_in_box(n, coverage, offset, rng=7, return_euler=True)
    assert q.shape == (n, 4) and e.shape == (n, 3)
    lo = np.array(offset) * np.pi
    hi = (np.array(offset) + np.array(coverage)) * np.pi
    assert np.all((e >= lo) & (e <= hi))
    np.testing.assert_allclose(rot.quaternion_to_euler(q), e, atol=0)
    # Within the box, Haar measure has theta3, theta1 uniform and theta2 with density sin.
    for k in (0, 2):
        assert stats.kstest(e[:, k], stats.uniform(lo[k], hi[k] - lo[k]).cdf).pvalue > 1e-3
    tilt_cdf = lambda t: (np.cos(lo[1]) - np.cos(t)) / (np.cos(lo[1]) - np.cos(hi[1]))  # noqa: E731
    assert stats.kstest(e[:, 1], tilt_cdf).pvalue > 1e-3


def test_uniform_so3_in_box_full_box_is_uniform_so3():
    np.testing.assert_array_equal(rot.uniform_so3_in_box(100, rng=4), rot.uniform_so3(100, rng=4))
    np.testing.assert_array_equal(rot.sample_orientations(100, "uniform_so3", rng=4), rot.uniform_so3(100, rng=4))


@pytest.mark.parametrize(
    "coverage, offset, match",
    [
        ((2, 0, 2), (0, 0, 0), "coverage of theta2 must be > 0"),
        ((-1, 1, 2), (0, 0, 0), "coverage of theta3"),
        ((2, 1.5, 2), (0, 0, 0), "beyond its range"),
        ((2, 0.5, 2), (0, 0.6, 0), "beyond its range"),
        ((2, 1, 2), (-0.1, 0, 0), "offset of theta3 must be >= 0"),
        ((2, np.nan, 2), (0, 0, 0), "finite"),
        ((2, 1), (0, 0, 0), "3 numbers"),
        ((0.001, 0.001, 0.001), (0, 0.5, 0), "Haar probability"),
    ],
)
def test_uniform_so3_in_box_rejects_bad_boxes(coverage, offset, match):
    with pytest.raises(ValueError, match=match):
        rot.uniform_so3_in_box(10, coverage, offset, rng=0)


def test_uniform_euler_rejects_bad_boxes():
    with pytest.raises(ValueError, match="beyond its range"):
        rot.uniform_euler(10, (2, 1, 2), (0, 0.5, 0))
    with pytest.raises(ValueError, match="coverage of theta1 must be >= 0"):
        rot.uniform_euler(10, (2, 1, -2))


@pytest.mark.parametrize("n, exc", [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("10", TypeError)])
def test_samplers_reject_bad_counts(n, exc):
    with pytest.raises(exc, match="non-negative integer"):
        rot.uniform_so3(n)
    with pytest.raises(exc, match="non-negative integer"):
        rot.uniform_so3_in_box(n, (2, 0.5, 2))


def test_bad_rng_is_reported():
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        rot.uniform_so3(3, rng="seed")


def test_sample_orientations_dispatch_and_aliases():
    box = dict(coverage=(2, 0.4, 2), offset=(0, 0, 0))
    np.testing.assert_array_equal(
        rot.sample_orientations(20, "uniform_euler", rng=1, **box), rot.uniform_euler(20, rng=1, **box)
    )
    np.testing.assert_array_equal(
        rot.sample_orientations(20, "uniform_angles", rng=1, **box), rot.uniform_euler(20, rng=1, **box)
    )
    np.testing.assert_array_equal(
        rot.sample_orientations(20, "uniform_so3", rng=1, **box), rot.uniform_so3_in_box(20, rng=1, **box)
    )
    np.testing.assert_array_equal(
        rot.sample_orientations(20, "uniform_S2", rng=1, **box), rot.uniform_so3_in_box(20, rng=1, **box)
    )
    q, e = rot.sample_orientations(20, "uniform_S2", rng=1, return_euler=True, **box)
    assert e.shape == (20, 3) and np.all(e[:, 1] <= 0.4 * np.pi)


def test_sample_orientations_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="uniform_so3.*uniform_S2.*uniform_euler.*uniform_angles"):
        rot.sample_orientations(10, "uniform_s03")


@pytest.mark.parametrize("step", [10.0, 7.5])
def test_so3_grid_covers_so3_evenly_at_its_step(step):
    grid = rot.so3_grid(step)
    s = np.radians(step)
    assert len(grid) == math.ceil(4 * np.pi / s**2) * math.ceil(2 * np.pi / s)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=1), 1.0)
    assert np.all(grid[:, 3] >= 0)
    np.testing.assert_array_equal(grid, rot.so3_grid(step))  # deterministic
    # Every rotation is near a grid point. Measured, 2,000 random rotations: the nearest grid
    # point at most 0.77 (10°) and 0.80 (7.5°) steps away, median 0.50.
    probe = rot.uniform_so3(2000, rng=0)
    nearest = np.degrees(2 * np.arccos(np.clip(np.abs(probe @ grid.T).max(axis=1), 0, 1)))
    assert nearest.max() < 0.85 * step and np.median(nearest) < 0.55 * step
    # Evenly: the viewing directions' mean is the origin and cos(tilt) uniform (Haar measure).
    directions = rot.viewing_direction(grid)
    np.testing.assert_allclose(directions.mean(axis=0), 0.0, atol=1e-3)
    assert stats.kstest(directions[:, 2], "uniform", args=(-1, 2)).pvalue > 0.01


@pytest.mark.parametrize("step", [0, -1.0, 91.0, float("nan")])
def test_so3_grid_refuses_bad_steps(step):
    with pytest.raises(InputError, match="step_deg"):
        rot.so3_grid(step)
