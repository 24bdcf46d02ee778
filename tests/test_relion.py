import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
from gemmi import cif
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryo_orient.data.relion import (
    quaternions_to_relion,
    read_particle_table,
    read_star,
    relion_to_quaternions,
    write_particle_stack,
    write_particles,
    write_star,
)
from cryo_orient.geometry import rotations
from cryo_orient.simulation.simulate import shift_images
from cryo_orient.tomography import fsc, projection
from stacks import make_stack, small_map


def relion_matrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix, written out from its source (angles in degrees)."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


@pytest.fixture
def quats():
    return rotations.uniform_so3(200, rng=7)


# ------------------------------------------------------------------ Euler angles


def test_angles_give_relions_matrix(quats):
    angles = quaternions_to_relion(quats)
    assert angles.shape == (200, 3)
    R = rotations.quaternion_to_matrix(quats)
    for ang, r in zip(angles, R):
        np.testing.assert_allclose(relion_matrix(*ang), r, atol=1e-12)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    assert np.all((angles[:, [0, 2]] > -180) & (angles[:, [0, 2]] <= 180))


def test_angles_match_scipy_zyz_of_the_transpose(quats):
    R = rotations.quaternion_to_matrix(quats)
    expected = Rotation.from_matrix(np.swapaxes(R, -1, -2)).as_euler("ZYZ", degrees=True)
    diff = (quaternions_to_relion(quats) - expected + 180) % 360 - 180
    np.testing.assert_allclose(diff, 0, atol=1e-9)


def test_paper_angles_relation(quats):
    theta3, theta2, theta1 = np.degrees(rotations.quaternion_to_euler(quats)).T
    expected = np.stack([180 - theta1, theta2, 180 - theta3], axis=-1)
    diff = (quaternions_to_relion(quats) - expected + 180) % 360 - 180
    np.testing.assert_allclose(diff, 0, atol=1e-9)


def test_inverse_gives_relions_matrix_and_round_trips(quats):
    angles = quaternions_to_relion(quats)
    back = relion_to_quaternions(angles)
    assert rotations.distance(quats, back).max() < 1e-9
    np.testing.assert_allclose(back, rotations.canonical(back))
    # arbitrary angles, tilt outside [0, 180] included
    wild = np.random.default_rng(0).uniform(-400, 400, size=(50, 3))
    R = rotations.quaternion_to_matrix(relion_to_quaternions(wild))
    for ang, r in zip(wild, R):
        np.testing.assert_allclose(r, relion_matrix(*ang), atol=1e-12)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_gimbal_lock(tilt):
    angles = np.array([[30.0, tilt, 50.0], [-170.0, tilt, 100.0], [0.0, tilt, 0.0]])
    q = relion_to_quaternions(angles)
    back = quaternions_to_relion(q)
    np.testing.assert_array_equal(back[:, 0], 0.0)  # RELION's choice: rot = 0
    np.testing.assert_allclose(back[:, 1], tilt, atol=1e-9)
    for ang, b in zip(angles, back):
        np.testing.assert_allclose(relion_matrix(*b), relion_matrix(*ang), atol=1e-12)
    assert rotations.distance(q, relion_to_quaternions(back)).max() < 1e-9
    # also from a quaternion a hair off the exact lock, as a matrix round trip gives
    near = rotations.matrix_to_quaternion(np.stack([relion_matrix(*a) for a in angles]))
    assert rotations.distance(near, relion_to_quaternions(quaternions_to_relion(near))).max() < 1e-9


def test_identity_and_single_quaternion():
    np.testing.assert_allclose(quaternions_to_relion([0, 0, 0, 1]), [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(relion_to_quaternions([0, 0, 0]), [0, 0, 0, 1], atol=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((3, 3)), r"shape \(N, 4\)"),
        (np.ones((4, 3)), "transpose"),
        ([[0, 0, np.nan, 1]], "NaN or infinite"),
        ([[0, 0, 0, 0]], "zero quaternion"),
        ("abc", "real numbers"),
    ],
)
def test_quaternions_to_relion_rejects_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        quaternions_to_relion(bad)


