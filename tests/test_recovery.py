"""Tests of cryo_orient.orientation.recovery: orientation recovery from pairwise distances (Eq. 4)."""

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from cryo_orient.estimation import exact
from cryo_orient.geometry import rotations as rot  # noqa: E402
from cryo_orient.orientation import alignment, engine, recovery


def all_pair_distances(q):
    """Full (n, n) geodesic distance matrix of orientations."""
    return rot.distance(q[:, None, :], q[None, :, :])


@pytest.fixture(scope="module")
def q200():
    return rot.uniform_so3(200, np.random.default_rng(2021))


@pytest.fixture(scope="module")
def exact200(q200):
    """One improved-mode run on exact distances, shared by the tests that inspect it."""
    return recovery.recover(exact.exact_distances(q200), 200, rng=7, progress=False)


# --------------------------------------------------------------------------------------------
# Exact distances
# --------------------------------------------------------------------------------------------


def test_exact_distances_recover_the_configuration(q200, exact200):
    res = exact200
    assert res.converged and res.stop_reason == "tolerance", res.stop_reason
    assert res.final_loss < 1e-10
    # Pairwise distances are invariant under the gauge (SO(3) isometries), so they must match.
    err = np.abs(all_pair_distances(res.quaternions) - all_pair_distances(q200))
    assert err.max() < 1e-3
    assert recovery.pairwise_loss(all_pair_distances(q200), res.quaternions) < 1e-8


def test_exact_distances_recover_orientations_after_alignment(q200, exact200):
    aligned = alignment.align(q200, exact200.quaternions)
    assert aligned.mean_error < 0.01
    # The recovery does not know the gauge: before alignment the error is large.
    assert rot.distance(q200, exact200.quaternions).mean() > 0.1


def test_result_is_canonical_unit_and_frozen(exact200):
    q = exact200.quaternions
    assert q.shape == (200, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(rot.canonical(q), q, rtol=0, atol=1e-15)
    assert exact200.losses.shape == (exact200.steps,)
    assert exact200.seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        exact200.steps = 0
    with pytest.raises(ValueError):
        q[0, 0] = 1.0  # read-only, so a result cannot be changed behind a record's back
    json.dumps(exact200.settings)  # the settings go into JSON records
    assert exact200.settings["mode"] == "improved"
    assert exact200.settings["rng_seed"] == 7


def test_matrix_input_matches_callable_and_is_not_mutated():
    q = rot.uniform_so3(60, np.random.default_rng(3))
    d = all_pair_distances(q)
    before = d.copy()
    a = recovery.recover(d, 60, rng=1, max_steps=100, progress=False)
    b = recovery.recover(exact.exact_distances(q), 60, rng=1, max_steps=100, progress=False)
    np.testing.assert_array_equal(d, before)
    # Same pairs, same targets up to rounding: the trajectories agree closely.
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6, atol=1e-12)
    assert a.settings["distances"] == "matrix" and b.settings["distances"] == "callable"


def test_stable_loss_at_zero_and_pi():
    """Identical and half-turn pairs (d = 0 and d = pi) must not break the improved loss."""
    rng = np.random.default_rng(5)
    q = rot.uniform_so3(150, rng)
    q[10:20] = q[0]  # eleven identical orientations: d = 0
    half_turn = np.array([1.0, 0.0, 0.0, 0.0])
    q[20] = rot.canonical(rot.multiply(q[0], half_turn))  # d = pi from q[0]
    d = all_pair_distances(q)
    assert d.min() == 0.0 and np.isclose(d.max(), np.pi)
    res = recovery.recover(d, 150, rng=2, restarts=2, progress=False)
    assert np.all(np.isfinite(res.losses))
    assert res.final_loss < 1e-8
    assert np.abs(all_pair_distances(res.quaternions) - d).max() < 1e-3
    # Started exactly at the truth, every d = 0 pair sits on the cone's tip: the loss is finite
    # and the run stops at once.
    res = recovery.recover(d, 150, rng=2, init=q, progress=False)
    assert res.steps == 1 and res.stop_reason == "tolerance" and res.losses[0] < 1e-20


