"""Particle stacks written by other programs: RELION STAR (3.0, 3.1 / 4, 5) + MRC stacks as a Dataset."""

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryo_orient.data import read_dataset, read_particles
from cryo_orient.data.relion import quaternions_to_relion, read_particle_table, write_particle_stack, write_particles
from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError

N, BOX, ANGPIX = 7, 16, 2.5


def _stacks(folder, rng):
    """Two stacks in a sub-folder: 4 + 3 images, and the images by particle."""
    images = rng.standard_normal((N, BOX, BOX)).astype(np.float32)
    write_particle_stack(folder / "stacks" / "a.mrcs", images[:4], ANGPIX)
    write_particle_stack(folder / "stacks" / "b.mrcs", images[4:], ANGPIX)
    names = [f"{i + 1:06d}@stacks/a.mrcs" for i in range(4)] + [f"{i + 1:06d}@stacks/b.mrcs" for i in range(3)]
    return images, names


def _relion31(folder, rng, *, q=None, extra=None, general=False):
    images, names = _stacks(folder, rng)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnOpticsGroupName": ["og1", "og2"],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnSphericalAberration": [2.7, 2.0],
            "rlnVoltage": [300.0, 200.0],
            "rlnImagePixelSize": [ANGPIX, ANGPIX],
            "rlnImageSize": [BOX, BOX],
            "rlnImageDimensionality": [2, 2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnOpticsGroup": [1, 1, 2, 2, 1, 2, 1],
            "rlnDefocusU": np.linspace(10000, 25000, N),
            "rlnDefocusV": np.linspace(9000, 24000, N),
            "rlnDefocusAngle": np.linspace(0, 90, N),
            "rlnOriginXAngst": np.arange(N) * 1.0,
            "rlnOriginYAngst": -np.arange(N) * 2.0,
            "myUnknownColumn": ["0.8168914073973077"] * N,
        }
    )
    if q is not None:
        for k, c in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            particles[c] = quaternions_to_relion(q)[:, k]
    if extra:
        for k, v in extra.items():
            particles[k] = v
    tables = {"optics": optics, "particles": particles}
    if general:  # RELION 5 writes a data_general block first in some files
        tables = {"general": {"rlnTomoSubTomosAre2DStacks": 0}, **tables}
    path = folder / "particles.star"
    starfile.write(tables, path, overwrite=True)
    return path, images


def test_relion31_stack_over_two_files(tmp_path):
    q = rotations.uniform_so3(N, rng=3)
    path, images = _relion31(tmp_path, np.random.default_rng(0), q=q)
    ds = read_dataset(path)  # the reader is chosen by the .star suffix
    assert ds.n == N and ds.image_size == BOX and ds.pixel_size == ANGPIX
    assert ds.metadata["format"] == "relion-3.1"
    np.testing.assert_allclose(ds.images("raw"), images)
    np.testing.assert_allclose(ds.images("raw", index=[6, 0, 4]), images[[6, 0, 4]])
    np.testing.assert_allclose(ds.subset([5, 1]).images("raw"), images[[5, 1]])
    mean, std = ds.standardization
    np.testing.assert_allclose(ds.images("standardized"), (images - mean) / std, rtol=1e-5, atol=1e-6)
    assert rotations.distance(ds.quaternions, q).max() < 1e-5
    # origins in Å, x first -> shifts (dy, dx) in pixels, opposite sign
    np.testing.assert_allclose(ds.shifts[:, 1], -np.arange(N) / ANGPIX)
    np.testing.assert_allclose(ds.shifts[:, 0], 2 * np.arange(N) / ANGPIX)
    with pytest.raises(InputError, match="shifted"):
        ds.images("noisy")
    # CTF: defocus per particle, voltage etc. through the optics group
    np.testing.assert_allclose(ds.ctf["rlnDefocusU"], np.linspace(10000, 25000, N))
    np.testing.assert_allclose(ds.ctf["rlnVoltage"], [300, 300, 200, 200, 300, 200, 300])
    np.testing.assert_allclose(ds.ctf["rlnAmplitudeContrast"], [0.1, 0.1, 0.07, 0.07, 0.1, 0.07, 0.1])
    assert "rlnPhaseShift" not in ds.ctf


def test_relion5_general_block_and_angpix(tmp_path):
    path, images = _relion31(tmp_path, np.random.default_rng(1), general=True)
    ds = read_particles(path, angpix=1.25)
    assert ds.quaternions is None and ds.pixel_size == 1.25
    np.testing.assert_allclose(ds.shifts[:, 1], -np.arange(N) / 1.25)
    np.testing.assert_allclose(ds.images("raw"), images)