def test_relion_to_quaternions_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        relion_to_quaternions(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        relion_to_quaternions([[0, np.inf, 0]])


# ------------------------------------------------------------------ physical geometry


def test_relion_angles_give_our_projections():
    """Rotating a volume by RELION's matrix (r_volume = A^T r_image) and summing along z
    reproduces project(): this pins the convention, including the image axes."""
    n = 16
    rng = np.random.default_rng(0)
    volume = np.clip(ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 1.5), 0, None)
    r = np.indices(volume.shape) - n // 2
    volume *= np.sqrt((r**2).sum(axis=0)) < 5.5  # inside the sphere no rotation clips it
    q = rotations.uniform_so3(6, rng=3)
    ours = projection.project(volume, q, size=n, backend="nufft")

    flip = np.eye(3)[::-1]  # (x, y, z) <-> array order (z, y, x)
    centre = np.full(3, n // 2)

    def relion_projection(A):
        M = flip @ A.T @ flip
        rotated = ndimage.affine_transform(volume, M, offset=centre - M @ centre, order=3, mode="constant")
        return rotated.sum(axis=0)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    right, wrong = [], []
    for image, angles in zip(ours, quaternions_to_relion(q)):
        A = relion_matrix(*angles)
        right.append(corr(image, relion_projection(A)))
        wrong.append(corr(image, relion_projection(A.T)))
    assert min(right) > 0.99, right
    assert min(wrong) < 0.9, wrong  # the test can tell the convention from its inverse


def test_origin_sign_follows_relion_reconstruct():
    """relion_reconstruct centres an image by translating it by +origin (in pixels, x first):
    applied to our shifted image, that must give back the unshifted one."""
    n = 16
    image = np.random.default_rng(1).random((1, n, n))
    shifts = np.array([[3.0, -5.0]])  # (dy, dx)
    moved = shift_images(image, shifts, "circular")
    origin = -shifts[0, ::-1]  # what write_star writes, / pixel_size
    # RELION's shiftImageInFourierTransform(F, F, n, tx, ty): F * exp(-2 pi i (kx tx + ky ty) / n)
    ky, kx = np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij")
    phase = np.exp(-2j * np.pi * (kx * origin[0] + ky * origin[1]) / n)
    centred = np.fft.ifft2(np.fft.fft2(moved[0]) * phase).real
    np.testing.assert_allclose(centred, image[0], atol=1e-12)


# ------------------------------------------------------------------ STAR files


def test_write_read_round_trip(tmp_path, quats):
    shifts = np.random.default_rng(2).uniform(-6, 6, size=(len(quats), 2))
    path = write_star(tmp_path / "particles.star", quats, pixel_size=1.5, image_size=64, shifts=shifts)
    assert path == tmp_path / "particles.star"
    got = read_star(path)
    assert rotations.distance(quats, got["quaternions"]).max() < 1e-6
    np.testing.assert_allclose(got["shifts"], shifts, atol=1e-6)
    np.testing.assert_allclose(got["origins_angstrom"], -shifts[:, ::-1] * 1.5, atol=1e-6)
    np.testing.assert_allclose(got["angles"], quaternions_to_relion(quats), atol=1e-6)
    assert got["image_names"] is None
    assert got["optics"] == {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnAmplitudeContrast": 0.1,
        "rlnSphericalAberration": 2.7,
        "rlnVoltage": 300.0,
        "rlnImagePixelSize": 1.5,
        "rlnImageSize": 64,
        "rlnImageDimensionality": 2,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["particles.star"]  # no temporary left


def test_written_file_has_relion_layout(tmp_path, quats):
    path = write_star(tmp_path / "p.star", quats[:3], pixel_size=2.0, image_size=32)
    text = path.read_text()
    assert text.count("# version 30001") == 2
    assert "data_optics" in text and "data_particles" in text
    assert "_rlnAngleRot #1" in text and "_rlnOpticsGroup #6" in text
    doc = cif.read(str(path))
    assert [b.name for b in doc] == ["optics", "particles"]
    optics = doc.find_block("optics").find(
        "_rln",
        [
            "OpticsGroup",
            "OpticsGroupName",
            "AmplitudeContrast",
            "SphericalAberration",
            "Voltage",
            "ImagePixelSize",
            "ImageSize",
            "ImageDimensionality",
        ],
    )
    assert len(optics) == 1 and optics[0][1] == "opticsGroup1" and optics[0][7] == "2"
    particles = doc.find_block("particles").find(
        "_rln", ["AngleRot", "AngleTilt", "AnglePsi", "OriginXAngst", "OriginYAngst", "OpticsGroup"]
    )
    assert len(particles) == 3
    assert all(len(v.split(".")[1]) >= 6 for v in particles.column(0))
    np.testing.assert_allclose(cif.as_number(particles[0][3]), 0.0)


def test_stack_and_star_pair(tmp_path):
    q = rotations.uniform_so3(5, rng=4)
    images = np.random.default_rng(5).standard_normal((5, 24, 24))
    star = write_star(tmp_path / "out" / "particles.star", q, pixel_size=1.25, image_size=24, image_stack=images)
    stack = tmp_path / "out" / "particles.mrcs"
    got = read_star(star)
    assert got["image_names"] == [f"{i:06d}@particles.mrcs" for i in range(1, 6)]
    with mrcfile.open(stack) as mrc:
        assert mrc.is_image_stack()
        assert mrc.data.shape == (5, 24, 24)
        assert mrc.voxel_size.x == pytest.approx(1.25)
        for name, image in zip(got["image_names"], images):
            index, file = name.split("@")
            assert (star.parent / file).resolve() == stack.resolve()
            np.testing.assert_allclose(mrc.data[int(index) - 1], image, rtol=1e-6)


def test_star_pointing_at_an_existing_stack(tmp_path):
    q = rotations.uniform_so3(3, rng=4)
    stack = write_particle_stack(tmp_path / "stacks" / "imgs.mrcs", np.zeros((3, 8, 8)), 2.0)
    star = write_star(tmp_path / "star" / "p.star", q, pixel_size=2.0, image_size=8, image_stack=stack)
    names = read_star(star)["image_names"]
    assert names[2] == "000003@../stacks/imgs.mrcs"
    assert (star.parent / names[2].split("@")[1]).resolve() == stack.resolve()
    with pytest.raises(ValueError, match="holds 3 images but there are 2"):
        write_star(tmp_path / "x.star", q[:2], pixel_size=2.0, image_size=8, image_stack=stack)
    with pytest.raises(ValueError, match="image_size is 16"):
        write_star(tmp_path / "x.star", q, pixel_size=2.0, image_size=16, image_stack=stack)
    with pytest.raises(ValueError, match="voxel size"):
        write_star(tmp_path / "x.star", q, pixel_size=1.0, image_size=8, image_stack=stack)
    with pytest.raises(FileNotFoundError, match="write_particle_stack"):
        write_star(tmp_path / "x.star", q, pixel_size=2.0, image_size=8, image_stack=tmp_path / "none.mrcs")


def test_reads_a_real_relion31_file(data_mirror):
    got = read_star(data_mirror / "relion31.star")
    assert len(got["quaternions"]) == len(got["angles"]) == 5
    np.testing.assert_allclose(got["angles"][0], [-102.30296, 82.318041, 124.706463])
    np.testing.assert_allclose(got["origins_angstrom"][0], [0.019324, -0.64686])
    np.testing.assert_allclose(got["shifts"][0], [0.64686 / 2.806, -0.019324 / 2.806])
    assert got["image_names"][0] == "000001@relion31.mrcs"
    assert got["optics"]["rlnImagePixelSize"] == 2.806 and got["optics"]["rlnImageSize"] == 256
    R = rotations.quaternion_to_matrix(got["quaternions"][0])
    np.testing.assert_allclose(R, relion_matrix(-102.30296, 82.318041, 124.706463), atol=1e-12)


def test_read_errors(tmp_path, quats):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_star(tmp_path / "missing.star")
    good = write_star(tmp_path / "good.star", quats[:2], pixel_size=1.0, image_size=8).read_text()

    no_angles = tmp_path / "no_angles.star"
    no_angles.write_text("data_particles\nloop_\n_rlnImageName #1\n000001@a.mrcs\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['rlnAngleRot'"):
        read_star(no_angles)

    nan = tmp_path / "nan.star"
    lines = good.rstrip("\n").splitlines()
    last = lines[-1].split()
    last[1] = "nan"
    nan.write_text("\n".join(lines[:-1] + [" ".join(last)]) + "\n")
    with pytest.raises(ValueError, match=r"non-numeric or infinite rlnAngleTilt \(angles\); the first is row 2"):
        read_star(nan)

    no_block = tmp_path / "old.star"
    no_block.write_text("data_optics\nloop_\n_rlnOpticsGroup #1\n1\n")
    with pytest.raises(ValueError, match="no data_particles table"):
        read_star(no_block)

    garbage = tmp_path / "garbage.star"
    garbage.write_text("data_particles\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n1.0\n")
    with pytest.raises(ValueError, match="not a readable STAR file"):
        read_star(garbage)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quaternions": np.ones((3, 3))}, r"shape \(N, 4\)"),
        ({"quaternions": np.ones((0, 4))}, "N >= 1"),
        ({"quaternions": [[0, 0, np.nan, 1]] * 3}, "NaN or infinite"),
        ({"pixel_size": 0}, "pixel_size must be a positive"),
        ({"pixel_size": -1.5}, "pixel_size must be a positive"),
        ({"pixel_size": np.nan}, "pixel_size must be a positive"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"image_size": 8.5}, "image_size must be a positive integer"),
        ({"shifts": np.zeros((2, 2))}, r"shifts must have shape \(3, 2\)"),
        ({"shifts": np.zeros((3, 3))}, r"shape \(N, 2\)"),
        ({"shifts": [[0, np.inf]] * 3}, "NaN or infinite"),
        ({"image_stack": np.zeros((2, 8, 8))}, "holds 2 images but there are 3"),
        ({"image_stack": np.zeros((3, 16, 16))}, "image_size is 8"),
        ({"image_stack": np.zeros((3, 8, 6))}, "square"),
        ({"image_stack": np.full((3, 8, 8), np.nan)}, "NaN or infinite"),
        ({"voltage": 0}, "voltage"),
        ({"amplitude_contrast": 1.5}, r"\[0, 1\]"),
        ({"optics_group_name": "my group"}, "without spaces"),
    ],
)
def test_write_star_rejects_bad_input(tmp_path, kwargs, match):
    args = {"quaternions": rotations.uniform_so3(3, rng=0), "pixel_size": 1.0, "image_size": 8} | kwargs
    path = tmp_path / "p.star"
    path.write_text("old")
    with pytest.raises((ValueError, TypeError), match=match):
        write_star(path, args.pop("quaternions"), **args)
    assert path.read_text() == "old"  # nothing half-written, nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.star"]