def test_restarts_keep_the_lowest_final_loss():
    q = rot.uniform_so3(60, np.random.default_rng(3))
    res = recovery.recover(exact.exact_distances(q), 60, rng=0, restarts=3, max_steps=60, progress=False)
    finals = res.settings["restart_final_losses"]
    assert len(finals) == 3 and len(set(finals)) == 3  # independent starts
    assert res.final_loss == min(finals) == finals[res.settings["restart_chosen"]]


# --------------------------------------------------------------------------------------------
# Faithful mode
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_faithful_mode_uses_the_papers_settings_and_decreases_the_loss():
    q = rot.uniform_so3(100, np.random.default_rng(11))
    res = recovery.recover(exact.exact_distances(q), 100, mode="faithful", rng=0, max_steps=1500, progress=False)
    s = res.settings
    assert (s["batch_size"], s["learning_rate"], s["init"], s["distance_form"]) == (256, 0.5, "uniform_euler", "arccos")
    assert s["init_coverage"] == [2.0, 0.4, 2.0]
    assert (s["window"], s["tol"], s["plateau_tol"]) == (1000, 1e-8, 1e-7)
    assert recovery.FAITHFUL["max_steps"] == 30_000
    assert res.steps == 1500 and not res.converged and res.stop_reason == "max_steps"
    assert np.all(np.isfinite(res.losses))  # i == j pairs are drawn; the arccos must not NaN
    assert res.losses[-100:].mean() < 0.5 * res.losses[:100].mean()


def test_faithful_stopping_rules():
    s = dict(recovery.FAITHFUL)
    stop = engine.Stopper(s)
    assert not stop.done(np.full(999, 1e-9))
    assert stop.done(np.full(1000, 1e-9)) and stop.reason == "tolerance"
    # A flat loss stops on the plateau rule once two windows exist, not before.
    stop = engine.Stopper(s)
    flat = np.full(2000, 0.1)
    assert not stop.done(flat[:1999])
    assert stop.done(flat) and stop.reason == "plateau"
    # A loss still falling by more than 1e-7 between windows keeps going.
    stop = engine.Stopper(s)
    assert not stop.done(np.linspace(1.0, 0.5, 2000))


def test_improved_schedule_halves_then_stops_on_plateau():
    s = dict(recovery.IMPROVED)
    w, lr0 = s["window"], s["learning_rate"]

    def run(losses):
        stop = engine.Stopper(s)
        k = w
        while not stop.done(losses[:k]):
            k += 1
        return stop, k

    # A flat loss never leaves its start: plateaus count only after arm_steps; then (patience)
    # bad windows per halving, max_decays halvings, and a final patience to stop.
    stop, k = run(np.full(100 * w, 0.2))
    assert stop.reason == "plateau"
    assert k == s["arm_steps"] + w * s["patience"] * (s["max_decays"] + 1)
    assert stop.learning_rate == pytest.approx(lr0 * s["decay"] ** s["max_decays"])
    # A loss that halves and then stalls is armed at once (no wait for arm_steps).
    losses = np.concatenate([np.full(w, 0.8), np.full(100 * w, 0.1)])
    stop, k = run(losses)
    assert k == 2 * w + w * s["patience"] * (s["max_decays"] + 1)


# --------------------------------------------------------------------------------------------
# Perturbed distances
# --------------------------------------------------------------------------------------------


def test_redrawn_noise_gives_the_noise_floor(q200):
    sigma = 0.3
    d = exact.perturbed_distances(q200, sigma, rng=1)
    res = recovery.recover(d, 200, rng=3, progress=False)
    assert res.converged and res.stop_reason == "plateau"
    # Fresh noise averages out: the orientations are recovered and the loss is ~ sigma^2.
    assert res.final_loss == pytest.approx(sigma**2, rel=0.05)
    err = all_pair_distances(res.quaternions) - all_pair_distances(q200)
    assert np.sqrt(np.mean(err**2)) < 0.05
    # L_OR evaluated off the training batches agrees.
    assert recovery.pairwise_loss(d, res.quaternions, n_pairs=200_000, rng=0) == pytest.approx(sigma**2, rel=0.05)


