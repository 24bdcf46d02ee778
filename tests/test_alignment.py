"""Tests of cryo_orient.orientation.alignment: O(4) factors, E_OR alignment, physical meaning of the gauge."""

import json

import numpy as np
import pytest
from scipy.linalg import expm
from scipy.optimize import minimize

from cryo_orient.geometry import rotations as rot
from cryo_orient.orientation import alignment as al

K = np.array([0.0, 0.0, 1.0, 0.0])  # quaternion of Rz(pi)
J = np.diag([1.0, 1.0, -1.0])  # mirror through the plane z = 0


def rz(t):
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def random_transform(rng, reflect):
    a, b = rot.uniform_so3(2, rng)
    return al.transform_from_factors(a, b, reflect)


def perturb(q, angles, rng):
    """Compose each rotation with one of the given angle about a random axis."""
    axes = rng.standard_normal((len(q), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    p = np.concatenate([axes * np.sin(angles / 2)[:, None], np.cos(angles / 2)[:, None]], 1)
    return rot.multiply(q, p)


def random_signs(rng, n):
    return rng.choice([-1.0, 1.0], n)[:, None]


def scrambled(q_true, T, rng):
    """q_est with T q_est_i = +-q_true_i (T orthogonal, so T^{-1} = T^T), random signs."""
    return (q_true @ T) * random_signs(rng, len(q_true))


def mean_error_at(T, q_true, q_est):
    return float(np.mean(rot.distance(q_true, q_est @ np.asarray(T).T)))


def same_up_to_sign(A, B, atol):
    return np.allclose(A, B, rtol=0, atol=atol) or np.allclose(A, -B, rtol=0, atol=atol)


def projected_points(points, R):
    """Image of a point-cloud volume: p = integral V(R^T x) dz puts point y at (R y)_xy."""
    return np.einsum("...ij,kj->...ki", R, points)[..., :2]


# --------------------------------------------------------------------------------------------
# O(4): factors and transforms
# --------------------------------------------------------------------------------------------


def test_product_basis_is_orthogonal():
    # factors_of_transform relies on the 16 matrices L(e_k) R(e_l) being orthogonal, norm^2 4.
    B = al._PRODUCT_BASIS
    np.testing.assert_allclose(B @ B.T, 4 * np.eye(16), atol=1e-14)


@pytest.mark.parametrize("reflect", [False, True])
def test_transform_from_factors_is_the_quaternion_product(reflect):
    rng = np.random.default_rng(1)
    a, b = rot.uniform_so3(2, rng)
    q = rng.standard_normal((50, 4))
    T = al.transform_from_factors(a, b, reflect)
    inner = rot.conjugate(q) if reflect else q
    np.testing.assert_allclose(q @ T.T, rot.multiply(rot.multiply(a, inner), b), atol=1e-14)
    np.testing.assert_allclose(T.T @ T, np.eye(4), atol=1e-14)
    assert np.linalg.det(T) == pytest.approx(-1.0 if reflect else 1.0)
    # In matrices: R -> H R G, or H R^T G.
    H, G = rot.quaternion_to_matrix(a), rot.quaternion_to_matrix(b)
    R = rot.quaternion_to_matrix(q)
    Rt = np.swapaxes(R, -1, -2) if reflect else R
    np.testing.assert_allclose(rot.quaternion_to_matrix(q @ T.T), H @ Rt @ G, atol=1e-13)


@pytest.mark.parametrize("reflect", [False, True])
def test_factors_round_trip(reflect):
    rng = np.random.default_rng(2)
    for _ in range(20):
        a, b = rng.standard_normal((2, 4))  # not unit, any sign: normalised inside
        T = al.transform_from_factors(a, b, reflect)
        left, right, refl = al.factors_of_transform(T)
        assert refl is reflect
        assert left[3] >= 0
        a_u, b_u = a / np.linalg.norm(a), b / np.linalg.norm(b)
        sign = 1.0 if np.dot(left, a_u) > 0 else -1.0  # the joint sign (-a, -b) is free
        np.testing.assert_allclose(left, sign * a_u, atol=1e-12)
        np.testing.assert_allclose(right, sign * b_u, atol=1e-12)
        np.testing.assert_allclose(al.transform_from_factors(left, right, refl), T, atol=1e-13)


def test_factors_of_a_generic_orthogonal_matrix():
    # Any element of O(4), not only those built from factors, splits and rebuilds exactly.
    rng = np.random.default_rng(3)
    for _ in range(10):
        Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        left, right, refl = al.factors_of_transform(Q)
        assert refl == (np.linalg.det(Q) < 0)
        np.testing.assert_allclose(al.transform_from_factors(left, right, refl), Q, atol=1e-12)


def test_paper_m_flip_is_conjugation_up_to_sign():
    # The paper's diag(1, 1, 1, -1) maps q to -conj(q): the same rotation as conj(q).
    q = rot.uniform_so3(20, 4)
    flipped = al.apply_transform(np.diag([1.0, 1.0, 1.0, -1.0]), q)
    np.testing.assert_allclose(flipped, rot.canonical(rot.conjugate(q)), atol=1e-15)


def test_apply_transform_identity_and_sign():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((30, 4)) * 3.0
    before = q.copy()
    for T in (np.eye(4), -np.eye(4)):
        np.testing.assert_allclose(al.apply_transform(T, q), rot.canonical(q), atol=1e-15)
    np.testing.assert_array_equal(q, before)  # input untouched
    # A single quaternion, shape (4,), also works.
    np.testing.assert_allclose(al.apply_transform(np.eye(4), q[0]), rot.canonical(q[0]))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_orientation_errors_are_geodesic_distances():
    rng = np.random.default_rng(6)
    q1, q2 = rot.uniform_so3(40, rng), rot.uniform_so3(40, rng)
    np.testing.assert_allclose(al.orientation_errors(q1, q2), rot.distance(q1, q2), atol=1e-15)
    # Sign and scale do not matter.
    np.testing.assert_allclose(al.orientation_errors(-2 * q1, 0.5 * q2), rot.distance(q1, q2), atol=1e-15)


def test_errors_before_and_after():
    rng = np.random.default_rng(7)
    q = rot.uniform_so3(300, rng)
    T = random_transform(rng, False)
    q_est = scrambled(perturb(q, np.full(300, 0.2), rng), T, rng)
    res = al.align(q, q_est)
    np.testing.assert_array_equal(res.errors_before, al.orientation_errors(q, q_est))
    np.testing.assert_allclose(res.errors, al.orientation_errors(q, res.aligned), atol=1e-15)
    np.testing.assert_allclose(res.aligned, al.apply_transform(res.transform, q_est), atol=1e-15)
    # A random T scatters the orientations (about 2.2 rad for Haar pairs); alignment removes it.
    assert res.mean_error_before > 1.5
    assert res.mean_error < 0.21
    assert res.mean_error_deg == pytest.approx(np.degrees(res.mean_error))
    assert res.median_error_deg == pytest.approx(np.degrees(np.median(res.errors)))
    assert res.median_error_before == pytest.approx(np.median(res.errors_before))


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


def test_spectral_start_ordering():
    # With exact Haar data the top eigenvector of K is close to T (up to sign; it is exactly T
    # only in the limit of many samples): checks the kron/vec order, which would give T^T or
    # an unrelated matrix if wrong.
    rng = np.random.default_rng(8)
    q = rot.uniform_so3(5000, rng)
    for reflect in (False, True):
        T = random_transform(rng, reflect)
        M = al._spectral_starts(q, scrambled(q, T, rng))[0]
        assert np.linalg.norm(M) == pytest.approx(2.0)
        assert same_up_to_sign(M, T, 0.1)
        assert not same_up_to_sign(M, T.T, 0.5)


@pytest.mark.parametrize("reflect", [False, True])
def test_synchronised_start_is_exact_in_a_cap(reflect):
    # Rotations within 0.5 rad of a centre: the principal axis separates q from -q, so after
    # synchronising signs the plain Procrustes solution is the truth.
    rng = np.random.default_rng(9)
    n = 300
    centre = rot.uniform_so3(1, rng)[0]
    q = rot.multiply(centre, perturb(np.tile([0, 0, 0, 1.0], (n, 1)), 0.5 * rng.random(n) ** (1 / 3), rng))
    q = q * random_signs(rng, n)  # any signs, on both sides
    T = random_transform(rng, reflect)
    q_est = scrambled(q, T, rng)
    det = -1 if reflect else 1
    start = al._nearest_on_component(al._synchronised_start(q, q_est), det)
    assert np.linalg.det(start) == pytest.approx(det)
    assert same_up_to_sign(start, T, 1e-10)
    res = al.align(q, perturb(q_est, np.full(n, 0.05), rng))
    assert res.reflected is reflect
    assert res.mean_error == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("reflect", [False, True])
def test_align_recovers_exact_transform(reflect):
    rng = np.random.default_rng(10 + reflect)
    q = rot.uniform_so3(500, rng)
    T = random_transform(rng, reflect)
    q_est = scrambled(q, T, rng)
    res = al.align(q, q_est)
    assert res.errors.max() < 1e-6
    assert res.reflected is reflect
    assert same_up_to_sign(res.transform, T, 1e-9)
    np.testing.assert_allclose(res.aligned, rot.canonical(q), atol=1e-9)
    a, b, _ = al.factors_of_transform(T)
    np.testing.assert_allclose(res.left, rot.canonical(a), atol=1e-9)
    np.testing.assert_allclose(res.right, rot.canonical(b), atol=1e-9)
    np.testing.assert_allclose(al.transform_from_factors(res.left, res.right, reflect), res.transform, atol=1e-14)
    # The other handedness cannot fit: for Haar data its best mean error is far from 0.
    other = res.branch_mean_errors[0 if reflect else 1]
    assert other > 0.5


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_align_noisy(reflect, sigma):
    rng = np.random.default_rng(int(100 * sigma) + reflect)
    n = 1000
    q = rot.uniform_so3(n, rng)
    T = random_transform(rng, reflect)
    angles = rng.uniform(0.5 * sigma, 1.5 * sigma, n)
    q_est = scrambled(perturb(q, angles, rng), T, rng)
    res = al.align(q, q_est)
    truth = mean_error_at(T, q, q_est)
    assert truth == pytest.approx(angles.mean(), rel=1e-9)
    # The optimiser finds at least as good a T as the truth, and only fits a little noise.
    assert res.mean_error <= truth + 1e-9
    assert res.mean_error == pytest.approx(angles.mean(), rel=0.03)
    assert res.reflected is reflect
    assert same_up_to_sign(res.transform, T, 0.05)


SAMPLERS = {
    "uniform_euler_box": lambda n, rng: rot.uniform_euler(n, coverage=(2, 0.4, 2), rng=rng),
    "so3_in_box": lambda n, rng: rot.uniform_so3_in_box(n, (1, 0.4, 1), rng=rng),
}


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("sigma", [0.0, 0.2, 0.5])
def test_align_restricted_coverage(sampler, reflect, sigma):
    rng = np.random.default_rng([sorted(SAMPLERS).index(sampler), int(reflect), int(10 * sigma)])
    n = 600
    q = SAMPLERS[sampler](n, rng)
    T = random_transform(rng, reflect)
    angles = np.full(n, sigma)
    q_est = scrambled(perturb(q, angles, rng), T, rng)
    res = al.align(q, q_est)
    assert res.reflected is reflect
    if sigma == 0:
        assert res.errors.max() < 1e-6
        assert same_up_to_sign(res.transform, T, 1e-8)
    else:
        assert res.mean_error <= mean_error_at(T, q, q_est) + 1e-9
        assert res.mean_error == pytest.approx(sigma, rel=0.03)


def test_align_is_the_global_minimum_on_a_hard_case():
    # Noisy, restricted, with 30 % outliers and few orientations: the landscape has many local
    # minima. Random starts of the same local search must not beat align's deterministic ones,
    # and an independent derivative-free search around the result must not improve it.
    rng = np.random.default_rng(20)
    n = 150
    q = rot.uniform_euler(n, coverage=(2, 0.4, 2), rng=rng)
    q_noisy = perturb(q, rng.uniform(0.3, 1.0, n), rng)
    outliers = rng.random(n) < 0.3
    q_noisy[outliers] = rot.uniform_so3(int(outliers.sum()), rng)
    T = random_transform(rng, True)
    q_est = scrambled(q_noisy, T, rng)
    res = al.align(q, q_est)

    local_minima = []
    for det in (1, -1):
        for _ in range(15):
            T0 = random_transform(rng, det < 0)
            T1 = al._procrustes_signs(q, q_est, T0[None], det, 1000)
            local_minima.append(al._refine_geodesic(q, q_est, T1, det, 1000, 1e-12)[0][0])
    assert len(set(np.round(local_minima, 6))) > 2  # the test case is indeed multimodal
    assert res.mean_error <= min(local_minima) + 1e-9

    iu = np.triu_indices(4, 1)

    def objective(x):
        S = np.zeros((4, 4))
        S[iu] = x
        return mean_error_at(res.transform @ expm(S - S.T), q, q_est)

    polished = minimize(
        objective, np.zeros(6), method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-14, maxiter=4000)
    )
    assert polished.fun >= res.mean_error - 1e-9


def test_refine_false_gives_the_chordal_minimum():
    rng = np.random.default_rng(21)
    n = 400
    q = rot.uniform_so3(n, rng)
    T = random_transform(rng, False)
    q_est = scrambled(perturb(q, rng.uniform(0.1, 0.6, n), rng), T, rng)
    chordal = al.align(q, q_est, refine=False)
    geodesic = al.align(q, q_est)

    def chordal_error(Tm):
        return float(np.mean(1 - np.abs(np.einsum("ij,ij->i", q, q_est @ Tm.T))))

    # Each is optimal for its own criterion, and they differ with unequal noise.
    assert geodesic.mean_error < chordal.mean_error
    assert chordal_error(chordal.transform) <= chordal_error(geodesic.transform)
    # The chordal solution is a fixed point of the sign-aware Procrustes step.
    s = np.sign(np.einsum("ij,ij->i", q, q_est @ chordal.transform.T))
    np.testing.assert_allclose(al._nearest_on_component((q * s[:, None]).T @ q_est, 1), chordal.transform, atol=1e-12)


def test_align_does_not_mutate_and_ignores_scale_and_sign():
    rng = np.random.default_rng(22)
    q = rot.uniform_so3(100, rng)
    q_est = scrambled(perturb(q, np.full(100, 0.2), rng), random_transform(rng, False), rng)
    q_copy, q_est_copy = q.copy(), q_est.copy()
    res = al.align(q, q_est)
    np.testing.assert_array_equal(q, q_copy)
    np.testing.assert_array_equal(q_est, q_est_copy)
    scaled = al.align(-3 * q, q_est * rng.uniform(0.1, 10, (100, 1)))
    assert scaled.mean_error == pytest.approx(res.mean_error, abs=1e-12)
    with pytest.raises(ValueError):
        res.errors[0] = 0.0  # results are read-only
    with pytest.raises(AttributeError):
        res.reflected = True  # frozen


def test_summary_is_plain_json():
    rng = np.random.default_rng(23)
    q = rot.uniform_so3(50, rng)
    res = al.align(q, scrambled(q, random_transform(rng, True), rng))
    record = al.summary(res)
    json.dumps(record)  # plain Python types only
    assert record["n"] == 50
    assert record["reflected"] is True
    assert record["mean_error_rad"] == res.mean_error
    assert record["median_error_deg"] == res.median_error_deg
    assert record["mean_error_before_rad"] == res.mean_error_before
    for key, value in record.items():
        if key.endswith(("_rad", "_deg")):
            assert type(value) is float
    with pytest.raises(TypeError, match="Alignment returned by align"):
        al.summary(record)


# --------------------------------------------------------------------------------------------
# Physical meaning of the factors
# --------------------------------------------------------------------------------------------


def test_handedness_is_left_and_right_rz_pi():
    rng = np.random.default_rng(30)
    q = rot.uniform_so3(100, rng)
    R = rot.quaternion_to_matrix(q)
    mirrored = J @ R @ J
    # J = -Rz(pi), so J R J = Rz(pi) R Rz(pi) ...
    np.testing.assert_allclose(J, -rz(np.pi), atol=1e-15)
    np.testing.assert_allclose(mirrored, rz(np.pi) @ R @ rz(np.pi), atol=1e-14)
    # ... i.e. q -> k q k with k the quaternion of Rz(pi): left = right = k.
    T = al.transform_from_factors(K, K)
    np.testing.assert_allclose(rot.quaternion_to_matrix(al.apply_transform(T, q)), mirrored, atol=1e-14)
    left, right, reflect = al.factors_of_transform(T)
    assert not reflect
    assert same_up_to_sign(np.concatenate([left, right]), np.concatenate([K, K]), 1e-15)


def test_mirror_volume_with_mirrored_orientations_gives_the_same_images():
    # A point-cloud volume: its projection in orientation R puts point y at (R y)_xy.
    rng = np.random.default_rng(31)
    points = rng.standard_normal((30, 3))
    R = rot.quaternion_to_matrix(rot.uniform_so3(20, rng))
    images = projected_points(points, R)
    # Handedness: volume mirrored (points J y), orientations J R J -> identical images.
    np.testing.assert_allclose(projected_points(points @ J.T, J @ R @ J), images, atol=1e-13)
    # Right factor G: volume rotated (points G^T y), orientations R G -> identical images.
    G = rot.quaternion_to_matrix(rot.uniform_so3(1, rng)[0])
    np.testing.assert_allclose(projected_points(points @ G, R @ G), images, atol=1e-13)
    # A left factor other than Rz(pi)-with-mirror changes the images, whatever the volume
    # rotation: here an in-plane turn of every image by 0.3 rad.
    H = rz(0.3)
    moved = projected_points(points, H @ R)
    assert np.max(np.abs(moved - images)) > 0.1
    # Conjugation R -> R^T is not a symmetry of the data either.
    transposed = projected_points(points, np.swapaxes(R, -1, -2))
    assert np.max(np.abs(transposed - images)) > 0.1


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    q = rot.uniform_so3(10, 0)
    with pytest.raises(ValueError, match="same shape"):
        al.align(q, q[:9])
    with pytest.raises(ValueError, match="at least 4 orientations"):
        al.align(q[:3], q[:3])
    with pytest.raises(ValueError, match=r"shape \(n, 4\).*Transpose"):
        al.align(q.T, q.T)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        al.align(q[0], q[0])
    bad = q.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="q_est must be finite"):
        al.align(q, bad)
    zero = q.copy()
    zero[4] = 0.0
    with pytest.raises(ValueError, match="q_true contains 1 zero quaternion"):
        al.align(zero, q)
    with pytest.raises(TypeError, match="quaternions"):
        al.align(q, "not quaternions")
    with pytest.raises(ValueError, match="max_iter"):
        al.align(q, q, max_iter=0)
    with pytest.raises(ValueError, match="orthogonal"):
        al.apply_transform(2 * np.eye(4), q)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        al.factors_of_transform(np.eye(3))
    with pytest.raises(ValueError, match="zero quaternion"):
        al.transform_from_factors(np.zeros(4), K)
    with pytest.raises(ValueError, match="same shape"):
        al.orientation_errors(q, q[:5])
