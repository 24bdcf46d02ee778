"""The CTF in RELION's convention, CTF correction, and reconstruction with the CTF in the normal
equations; RELION itself (relion_project --ctf, relion_reconstruct --ctf) judges where installed."""

import shutil
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from cryo_orient.data.relion import quaternions_to_relion
from cryo_orient.geometry import rotations
from cryo_orient.tomography import backends, fsc
from cryo_orient.tomography.ctf import (
    COLUMNS,
    CTFParams,
    apply_ctf,
    ctf_values,
    electron_wavelength,
    phase_flip,
    wiener_filter,
)
from cryo_orient.tomography.projection import backproject, project
from cryo_orient.tomography.reconstruct import normal_operator, reconstruct, remove_detector_nyquist
from cryo_orient.validation import InputError

RELION = shutil.which("relion_project") and shutil.which("relion_reconstruct")
needs_relion = pytest.mark.skipif(
    not RELION, reason="RELION is not installed (relion_project, relion_reconstruct); apt-get install relion"
)


def params_for(n, rng, *, astigmatism=(500.0, 3000.0), angles=(0.0, 180.0), **kwargs):
    """Random CTFs of n images: defocus 1–2.5 µm, 300 kV, Cs 2.7 mm, Q0 0.1."""
    rng = np.random.default_rng(rng)
    du = rng.uniform(10000, 25000, n)
    values = {
        "defocus_u": du,
        "defocus_v": du - rng.uniform(*astigmatism, n),
        "defocus_angle": rng.uniform(*angles, n),
        "voltage": 300.0,
        "spherical_aberration": 2.7,
        "amplitude_contrast": 0.1,
    }
    values.update(kwargs)
    return CTFParams(**values)