def test_relion30_file(tmp_path):
    images, names = _stacks(tmp_path, np.random.default_rng(2))
    q = rotations.uniform_so3(N, rng=4)
    angles = quaternions_to_relion(q)
    table = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnVoltage": [300.0] * N,
            "rlnSphericalAberration": [2.7] * N,
            "rlnAmplitudeContrast": [0.1] * N,
            "rlnDefocusU": [15000.0] * N,
            "rlnDefocusV": [14000.0] * N,
            "rlnDefocusAngle": [30.0] * N,
            "rlnDetectorPixelSize": [5.0] * N,
            "rlnMagnification": [20000.0] * N,  # 5 µm / 20,000 = 2.5 Å
            "rlnOriginX": np.arange(N) * 1.0,  # pixels in RELION 3.0
            "rlnOriginY": np.zeros(N),
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
        }
    )
    path = tmp_path / "old.star"
    starfile.write(table, path, overwrite=True)
    ds = read_particles(path)
    assert ds.metadata["format"] == "relion-3.0" and ds.pixel_size == pytest.approx(ANGPIX)
    np.testing.assert_allclose(ds.shifts[:, 1], -np.arange(N))
    np.testing.assert_allclose(ds.ctf["rlnDefocusAngle"], 30.0)
    assert rotations.distance(ds.quaternions, q).max() < 1e-5
    # written back as RELION 3.1: an optics table, origins in Å, the other columns kept
    out = write_particles(tmp_path / "new.star", ds.metadata["star"], quaternions=q, image_size=BOX)
    back = read_particle_table(out)
    assert back.version == "3.1" and "rlnOriginX" not in back.particles
    np.testing.assert_allclose(back.particles["rlnOriginXAngst"], np.arange(N) * ANGPIX)
    np.testing.assert_allclose(back.pixel_size, ANGPIX)
    assert back.optics["rlnVoltage"].tolist() == [300.0]
    assert rotations.distance(back.quaternions(), q).max() < 1e-5
    np.testing.assert_allclose(read_particles(out).images("raw"), images)


def test_written_back_unchanged_but_for_the_new_columns(tmp_path):
    path, _ = _relion31(tmp_path, np.random.default_rng(3))
    table = read_particle_table(path)
    q = rotations.uniform_so3(N, rng=5)
    shifts = np.random.default_rng(6).uniform(-3, 3, (N, 2))
    out = write_particles(tmp_path / "out" / "p.star", table, quaternions=q, shifts=shifts)
    text = out.read_text()
    assert text.count("# version 30001") == 2 and "starfile" not in text
    assert "0.8168914073973077" in text  # an unknown column, as written
    back = read_particle_table(out)
    assert list(back.particles.columns[: len(table.particles.columns)]) == list(table.particles.columns)
    assert rotations.distance(back.quaternions(), q).max() < 1e-5
    np.testing.assert_allclose(back.shifts(), shifts, atol=1e-6)
    pd.testing.assert_frame_equal(back.optics, table.optics)


def test_aspire_stack_from_the_mirror(data_mirror):
    star = data_mirror / "aspire-70s-ctf" / "particles_noangles.star"
    if not star.is_file():
        pytest.skip(f"no ASPIRE stack in the mirror at {star.parent}")
    ds = read_dataset(star)
    assert (ds.n, ds.image_size, ds.pixel_size) == (2000, 48, 5.0)
    assert ds.quaternions is None and not ds.shifted
    assert sorted(np.unique(ds.ctf["rlnDefocusU"]).tolist()) == [
        10000.0,
        12500.0,
        15000.0,
        17500.0,
        20000.0,
        22500.0,
        25000.0,
    ]
    assert ds.images("raw", index=np.arange(510, 515)).shape == (5, 48, 48)  # across two stacks
    truth = read_particles(data_mirror / "aspire-70s-ctf" / "particles.star")
    assert truth.quaternions.shape == (2000, 4) and truth.shifted


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new))
    return path


@pytest.mark.parametrize(
    "break_it, match",
    [
        (lambda p: _edit(p, "_rlnImageName", "_rlnMicrographName"), "no rlnImageName column"),
        (lambda p: (p.parent / "stacks" / "b.mrcs").unlink(), r"row 5 names the stack .*b\.mrcs, which does not exist"),
        (
            lambda p: _edit(p, "000003@stacks/b.mrcs", "000009@stacks/b.mrcs"),
            "row 7 asks for image 9 of b.mrcs, which holds 3",
        ),
        (lambda p: _edit(p, "000003@stacks/b.mrcs", "stacks/b.mrcs"), "row 7 has rlnImageName 'stacks/b.mrcs'"),
        (lambda p: _truncate(p.parent / "stacks" / "b.mrcs"), "truncated"),
        (
            lambda p: write_particle_stack(p.parent / "stacks" / "b.mrcs", np.zeros((3, 8, 8)), ANGPIX),
            "different sizes",
        ),
        (lambda p: _edit(p, "\t2.500000\t16", "\t0.000000\t16"), "pixel size must be positive"),
        (lambda p: _edit(p, "_rlnImagePixelSize", "_rlnSomethingElse"), "gives no pixel size .*--angpix"),
        (lambda p: _edit(p, "10000.000000", "abc"), r"non-numeric or infinite rlnDefocusU.* row 1 \('abc'\)"),
        (lambda p: _edit(p, "_rlnVoltage", "_rlnVoltageX"), r"defocus values but no \['rlnVoltage'\]"),
        (lambda p: p.write_text("nothing here"), "not a readable STAR file|no data_particles"),
        (lambda p: p.write_text(""), "has no data_particles table .it has no tables."),
    ],
)
def test_bad_particle_stacks(tmp_path, break_it, match):
    path, _ = _relion31(tmp_path, np.random.default_rng(7))
    break_it(path)
    with pytest.raises(InputError, match=match):
        read_particles(path)


def _truncate(stack):
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) - 100])


def test_stack_is_read_lazily(tmp_path, monkeypatch):
    path, images = _relion31(tmp_path, np.random.default_rng(8))
    opened = []
    real = mrcfile.mmap

    def spy(name, *args, **kwargs):
        opened.append(str(name))
        return real(name, *args, **kwargs)

    ds = read_particles(path)
    monkeypatch.setattr(mrcfile, "mmap", spy)
    np.testing.assert_allclose(ds.images("raw", index=[1, 2]), images[[1, 2]])
    assert len(opened) == 1 and opened[0].endswith("a.mrcs")  # only the stack holding them