def test_redrawn_noise_is_fresh_and_unclipped(q200):
    sigma = 0.3
    f = exact.perturbed_distances(q200, sigma, rng=0)
    i, j = np.divmod(np.arange(200 * 200), 200)
    a, b = f(i, j), f(i, j)
    assert np.std(a - b) == pytest.approx(sigma * np.sqrt(2), rel=0.03)
    assert a.min() < 0  # the diagonal and short distances go negative, as in the paper


def test_fixed_noise_is_symmetric_persistent_and_gaussian():
    n = 100_000  # no n x n table: this must be instant
    q = rot.uniform_so3(n, np.random.default_rng(0))
    sigma = 0.2
    f = exact.perturbed_distances(q, sigma, redrawn=False, rng=4, clip=False)
    g = np.random.default_rng(1)
    i, j = g.integers(0, n, 200_000), g.integers(0, n, 200_000)
    first = f(i, j)
    np.testing.assert_array_equal(first, f(j, i))  # (i, j) and (j, i): the same error
    np.testing.assert_array_equal(first, f(i, j))  # and the same on every call
    noise = first - rot.distance(q[i], q[j])
    assert abs(noise.mean()) < 0.005 and noise.std() == pytest.approx(sigma, rel=0.02)
    # Normal, not merely of the right variance: the fourth moment of a Gaussian is 3 sigma^4.
    assert np.mean(noise**4) / noise.var() ** 2 == pytest.approx(3.0, rel=0.05)
    # Another seed gives other errors; by default the result is clipped to [0, pi].
    other = exact.perturbed_distances(q, sigma, redrawn=False, rng=5, clip=False)(i, j)
    assert abs(np.corrcoef(other - rot.distance(q[i], q[j]), noise)[0, 1]) < 0.01
    clipped = exact.perturbed_distances(q, 1.0, redrawn=False, rng=4)(i, j)
    assert clipped.min() >= 0 and clipped.max() <= np.pi


def test_pairwise_loss_all_pairs_and_sampled():
    g = np.random.default_rng(9)
    q = rot.uniform_so3(30, g)
    noisy = 0.9 * all_pair_distances(q) + 0.1  # a biased estimate, still in [0, pi]
    iu = np.triu_indices(30, k=1)
    other = rot.uniform_so3(30, g)
    expected = np.mean((noisy[iu] - all_pair_distances(other)[iu]) ** 2)
    assert recovery.pairwise_loss(noisy, other) == pytest.approx(expected, rel=1e-12)
    assert recovery.pairwise_loss(all_pair_distances(q), q) < 1e-20
    sampled = recovery.pairwise_loss(noisy, other, n_pairs=400_000, rng=0)
    assert sampled == pytest.approx(expected, rel=0.02)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def d30():
    return all_pair_distances(rot.uniform_so3(30, np.random.default_rng(1)))


def test_non_square_matrix(d30):
    with pytest.raises(ValueError, match=r"square \(n, n\).*\(30, 29\)"):
        recovery.recover(d30[:, :-1], 30, progress=False)


def test_n_mismatch(d30):
    with pytest.raises(ValueError, match=r"30 x 30 but n = 31"):
        recovery.recover(d30, 31, progress=False)


def test_asymmetric_matrix(d30):
    d = d30.copy()
    d[0, 1] += 0.1
    d[2, 5] -= 0.2
    with pytest.raises(ValueError, match=r"symmetric.*2 pair\(s\).*\(d \+ d\.T\) / 2"):
        recovery.recover(d, 30, progress=False)


def test_nan_entries(d30):
    d = d30.copy()
    d[3, 4] = d[4, 3] = np.nan
    with pytest.raises(ValueError, match=r"2 NaN entries"):
        recovery.recover(d, 30, progress=False)


@pytest.mark.parametrize("value, what", [(-0.1, "1 entry is negative"), (3.5, "1 entry is above pi")])
def test_out_of_range(d30, value, what):
    d = d30.copy()
    d[0, 0] = value
    with pytest.raises(ValueError, match=f"\\[0, pi\\].*{what}.*np.clip"):
        recovery.recover(d, 30, progress=False)