def blob(n, seed=0, sigma=1.0):
    """An asymmetric density with detail to high frequency, zero outside a sphere of radius n/2 - 4."""
    rng = np.random.default_rng(seed)
    r = np.sqrt(sum(g.astype(float) ** 2 for g in np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")))
    return ndimage.gaussian_filter(rng.random((n, n, n)), sigma) * (r < n // 2 - 4)


def relion_ctf(X, Y, U, V, angle, kv, cs, q0, phase=0.0, bfac=0.0, scale=1.0):
    """RELION 3.1's CTF::getCTF at one frequency, written as its code is (the bilinear form A)."""
    lam = 12.2643247 / np.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    k1, k2 = np.pi * lam, np.pi / 2 * cs * 1e7 * lam**3
    k3, k4, k5 = np.arctan(q0 / np.sqrt(1 - q0 * q0)), -bfac / 4, np.radians(phase)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    Q = np.array([[c, s], [-s, c]])
    A = Q.T @ np.diag([-U, -V]) @ Q
    u2 = X * X + Y * Y
    gamma = k1 * (A[0, 0] * X * X + 2 * A[0, 1] * X * Y + A[1, 1] * Y * Y) + k2 * u2 * u2 - k5 - k3
    return -np.sin(gamma) * np.exp(k4 * u2) * scale


# ------------------------------------------------------------------ the CTF formula


def test_matches_relions_bilinear_form_everywhere():
    size, apix = 24, 2.5
    p = params_for(3, 0, phase_shift=[0.0, 30.0, 90.0], bfactor=[0.0, 50.0, 200.0], scale=[1.0, 0.7, 1.3])
    got = ctf_values(p, size, apix)
    assert got.shape == (3, size, size // 2 + 1) and got.dtype == np.float64
    Y = np.fft.fftfreq(size, d=apix)
    X = np.fft.rfftfreq(size, d=apix)
    for n in range(3):
        args = [getattr(p, f)[n] for f in ("defocus_u", "defocus_v", "defocus_angle", "voltage")]
        args += [p.spherical_aberration[n], p.amplitude_contrast[n], p.phase_shift[n], p.bfactor[n], p.scale[n]]
        expected = np.array([[relion_ctf(x, y, *args) for x in X] for y in Y])
        np.testing.assert_allclose(got[n], expected, atol=1e-12)


def test_value_at_zero_frequency():
    p = params_for(4, 1, amplitude_contrast=[0.0, 0.07, 0.1, 0.3], scale=[1.0, 2.0, 0.5, 1.0])
    np.testing.assert_allclose(ctf_values(p, 16, 3.0)[:, 0, 0], p.amplitude_contrast * p.scale, atol=1e-15)
    shifted = params_for(1, 1, phase_shift=90.0)
    # γ(0) = −φ − K3: with a 90° phase plate the CTF at 0 is cos(K3) = √(1 − Q0²).
    assert ctf_values(shifted, 16, 3.0)[0, 0, 0] == pytest.approx(np.sqrt(1 - 0.1**2))


def test_positive_at_low_frequency_for_underfocus():
    c = ctf_values(params_for(5, 2), 64, 2.0)
    low = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.rfftfreq(64), indexing="ij")) <= 1.5 / 64
    assert np.all(c[:, low] > 0)
    assert np.all(ctf_values(params_for(5, 2, defocus_u=-15000.0, defocus_v=-15000.0), 64, 2.0)[:, low][:, 1:] < 0.1)


def test_zeros_where_hand_computed():
    """No astigmatism: the first zero is where γ = −π, i.e. πλΔf u² − (π/2) Cs λ³ u⁴ = π − K3."""
    size, apix, kv, cs, q0 = 64, 2.0, 300.0, 2.7, 0.1
    k = 9  # put the first zero exactly on column 9 of the X axis
    u = k / (size * apix)
    lam = electron_wavelength(kv)
    k3 = np.arctan(q0 / np.sqrt(1 - q0**2))
    defocus = (np.pi - k3 + np.pi / 2 * cs * 1e7 * lam**3 * u**4) / (np.pi * lam * u**2)
    c = ctf_values(CTFParams(defocus, defocus, 0.0, kv, cs, q0), size, apix)[0]
    assert abs(c[0, k]) < 1e-12 and abs(c[k, 0]) < 1e-12  # on both axes (isotropic)
    assert np.all(c[0, :k] > 0) and c[0, k + 1] < 0  # a single sign change, there
    assert lam == pytest.approx(0.019687, abs=1e-6)  # 300 kV: 1.97 pm


def test_astigmatism_angle_turns_the_pattern():
    """defocus_u acts along the direction at defocus_angle from the x axis (towards y), defocus_v across it."""
    size, apix, U, V = 48, 2.0, 20000.0, 12000.0
    iso_u = ctf_values(CTFParams(U, U, 0.0, 300.0, 2.7, 0.1), size, apix)[0]
    iso_v = ctf_values(CTFParams(V, V, 0.0, 300.0, 2.7, 0.1), size, apix)[0]
    ks = np.arange(1, size // 2)
    x_axis, y_axis = (0, ks), (ks, 0)  # [row (Y), column (X)]
    for angle, along_x in ((0.0, iso_u), (90.0, iso_v), (180.0, iso_u), (-90.0, iso_v)):
        c = ctf_values(CTFParams(U, V, angle, 300.0, 2.7, 0.1), size, apix)[0]
        other = iso_v if along_x is iso_u else iso_u
        np.testing.assert_allclose(c[x_axis], along_x[x_axis], atol=1e-12)
        np.testing.assert_allclose(c[y_axis], other[y_axis], atol=1e-12)
    # At 45° U lies on the diagonal Y = X (rows with positive Y), V on Y = −X (rows from the end).
    c = ctf_values(CTFParams(U, V, 45.0, 300.0, 2.7, 0.1), size, apix)[0]
    diag, anti = (ks, ks), (size - ks, ks)
    np.testing.assert_allclose(c[diag], iso_u[diag], atol=1e-12)
    np.testing.assert_allclose(c[anti], iso_v[anti], atol=1e-12)
    assert not np.allclose(c[diag], c[anti])


def test_bfactor_envelope_and_index():
    p = params_for(3, 3)
    damped = CTFParams(**{**{f: getattr(p, f) for f in COLUMNS.values()}, "bfactor": np.array([0.0, 100.0, 400.0])})
    Y, X = np.fft.fftfreq(32, d=3.0)[:, None], np.fft.rfftfreq(32, d=3.0)[None, :]
    ratio = np.exp(-damped.bfactor[:, None, None] * (X**2 + Y**2) / 4)
    np.testing.assert_allclose(ctf_values(damped, 32, 3.0), ctf_values(p, 32, 3.0) * ratio, atol=1e-14)
    np.testing.assert_array_equal(ctf_values(p, 32, 3.0, index=[2, 0]), ctf_values(p, 32, 3.0)[[2, 0]])
    np.testing.assert_array_equal(ctf_values(p, 32, 3.0, index=1), ctf_values(p.subset(1), 32, 3.0))


def test_image_axes_x_is_the_column():
    """A cosine along the image's columns (x) is scaled by the CTF on the X axis: with defocus_angle
    0 that is the defocus_u CTF; a cosine along the rows (y) gets the defocus_v one."""
    size, apix, k = 32, 3.0, 5
    p = CTFParams(20000.0, 12000.0, 0.0, 300.0, 2.7, 0.1)
    c = ctf_values(p, size, apix)[0]
    r = np.arange(size) - size // 2
    along_x = np.broadcast_to(np.cos(2 * np.pi * k * r / size)[None, :], (size, size))
    np.testing.assert_allclose(apply_ctf(along_x[None], p, apix)[0], c[0, k] * along_x, atol=1e-12)
    np.testing.assert_allclose(apply_ctf(along_x.T[None], p, apix)[0], c[k, 0] * along_x.T, atol=1e-12)
    assert abs(c[0, k] - c[k, 0]) > 0.1  # the two differ, so the test can tell x from y


# ------------------------------------------------------------------ CTFParams


def test_params_broadcast_copy_and_freeze():
    du = np.array([15000.0, 16000.0])
    p = CTFParams(du, 14000.0, 10.0, 300, 2.7, 0.1)
    assert len(p) == 2 and p.defocus_v.tolist() == [14000.0, 14000.0] and p.scale.tolist() == [1.0, 1.0]
    du[0] = 0.0
    assert p.defocus_u[0] == 15000.0  # a copy
    with pytest.raises(ValueError):
        p.defocus_u[0] = 1.0  # read-only
    assert len(CTFParams(1e4, 1e4, 0, 300, 2.7, 0.1)) == 1
    sub = p.subset(np.array([False, True]))
    assert len(sub) == 1 and sub.defocus_u[0] == 16000.0
    assert p.of_images([1]).defocus_u.tolist() == [16000.0]  # one set per image: selected
    one = CTFParams(1e4, 1e4, 0, 300, 2.7, 0.1)
    assert one.of_images([5, 7]) is one  # one set for all images: itself


def test_columns_round_trip():
    p = params_for(5, 4, phase_shift=np.arange(5.0), bfactor=20.0, scale=0.9)
    cols = p.to_columns()
    assert set(cols) == set(COLUMNS) and all(len(v) == 5 for v in cols.values())
    back = CTFParams.from_columns(cols, 5)
    for field in COLUMNS.values():
        np.testing.assert_array_equal(getattr(back, field), getattr(p, field))
    # STAR spellings with a leading underscore, scalars from the optics table, strings from a text reader.
    table = pd.DataFrame({"_rlnDefocusU": ["12000.5", "13000"], "rlnOtherColumn": ["a", "b"]})
    minimal = CTFParams.from_columns(
        {**table, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}, 2
    )
    assert minimal.defocus_u.tolist() == [12000.5, 13000.0] == minimal.defocus_v.tolist()
    assert minimal.defocus_angle.tolist() == [0, 0] and minimal.phase_shift.tolist() == [0, 0]
    assert minimal.bfactor.tolist() == [0, 0] and minimal.scale.tolist() == [1, 1]


REQUIRED = {
    "rlnDefocusU": [1e4, 2e4, 3e4],
    "rlnVoltage": 300,
    "rlnSphericalAberration": 2.7,
    "rlnAmplitudeContrast": 0.1,
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rlnDefocusU": None}, "rlnDefocusU"),
        ({"rlnVoltage": None}, "rlnVoltage"),
        ({"rlnSphericalAberration": None}, "rlnSphericalAberration"),
        ({"rlnAmplitudeContrast": None}, "rlnAmplitudeContrast"),
        ({"rlnDefocusU": [1e4, 2e4, np.nan]}, "rlnDefocusU row 3"),
        ({"rlnDefocusV": [1e4, "abc", 3e4]}, "rlnDefocusV row 2 is not a number"),
        ({"rlnDefocusAngle": [1.0, None, 3.0]}, "rlnDefocusAngle row 2"),
        ({"rlnVoltage": "inf"}, "rlnVoltage row 1"),
        ({"rlnDefocusU": [1e4, 2e4]}, "rlnDefocusU has .* values for 3 particles"),
        ({"rlnAmplitudeContrast": 1.5}, "amplitude_contrast must be a fraction"),
        ({"rlnVoltage": 0.0}, "voltage must be > 0"),
    ],
)
def test_from_columns_bad_input(change, match):
    columns = {k: v for k, v in {**REQUIRED, **change}.items() if v is not None}
    with pytest.raises(InputError, match=match):
        CTFParams.from_columns(columns, 3)


def test_params_bad_input():
    with pytest.raises(InputError, match="one value per image"):
        CTFParams([1e4, 2e4], [1e4, 2e4, 3e4], 0, 300, 2.7, 0.1)
    with pytest.raises(InputError, match="NaN or infinite value at image 1"):
        CTFParams([1e4, np.inf], 1e4, 0, 300, 2.7, 0.1)
    with pytest.raises(InputError, match="must be numbers"):
        CTFParams("x", 1e4, 0, 300, 2.7, 0.1)
    with pytest.raises(InputError, match="subset index"):
        params_for(2, 0).subset(5)
    with pytest.raises(InputError, match="must be a CTFParams"):
        ctf_values({"rlnDefocusU": 1e4}, 16, 1.0)
    with pytest.raises(InputError, match="pixel_size must be a positive"):
        ctf_values(params_for(1, 0), 16, 0.0)
    with pytest.raises(InputError, match="size must be a positive integer"):
        ctf_values(params_for(1, 0), 16.5, 1.0)


# ------------------------------------------------------------------ CTF correction


def test_phase_flip_properties():
    rng = np.random.default_rng(5)
    images = rng.standard_normal((4, 33, 33))  # odd: no Nyquist row or column
    keep = images.copy()
    p = params_for(4, 5)
    flipped = phase_flip(images, p, 3.0)
    np.testing.assert_array_equal(images, keep)  # inputs untouched
    np.testing.assert_allclose(phase_flip(flipped, p, 3.0), images, atol=1e-12)  # twice: the image
    spec = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    spec_flipped = np.fft.rfft2(np.fft.ifftshift(flipped, axes=(-2, -1)))
    np.testing.assert_allclose(np.abs(spec_flipped), np.abs(spec), atol=1e-10)  # amplitudes unchanged
    # Flipping the CTF-modulated image leaves |C|: a non-negative filter.
    c = ctf_values(p, 33, 3.0)
    corrected = np.fft.rfft2(np.fft.ifftshift(phase_flip(apply_ctf(images, p, 3.0), p, 3.0), axes=(-2, -1)))
    np.testing.assert_allclose(corrected, np.abs(c) * spec, atol=1e-10)


def test_wiener_filter_limits():
    rng = np.random.default_rng(6)
    images = ndimage.gaussian_filter(rng.standard_normal((3, 33, 33)), (0, 1, 1))
    p = params_for(3, 6)
    modulated = apply_ctf(images, p, 3.0)
    c = ctf_values(p, 33, 3.0)
    # snr -> infinity: division by the CTF wherever it is not small.
    restored = np.fft.rfft2(np.fft.ifftshift(wiener_filter(modulated, p, 3.0, 1e8), axes=(-2, -1)))
    spec = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    safe = np.abs(c) > 0.1
    np.testing.assert_allclose(restored[safe], spec[safe], rtol=1e-5, atol=1e-9)
    # snr -> 0: snr · C (CTF multiplication).
    small = 1e-8 * modulated
    np.testing.assert_allclose(wiener_filter(images, p, 3.0, 1e-8), small, atol=1e-6 * np.abs(small).max())
    # One snr per image equals filtering each image alone.
    per_image = wiener_filter(images, p, 3.0, [0.1, 1.0, 10.0])
    for n, snr in enumerate((0.1, 1.0, 10.0)):
        np.testing.assert_allclose(per_image[n], wiener_filter(images[n : n + 1], p.subset([n]), 3.0, snr)[0])


def test_filters_keep_dtype_and_broadcast_one_ctf():
    images = np.random.default_rng(7).standard_normal((3, 16, 16)).astype(np.float32)
    one = params_for(1, 7)
    out = apply_ctf(images, one, 2.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[2], apply_ctf(images[2:], one, 2.0)[0], rtol=1e-6)
    assert phase_flip(images.astype(np.int64), one, 2.0).dtype == np.float64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda im, p: apply_ctf(im[0], p, 2.0), r"wrap a single image as image\[None\]"),
        (lambda im, p: apply_ctf(im[:, :, :8], p, 2.0), "square images"),
        (lambda im, p: apply_ctf(im[:2], p, 2.0), "got 2 images but CTF parameters for 3"),
        (lambda im, p: apply_ctf(np.where(im > 1, np.nan, im), p, 2.0), "NaN or infinite"),
        (lambda im, p: phase_flip(im, p, -1.0), "pixel_size must be a positive"),
        (lambda im, p: phase_flip(im, p, "big"), "pixel_size must be a number"),
        (lambda im, p: wiener_filter(im, p, 2.0, 0.0), "snr must be positive"),
        (lambda im, p: wiener_filter(im, p, 2.0, [1.0, 2.0]), "one value per image"),
        (lambda im, p: wiener_filter(im, p, 2.0, "high"), "snr must be a positive number"),
    ],
)
def test_filters_bad_input(call, match):
    images = np.random.default_rng(8).standard_normal((3, 16, 16))
    with pytest.raises(InputError, match=match):
        call(images, params_for(3, 8))