def test_write_star_needs_star_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"end in \.star"):
        write_star(tmp_path / "p.txt", [[0, 0, 0, 1]], pixel_size=1.0, image_size=8)


def test_write_particle_stack_checks(tmp_path):
    with pytest.raises(ValueError, match=r"\.mrcs"):
        write_particle_stack(tmp_path / "a.mrc", np.zeros((2, 8, 8)), 1.0)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        write_particle_stack(tmp_path / "a.mrcs", np.zeros((8, 8)), 1.0)
    with pytest.raises(ValueError, match="pixel_size"):
        write_particle_stack(tmp_path / "a.mrcs", np.zeros((2, 8, 8)), 0.0)
    with pytest.raises(ValueError, match="empty"):
        write_particle_stack(tmp_path / "a.mrcs", np.zeros((0, 8, 8)), 1.0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ RELION itself reads what we write

RELION_RECONSTRUCT = shutil.which("relion_reconstruct")
needs_relion = pytest.mark.skipif(
    RELION_RECONSTRUCT is None,
    reason="RELION is not installed (apt-get install relion; .ci/run installs it where it can)",
)


def _relion_map(star, out, pixel):
    subprocess.run(
        [RELION_RECONSTRUCT, "--i", star.name, "--o", out.name, "--ctf", "--angpix", str(pixel)],
        cwd=star.parent,
        check=True,
        capture_output=True,
    )
    return mrcfile.read(out).astype(np.float64)


@needs_relion
def test_relion_reconstruct_reads_our_angles_origins_and_ctf(tmp_path, data_mirror):
    """A stack with CTF and offsets, its truth written back by write_particles: relion_reconstruct
    --ctf must rebuild the map, and the same file with transposed rotations must not."""
    if not (data_mirror / "aspire-70s-ctf" / "map48.mrc").is_file():
        pytest.skip("no aspire-70s-ctf/map48.mrc in the data mirror")
    volume, pixel = small_map(data_mirror, 32)
    truth = make_stack(tmp_path, volume, pixel, n=400, snr=20.0, shift_sigma=2.0)
    table = read_particle_table(truth["star"])
    good = write_particles(tmp_path / "good.star", table, quaternions=truth["quaternions"], shifts=truth["shifts"])
    wrong = write_particles(
        tmp_path / "wrong.star", table, quaternions=rotations.conjugate(truth["quaternions"]), shifts=truth["shifts"]
    )
    unshifted = write_particles(tmp_path / "unshifted.star", table, quaternions=truth["quaternions"])
    scores = {}
    for name, star in (("good", good), ("wrong", wrong), ("unshifted", unshifted)):
        rec = _relion_map(star, tmp_path / f"{name}.mrc", pixel)
        curve = fsc.fsc(rec, volume, pixel)
        half = curve.frequency <= 0.5 * curve.frequency.max()
        scores[name] = float(curve.correlation[half].min())
    # Measured: good 0.999, wrong (Rᵀ) 0.32, unshifted 0.03 (min FSC up to half Nyquist).
    assert scores["good"] > 0.9, scores
    assert scores["wrong"] < 0.5 and scores["unshifted"] < scores["good"] - 0.05, scores