def test_tolerance_of_range_check(d30):
    d = d30.copy()
    d[0, 0] = -1e-8  # float32 rounding: accepted
    recovery.recover(d, 30, max_steps=1, progress=False)


def test_callable_returning_nan_names_the_step(q200):
    true_distances = exact.exact_distances(q200)
    calls = []

    def broken(i, j):
        calls.append(1)
        d = true_distances(i, j)
        if len(calls) == 3:
            d[5] = np.nan
        return d

    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) at step 3"):
        recovery.recover(broken, 200, progress=False)


def test_callable_returning_wrong_length(q200):
    with pytest.raises(ValueError, match=r"one distance per pair"):
        recovery.recover(lambda i, j: np.zeros(3), 200, progress=False)


def test_bad_arguments(d30):
    with pytest.raises(ValueError, match="mode must be one of"):
        recovery.recover(d30, 30, mode="fast", progress=False)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        recovery.recover(np.zeros((1, 1)), 1, progress=False)
    with pytest.raises(ValueError, match="init must have shape"):
        recovery.recover(d30, 30, init=np.ones((29, 4)), progress=False)
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        exact.perturbed_distances(np.ones((3, 4)), -1.0)
    with pytest.raises(IndexError, match="outside"):
        exact.exact_distances(np.ones((3, 4)))(np.array([0]), np.array([3]))


# --------------------------------------------------------------------------------------------
# Reproducibility, inputs, callback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["improved", "faithful"])
def test_same_seed_same_result(mode):
    q = rot.uniform_so3(80, np.random.default_rng(4))
    f = exact.exact_distances(q)
    runs = [recovery.recover(f, 80, mode=mode, rng=seed, max_steps=150, progress=False) for seed in (12, 12, 13)]
    np.testing.assert_array_equal(runs[0].quaternions, runs[1].quaternions)
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    assert not np.array_equal(runs[0].quaternions, runs[2].quaternions)


def test_generator_rng_and_init_array_not_mutated():
    q = rot.uniform_so3(50, np.random.default_rng(6))
    init = rot.uniform_so3(50, np.random.default_rng(7)) * 2.0  # not unit: normalised inside
    before = init.copy()
    seen = []
    res = recovery.recover(
        exact.exact_distances(q),
        50,
        rng=np.random.default_rng(0),
        init=init,
        max_steps=20,
        progress=False,
        callback=lambda step, loss: seen.append((step, loss)),
    )
    np.testing.assert_array_equal(init, before)
    assert res.settings["init"] == "array" and res.settings["rng_seed"] is None
    assert [s for s, _ in seen] == list(range(1, 21))
    np.testing.assert_array_equal([v for _, v in seen], res.losses)


def test_exact_distances_copies_its_input():
    q = rot.uniform_so3(10, np.random.default_rng(8))
    f = exact.exact_distances(q)
    i, j = np.arange(10), np.roll(np.arange(10), 1)
    before = f(i, j)
    q[:] = [0.0, 0.0, 0.0, 1.0]
    np.testing.assert_array_equal(f(i, j), before)


def test_euler_box_start_takes_its_box_and_records_it():
    q = rot.uniform_so3_in_box(120, (2.0, 1.0, 0.4), rng=3)
    d = rot.distance(q[:, None], q[None])
    result = recovery.recover(d, 120, init="uniform_euler", init_coverage=(2, 1, 0.4), rng=0, progress=False)
    assert result.settings["init"] == "uniform_euler" and result.settings["init_coverage"] == [2.0, 1.0, 0.4]
    assert result.final_loss < 1e-8
    assert result.topology["n_orientations"] == 120 and result.topology["unwound"] is None  # too few for a verdict
    with pytest.raises(recovery.InputError, match="init_coverage must be 3 widths"):
        recovery.recover(d, 120, init="uniform_euler", init_coverage=(2, 1.5, 0.4))


def test_recovery_reports_the_topology_of_what_it_recovered():
    q = rot.uniform_so3(300, 4)
    d = rot.distance(q[:, None], q[None])
    result = recovery.recover(d, 300, rng=0, progress=False)
    assert result.topology["unwound"] is False and result.topology["frustrated_fraction"] > 0.02