# ------------------------------------------------------------------ reconstruction with the CTF


@pytest.mark.parametrize("size", [24, 25])
def test_normal_operator_with_ctf_is_exact(size):
    shape = (18, 17, 19)
    rng = np.random.default_rng(9)
    v = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    q = rotations.uniform_so3(30, rng=rng)
    p = params_for(30, 9)
    forward = apply_ctf(project(v, q, size, "nufft"), p, 3.0)
    expected = backproject(remove_detector_nyquist(apply_ctf(forward, p, 3.0)), q, shape, "nufft")
    got = normal_operator(q, size, shape, p, 3.0)(v)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    # The right-hand side is Aᵀb of the same operator: <A v, b> = <v, Aᵀ b>.
    b = rng.standard_normal((30, size, size))
    rhs = backends.BACKENDS["nufft"].normal_rhs(b, rotations.quaternion_to_matrix(q), shape, ctf=p, pixel_size=3.0)
    lhs = np.vdot(remove_detector_nyquist(forward), b)
    assert np.vdot(v, rhs) == pytest.approx(lhs, rel=1e-6)


def test_reconstruct_with_ctf_recovers_the_map():
    n, apix = 32, 3.0
    vol = blob(n, 1)
    q = rotations.uniform_so3(200, rng=10)
    p = params_for(200, 10)
    images = apply_ctf(project(vol, q, n, "nufft"), p, apix)
    with_ctf = reconstruct(images, q, vol.shape, "auto", iterations=30, ctf=p, pixel_size=apix)
    without = reconstruct(images, q, vol.shape, "nufft", iterations=30)
    assert with_ctf.backend == "nufft"
    mask = fsc.soft_sphere_mask(vol.shape)
    good = fsc.fsc(with_ctf.volume * mask, vol * mask, voxel_size=apix).correlation
    bad = fsc.fsc(without.volume * mask, vol * mask, voxel_size=apix).correlation
    assert good[: n // 2].min() > 0.95, good  # every shell to Nyquist
    assert bad[: n // 2].min() < 0.0, bad  # the CTF's sign changes, uncorrected, anticorrelate shells
    np.testing.assert_array_equal(images, apply_ctf(project(vol, q, n, "nufft"), p, apix))  # inputs untouched


def test_reconstruct_ctf_bad_input(monkeypatch):
    q = rotations.uniform_so3(4, rng=11)
    images = np.zeros((4, 16, 16))
    images[:, 8, 8] = 1.0
    with pytest.raises(InputError, match="needs the pixel size"):
        reconstruct(images, q, (16, 16, 16), "nufft", ctf=params_for(4, 11))
    with pytest.raises(InputError, match="got 4 projections but CTF parameters for 3"):
        reconstruct(images, q, (16, 16, 16), "nufft", ctf=params_for(3, 11), pixel_size=2.0)
    with pytest.raises(InputError, match="must be a CTFParams"):
        reconstruct(images, q, (16, 16, 16), "nufft", ctf={"rlnDefocusU": 1e4}, pixel_size=2.0)
    with pytest.raises(InputError, match="pixel_size must be a positive"):
        normal_operator(q, 16, (16, 16, 16), params_for(4, 11), -2.0)
    # ASTRA cannot model the CTF: "auto" avoids it, and asking for it by name is an error.
    astra = backends.BACKENDS["astra"]
    monkeypatch.setattr(type(astra), "available", lambda self: True)
    assert backends.resolve("auto", needs={"ctf"}).name == "nufft"
    with pytest.raises(InputError, match="astra backend supports no ctf; use backend='nufft'"):
        reconstruct(images, q, (16, 16, 16), "astra", ctf=params_for(4, 11), pixel_size=2.0)


# ------------------------------------------------------------------ against RELION


def write_relion_star(path, quaternions, params, pixel_size, size, stack="dummy.mrcs"):
    """A RELION 3.1 particles STAR (optics + particles) with these angles and CTFs."""
    cols = params.to_columns()
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [float(params.voltage[0])],
            "rlnSphericalAberration": [float(params.spherical_aberration[0])],
            "rlnAmplitudeContrast": [float(params.amplitude_contrast[0])],
            "rlnImagePixelSize": [float(pixel_size)],
            "rlnImageSize": [int(size)],
            "rlnImageDimensionality": [2],
        }
    )
    angles = quaternions_to_relion(quaternions)
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(len(angles))],
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            **{c: cols[c] for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift")},
            "rlnOpticsGroup": 1,
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)
    text = path.read_text()
    assert "data_optics" in text and "data_particles" in text and "_rlnDefocusAngle" in text
    return path


