"""Fourier shell correlation: identical maps, independent noise, a known low-pass cut-off; the FSC filter."""

import numpy as np
import pytest

from cryo_orient.tomography.fsc import fsc, fsc_filter, soft_sphere_mask


@pytest.fixture(scope="module")
def volume():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.random((32, 32, 32)), 1.0)


def test_a_volume_with_itself_is_one_to_nyquist(volume):
    result = fsc(volume, volume, voxel_size=2.0)
    np.testing.assert_allclose(result.correlation, 1.0, atol=1e-12)
    res, crossed = result.resolution(0.5)
    assert res == pytest.approx(4.0) and not crossed  # Nyquist: 2 × voxel size
    assert result.frequency[-1] == pytest.approx(1 / 4.0)


def test_independent_noise_correlates_near_zero():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 32, 32, 32))
    corr = fsc(a, b, 1.0).correlation[2:]
    # Shell k holds ~4πk² coefficients: the correlation of independent noise is ~1/sqrt(that).
    assert np.all(np.abs(corr) < 0.25) and abs(corr.mean()) < 0.03


def test_resolution_of_a_low_pass_copy_is_at_its_cut_off(volume):
    rng = np.random.default_rng(2)
    noisy = volume + 0.05 * rng.normal(size=volume.shape)
    f = np.fft.fftn(noisy)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(32)] * 3, indexing="ij"))) * 32
    cut = np.real(np.fft.ifftn(f * (k <= 8)))  # keep shells 0..8 of 16
    result = fsc(noisy, cut, voxel_size=1.5)
    res, crossed = result.resolution(0.5)
    assert crossed
    # Shell 8 of a 32-voxel box at 1.5 Å is 1/(8 / 48 Å) = 6 Å; the crossing lies between shells 8 and 9.
    assert 48 / 9 <= res <= 6.0
    assert result.summary()["resolution_0.143"] <= res


def test_soft_mask_and_bad_inputs(volume):
    m = soft_sphere_mask(volume.shape, radius=10, width=3)
    assert m[16, 16, 16] == 1 and m[0, 0, 0] == 0 and 0 < m[16, 16, 28] < 1
    masked = fsc(volume, volume, 1.0, mask="soft_sphere")
    np.testing.assert_allclose(masked.correlation, 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        fsc(volume, volume[:-1], 1.0)
    with pytest.raises(ValueError, match="voxel_size"):
        fsc(volume, volume, 0.0)
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fsc(bad, volume, 1.0)
    with pytest.raises(ValueError, match="mask"):
        fsc(volume, volume, 1.0, mask=np.ones((3, 3, 3)))


def test_fsc_filter_is_the_wiener_estimate_of_the_signal(volume):
    # Two half maps: the same signal plus independent noise that dominates the high shells.
    rng = np.random.default_rng(3)
    signal = volume - volume.mean()
    halves = signal + 2 * signal.std() * rng.normal(size=(2, *signal.shape))
    curve = fsc(halves[0], halves[1], 1.0)
    kept = halves[0].copy()
    filtered = fsc_filter(halves[0], curve)
    np.testing.assert_array_equal(halves[0], kept)  # input not modified

    def error(v):
        return np.linalg.norm(v - signal) / np.linalg.norm(signal)

    # The raw half map is mostly noise (relative error 2.0); the filtered one is much closer to
    # the signal (0.61), and closer than a hard cut at the FSC's 0.143 crossing (0.85).
    res, _ = curve.resolution(0.143)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(32)] * 3, indexing="ij")))
    hard = np.real(np.fft.ifftn(np.fft.fftn(halves[0]) * (k <= 1 / res)))
    assert error(filtered) < 0.4 * error(halves[0])
    assert res > 2.5 and error(filtered) < 0.8 * error(hard)
    # An FSC of 1 keeps every shell up to Nyquist (only the corners beyond it are dropped).
    ones = fsc(signal, signal, 1.0)
    lowpassed = np.real(np.fft.ifftn(np.fft.fftn(signal) * (k * 32 < 16.5)))
    np.testing.assert_allclose(fsc_filter(signal, ones), lowpassed, atol=1e-10)
    # Anti-correlated maps (FSC -1) are clipped to weight 0: only the mean (shell 0) survives.
    opposite = fsc(signal + 1.0, -signal - 1.0, 1.0)
    np.testing.assert_allclose(fsc_filter(signal + 1.0, opposite), 1.0, atol=1e-10)
    with pytest.raises(ValueError, match="shells"):
        fsc_filter(signal[:-2, :-2, :-2], ones)
