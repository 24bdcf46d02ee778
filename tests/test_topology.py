"""The restricted-coverage study (issue 16), pinned without a CNN, and the topology check.

Facts: (1) the paper's head ``2 arccos cos(f_i, f_j)`` cannot represent d_q on a full in-plane
loop (its kernel |cos(α/2)| is not positive definite), the squared head's cos²(α/2) is, and
f = (1, vec R)/2 gives it exactly; (2) features that are smooth functions of R, fitted with the
paper's head on the "quarter" set, admit an "unwound" configuration that fits Eq. 4 better than
the truth, which recovery from a uniform start finds and the topology check flags; the squared
head recovers the truth; on full SO(3) the truth stays the paper's head's best fit.
"""

import warnings

import numpy as np
import pytest

from cryo_orient.estimation import siamese
from cryo_orient.estimation.continuous import fit_features
from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment, recovery, topology
from cryo_orient.validation import InputError

QUARTER = (2.0, 1.0, 0.4)
HALF = (2.0, 0.4, 2.0)
FULL = (2.0, 1.0, 2.0)


def _ball(n, max_angle_deg=150.0, seed=0):
    """Rotations by less than ``max_angle_deg``: a contractible set, which lifts to S³."""
    q = rotations.uniform_so3(20 * n, seed)
    return q[np.abs(q[:, 3]) > np.cos(np.deg2rad(max_angle_deg) / 2)][:n]


def test_in_plane_kernel_of_the_paper_head_is_not_positive_definite():
    alpha = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    diff = alpha[:, None] - alpha[None, :]
    paper = np.abs(np.cos(diff / 2))  # cos(f_i, f_j) the paper's head needs on an in-plane loop
    squared = np.cos(diff / 2) ** 2  # what the squared head needs
    assert np.linalg.eigvalsh(paper).min() < -0.01
    assert np.linalg.eigvalsh(squared).min() > -1e-10


def test_squared_head_represents_d_q_exactly_with_1_vec_r():
    q = rotations.uniform_so3(300, 0)
    f = np.concatenate([np.ones((300, 1)), rotations.quaternion_to_matrix(q).reshape(300, 9)], axis=1) / 2
    i, j = np.triu_indices(300, 1)
    d_p = siamese.feature_distances(f[i], f[j], "squared_cosine")
    assert np.abs(d_p - rotations.distance(q[i], q[j])).max() < 2e-3  # the ε clip near π
    # and the paper's head on the same features is far off
    assert np.abs(siamese.feature_distances(f[i], f[j], "cosine") - rotations.distance(q[i], q[j])).mean() > 0.3


@pytest.mark.parametrize("coverage", [QUARTER, HALF, FULL])
def test_orientations_with_full_in_plane_loops_do_not_lift(coverage):
    check = topology.check_topology(rotations.uniform_so3_in_box(400, coverage, rng=0))
    assert check.frustrated_fraction > 0.01
    assert check.unwound is False
    assert "not unwound" in check.message


def test_a_contractible_set_lifts_in_every_gauge():
    q = _ball(400)
    check = topology.check_topology(q)
    assert check.frustrated_fraction == 0.0 and check.unwound is True
    a, b = rotations.uniform_so3(2, 5)
    moved = rotations.conjugate(rotations.multiply(rotations.multiply(a, q), b))
    assert topology.check_topology(moved).frustrated_fraction == 0.0
    with pytest.warns(UserWarning, match="likely unwound"):
        topology.warn_if_unwound(check)


def test_the_check_is_gauge_invariant_on_a_wound_set():
    q = rotations.uniform_so3_in_box(400, QUARTER, rng=1)
    a, b = rotations.uniform_so3(2, 7)
    moved = rotations.multiply(rotations.multiply(a, q), b)
    assert topology.check_topology(moved).frustrated_fraction == pytest.approx(
        topology.check_topology(q).frustrated_fraction, abs=0.003
    )


def test_too_few_orientations_give_no_verdict():
    check = topology.check_topology(rotations.uniform_so3(50, 0))
    assert check.unwound is None and "too few" in check.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        topology.warn_if_unwound(check)


def test_bad_quaternions_are_refused():
    with pytest.raises(InputError):
        topology.check_topology(np.ones((10, 3)))
    with pytest.raises(InputError, match="k"):
        topology.check_topology(rotations.uniform_so3(300, 0), k=0)


def _distances(q_train, q_test, kind):
    features = fit_features(q_train, kind)
    d = siamese.distance_matrix(features(q_test), kind).astype(np.float64)
    np.fill_diagonal(d, 0.0)
    return np.clip((d + d.T) / 2, 0.0, np.pi)


def _loss(d, q):
    return float(np.mean((d - rotations.distance(q[:, None], q[None])) ** 2))


@pytest.fixture(scope="module")
def quarter():
    rng = np.random.default_rng(1)
    return rotations.uniform_so3_in_box(800, QUARTER, rng=rng), rotations.uniform_so3_in_box(400, QUARTER, rng=rng)


def test_paper_head_on_quarter_coverage_fits_an_unwound_configuration_better_than_the_truth(quarter):
    q_train, q_test = quarter
    d = _distances(q_train, q_test, "cosine")
    with pytest.warns(UserWarning, match="likely unwound"):
        result = recovery.recover(d, len(q_test), restarts=4, rng=0, progress=False)
    # measured: final loss 0.0195 against 0.0279 at the truth, E_OR median 0.78-0.80 rad
    assert result.final_loss < 0.85 * _loss(d, q_test)
    assert result.topology["unwound"] is True
    assert alignment.align(q_test, result.quaternions).median_error > 0.5


def test_squared_head_on_quarter_coverage_recovers_the_truth(quarter):
    q_train, q_test = quarter
    d = _distances(q_train, q_test, "squared_cosine")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = recovery.recover(d, len(q_test), restarts=2, rng=0, progress=False)
    assert result.topology["unwound"] is False
    assert alignment.align(q_test, result.quaternions).median_error < 0.03  # measured 0.012


def test_paper_head_on_full_coverage_keeps_the_truth_as_its_best_fit():
    rng = np.random.default_rng(1)
    q_train, q_test = rotations.uniform_so3_in_box(800, FULL, rng=rng), rotations.uniform_so3_in_box(400, FULL, rng=rng)
    d = _distances(q_train, q_test, "cosine")
    result = recovery.recover(d, len(q_test), restarts=2, rng=0, progress=False)
    assert result.final_loss > 0.9 * _loss(d, q_test)  # measured 0.0478 against 0.0497
    assert result.topology["unwound"] is False
    assert alignment.align(q_test, result.quaternions).median_error < 0.15  # measured 0.074
