"""Two projections do not fix their relative orientation (cryo_orient.simulation.ambiguity)."""

import numpy as np
import pytest
from scipy import ndimage

from cryo_orient.geometry import rotations
from cryo_orient.simulation.ambiguity import pair_impostor, rotation_about_y
from cryo_orient.tomography.projection import project
from cryo_orient.validation import InputError

N, BOX = 24, 96


def blob_volume(n=N, seed=0):
    """A non-negative, asymmetric volume: a few Gaussian blobs off the centre."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, n, n))
    for _ in range(6):
        v[tuple(rng.integers(n // 3, 2 * n // 3, 3))] += rng.uniform(0.5, 1.5)
    return ndimage.gaussian_filter(v, 1.5)


def views(volume, angle, first=None):
    """The volume's projections (N px) at ``first`` (default the identity) and at the rotation by
    ``angle`` about y composed after it, with their quaternions."""
    first = rotation_about_y(0.0) if first is None else first
    q = np.stack([first, rotations.multiply(rotation_about_y(angle), first)])
    images = project(volume, q, volume.shape[0])
    c = volume.shape[0] // 2 - N // 2
    return q, images[:, c : c + N, c : c + N]


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("new_angle_deg", [75.0, 110.0, 150.0, -60.0])
def test_another_volume_gives_the_same_two_images_at_another_relative_angle(new_angle_deg):
    volume = blob_volume()
    q, images = views(volume, np.radians(40.0))
    new_angle = np.radians(new_angle_deg)
    impostor = pair_impostor(images[0], images[1], new_angle, BOX)
    q_new, again = views(impostor, new_angle)
    assert relative_error(again[0], images[0]) < 0.01
    assert relative_error(again[1], images[1]) < 0.03  # linear interpolation along the tilted rays
    # Same inputs, labels 40° against |new_angle_deg|: no function of the pair gets both right.
    assert rotations.distance(q[0], q[1]) == pytest.approx(np.radians(40.0))
    assert rotations.distance(q_new[0], q_new[1]) == pytest.approx(abs(new_angle))
    assert impostor.min() >= 0.0


def test_a_pair_in_any_orientation_of_the_volume_is_explained_at_another_angle():
    # The second view rotated about an axis in the first view's plane, the volume in a random
    # orientation (the experiment's pairs): its rows are still projections of common slices.
    volume = blob_volume(seed=2)
    g = rotations.uniform_so3(1, np.random.default_rng(3))[0]
    q, images = views(volume, np.radians(50.0), first=g)
    assert rotations.distance(q[0], q[1]) == pytest.approx(np.radians(50.0))
    impostor = pair_impostor(images[0], images[1], np.radians(100.0), BOX)
    _, again = views(impostor, np.radians(100.0))
    assert relative_error(again, images) < 0.03


def test_the_impostor_at_the_true_angle_is_another_volume_with_the_same_pair():
    volume = blob_volume(seed=1)
    _, images = views(volume, np.radians(90.0))
    impostor = pair_impostor(images[0], images[1], np.radians(90.0), N + 8)
    _, again = views(impostor, np.radians(90.0))
    assert relative_error(again, images) < 0.01
    c = (N + 8) // 2 - N // 2
    assert relative_error(impostor[c : c + N, c : c + N, c : c + N], volume) > 0.1  # another volume (21 % off)


def test_inputs_are_not_modified():
    _, images = views(blob_volume(), np.radians(60.0))
    a, b = images[0].copy(), images[1].copy()
    pair_impostor(images[0], images[1], np.radians(100.0), BOX)
    assert np.array_equal(images[0], a) and np.array_equal(images[1], b)


def test_bad_inputs_are_one_line_errors():
    _, images = views(blob_volume(), np.radians(60.0))
    other = images[1].copy()
    other[5] *= 2.0
    with pytest.raises(InputError, match="row 5"):
        pair_impostor(images[0], other, 1.0, BOX)
    with pytest.raises(InputError, match="angle"):
        pair_impostor(images[0], images[1], 0.0, BOX)
    with pytest.raises(InputError, match="smaller than the images"):
        pair_impostor(images[0], images[1], 1.0, N - 2)
    with pytest.raises(InputError, match=r"cannot hold .* use box ≥"):
        pair_impostor(images[0], images[1], np.radians(160.0), N + 2)
    with pytest.raises(InputError, match="square"):
        pair_impostor(images[0][:, :20], images[1][:, :20], 1.0, BOX)
    negative = images[0] - 0.5 * images[0].max()
    with pytest.raises(InputError, match="negative pixels"):
        pair_impostor(negative, negative, 1.0, BOX)