def run_relion(args, cwd):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


def write_map(path, volume, pixel_size):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(volume.astype(np.float32))
        m.voxel_size = pixel_size


def band_correlation(a, b, lo, hi):
    """Per-image correlation of the Fourier coefficients with lo <= |k| < hi (cycles per pixel)."""
    size = a.shape[-1]
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    sel = (f >= lo) & (f < hi)
    fa = np.fft.rfft2(np.fft.ifftshift(a, axes=(-2, -1)))[:, sel]
    fb = np.fft.rfft2(np.fft.ifftshift(b, axes=(-2, -1)))[:, sel]
    return np.real(np.sum(fa * fb.conj(), axis=1)) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)


@needs_relion
def test_apply_ctf_matches_relion_project(tmp_path):
    """Our C·P equals relion_project --ctf image by image (measured: correlation ≥ 0.995 over the
    whole image, ≥ 0.998 on 0.15–0.45 cycles/px, where the CTF oscillates; RELION's trilinear
    projector is the difference). The astigmatism angle's sign, U and V swapped (angle + 90°), the
    CTF's sign and the voltage are each told apart clearly."""
    n, apix, count = 32, 3.0, 24
    vol = blob(n, 0, sigma=0.8)
    rng = np.random.default_rng(12)
    q = rotations.uniform_so3(count, rng=rng)
    # Strong astigmatism at angles away from 0° and 90°, where a wrong sign would not show.
    angles = rng.uniform(20, 70, count) + 90 * rng.integers(0, 2, count)
    p = params_for(count, rng, astigmatism=(3000.0, 5000.0), defocus_angle=angles)
    write_map(tmp_path / "map.mrc", vol, apix)
    write_relion_star(tmp_path / "in.star", q, p, apix, n)
    run_relion(["relion_project", "--i", "map.mrc", "--o", "proj", "--ang", "in.star", "--ctf"], tmp_path)
    theirs = mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64)
    assert theirs.shape == (count, n, n)
    projections = project(vol, q, n, "nufft")

    def scores(params):
        ours = apply_ctf(projections, params, apix)
        full = band_correlation(ours, theirs, 0.0, 1.0)
        return full, band_correlation(ours, theirs, 0.15, 0.45)

    full, high = scores(p)
    assert full.min() > 0.99 and high.min() > 0.995, (full.min(), high.min())
    fields = {f: getattr(p, f) for f in COLUMNS.values()}
    wrong = {
        "angle sign": CTFParams(**{**fields, "defocus_angle": -p.defocus_angle}),
        "U and V swapped": CTFParams(**{**fields, "defocus_angle": p.defocus_angle + 90}),
        "200 kV": CTFParams(**{**fields, "voltage": 200.0}),
    }
    for name, params in wrong.items():
        _, bad = scores(params)
        assert np.median(bad) < 0.7 and bad.max() < 0.9, (name, bad)
    flipped_full, _ = scores(CTFParams(**{**fields, "scale": -1.0}))
    assert flipped_full.max() < -0.99


