"""Two projections do not fix their relative orientation (cryo_orient.simulation.ambiguity)."""

import numpy as np
import pytest
from scipy import ndimage

from cryo_orient.geometry import rotations
from cryo_orient.simulation.ambiguity import pair_impostor, rotation_about_y
from cryo_orient.tomography.projection import project
from cryo_orient.validation import InputError


def blob_volume(n=24, seed=0):
    """A non-negative, asymmetric volume: a few Gaussian blobs off the centre."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, n, n))
    for _ in range(6):
        v[tuple(rng.integers(n // 3, 2 * n // 3, 3))] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(v, 1.5)


def pair(volume, angle):
    q = np.stack([rotation_about_y(0.0), rotation_about_y(angle)])
    return q, project(volume, q, volume.shape[0])


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("new_angle_deg", [75.0, 110.0, 150.0])
def test_another_volume_gives_the_same_two_images_at_another_relative_angle(new_angle_deg):
    volume = blob_volume()
    q, images = pair(volume, np.radians(40.0))
    new_angle = np.radians(new_angle_deg)
    impostor = pair_impostor(images[0], images[1], new_angle, 48)
    q_new, again = pair(impostor, new_angle)
    again = again[:, 12:36, 12:36] if again.shape[-1] != 24 else again
    assert relative_error(again[0], images[0]) < 0.01
    assert relative_error(again[1], images[1]) < 0.03  # linear interpolation along the tilted rays
    # Same inputs, labels 40° against new_angle_deg: no function of the pair gets both right.
    assert rotations.distance(q[0], q[1]) == pytest.approx(np.radians(40.0))
    assert rotations.distance(q_new[0], q_new[1]) == pytest.approx(new_angle)
    assert impostor.min() > -1e-6 * impostor.max()


def test_the_impostor_at_the_true_angle_is_another_volume_with_the_same_pair():
    volume = blob_volume(seed=1)
    _, images = pair(volume, np.radians(90.0))
    impostor = pair_impostor(images[0], images[1], np.radians(90.0), 24)
    _, again = pair(impostor, np.radians(90.0))
    assert relative_error(again, images) < 0.01
    assert relative_error(impostor, volume) > 0.1  # a different volume (21 % off) explains the same two images


def test_inputs_are_not_modified():
    _, images = pair(blob_volume(), np.radians(60.0))
    a, b = images[0].copy(), images[1].copy()
    pair_impostor(images[0], images[1], np.radians(100.0), 32)
    assert np.array_equal(images[0], a) and np.array_equal(images[1], b)


def test_bad_inputs_are_one_line_errors():
    _, images = pair(blob_volume(), np.radians(60.0))
    other = images[1].copy()
    other[5] *= 2.0
    with pytest.raises(InputError, match="row 5"):
        pair_impostor(images[0], other, 1.0, 32)
    with pytest.raises(InputError, match="angle"):
        pair_impostor(images[0], images[1], 0.0, 32)
    with pytest.raises(InputError, match="box"):
        pair_impostor(images[0], images[1], 1.0, 16)
    with pytest.raises(InputError, match="square"):
        pair_impostor(images[0][:, :20], images[1][:, :20], 1.0, 32)