@needs_relion
def test_reconstruct_with_ctf_matches_relion_reconstruct(tmp_path):
    """relion_reconstruct --ctf and reconstruct(ctf=...) on the same CTF-modulated images and angles
    give the same map (measured: FSC ≥ 0.99 to half Nyquist, 0.90 in the Nyquist shell, where RELION's
    map is the one that departs from the truth: 0.90 there, ours 1.00),
    and without the CTF our map anticorrelates with the truth past the CTF's first zero."""
    n, apix, count = 32, 3.0, 300
    vol = blob(n, 2)
    q = rotations.uniform_so3(count, rng=13)
    p = params_for(count, 13)
    images = apply_ctf(project(vol, q, n, "nufft"), p, apix)
    with mrcfile.new(tmp_path / "stack.mrcs", overwrite=True) as m:
        m.set_data(images.astype(np.float32))
        m.voxel_size = apix
    write_relion_star(tmp_path / "particles.star", q, p, apix, n, stack="stack.mrcs")
    run_relion(["relion_reconstruct", "--i", "particles.star", "--o", "relion.mrc", "--ctf"], tmp_path)
    theirs = mrcfile.read(tmp_path / "relion.mrc").astype(np.float64)
    ours = reconstruct(images, q, vol.shape, iterations=30, ctf=p, pixel_size=apix).volume
    plain = reconstruct(images, q, vol.shape, iterations=30).volume
    mask = fsc.soft_sphere_mask(vol.shape)

    def curve(a, b):
        return fsc.fsc(a * mask, b * mask, voxel_size=apix).correlation[: n // 2 + 1]

    agree = curve(ours, theirs)
    assert agree[: n // 4 + 1].min() >= 0.9, agree  # the bar: to half Nyquist
    assert agree.min() >= 0.85, agree  # and in fact to Nyquist
    assert curve(theirs, vol).min() > 0.85
    assert curve(ours, vol).min() > 0.95
    assert curve(plain, vol).min() < 0.0
