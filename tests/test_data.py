"""Tests for cryo_orient.data: registry, verified fetching, MRC I/O, maps from atomic models."""

import functools
import gzip
import hashlib
import http.server
import socket
import threading
import urllib.request
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryo_orient import data
from cryo_orient.data import DataError, DataFile, registry

# Any UserWarning a test does not expect (with pytest.warns) is a failure.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    # a developer's DATA_MIRROR or cache setting must not decide what these tests exercise
    # (the session-scoped `data_mirror` fixture of conftest.py reads DATA_MIRROR before this)
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    monkeypatch.delenv(data.CACHE_ENV, raising=False)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_entries():
    assert set(data.REGISTRY) == {"5j0n", "70s-ribosome", "hand", "relion31-star", "5a1a"}
    for name, entry in data.REGISTRY.items():
        assert entry.name == name
        assert entry.urls and all(u.startswith("https://") for u in entry.urls)
        assert entry.description
    assert [e.kind for e in data.REGISTRY.values()] == ["map", "map", "map", "other", "model"]
    assert data.REGISTRY["5a1a"].sha256 is None
    assert data.REGISTRY["5a1a"].voxel_size == 1.0
    assert data.REGISTRY["5a1a"].resolution == 3.0
    assert data.REGISTRY["5j0n"].voxel_size == pytest.approx(3.6667, abs=1e-4)
    assert data.available() == {n: e.description for n, e in data.REGISTRY.items()}


@pytest.mark.parametrize("name", ["5j0n", "70s-ribosome", "hand", "relion31-star"])
def test_mirror_files_match_registry_checksums(name, data_mirror):
    entry = data.REGISTRY[name]
    assert sha256((data_mirror / entry.filename).read_bytes()) == entry.sha256


def test_datafile_validation():
    with pytest.raises(ValueError, match="single string"):
        DataFile("x", "x.mrc", None, "https://example.org/x.mrc", "x")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        DataFile("x", "x.mrc", "abc", (), "x")
    with pytest.raises(ValueError, match="bare file name"):
        DataFile("x", "../x.mrc", None, (), "x")
    entry = DataFile("x", "x.mrc", "A" * 64, ["https://example.org/x.mrc"], "x")
    assert entry.sha256 == "a" * 64  # normalised so comparisons with hexdigest() work
    assert entry.urls == ("https://example.org/x.mrc",)
    assert DataFile("m", "m.cif.gz", None, (), "m").kind == "model"


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data name 'nope'.*5j0n"):
        data.fetch("nope", cache_dir=tmp_path)
    with pytest.raises(TypeError):
        data.fetch(42, cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Fetching from a mirror directory


@pytest.fixture
def no_network(monkeypatch):
    """Make any download attempt fail loudly, to prove a code path never goes online."""

    def refuse(*args, **kwargs):
        raise AssertionError("fetch tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_fetch_from_mirror_then_cache_hit(tmp_path, no_network, data_mirror):
    cache = tmp_path / "cache"
    path = data.fetch("5j0n", cache_dir=cache, mirror=data_mirror, progress=False)
    assert path == cache / "5j0n.mrc"
    assert sha256(path.read_bytes()) == data.REGISTRY["5j0n"].sha256
    assert listing(cache) == ["5j0n.mrc"]  # no temporary file left

    mtime = path.stat().st_mtime_ns
    empty_mirror = tmp_path / "empty"
    empty_mirror.mkdir()
    # an empty mirror and no network: only the cache can satisfy this
    again = data.fetch("5j0n", cache_dir=cache, mirror=empty_mirror, progress=False)
    assert again == path
    assert path.stat().st_mtime_ns == mtime


def test_corrupted_cache_file_is_fetched_again(tmp_path, no_network, data_mirror):
    cache = tmp_path / "cache"
    path = data.fetch("hand", cache_dir=cache, mirror=data_mirror, progress=False)
    path.write_bytes(b"corrupted")
    with pytest.warns(UserWarning, match="fetching hand.mrc again"):
        again = data.fetch("hand", cache_dir=cache, mirror=data_mirror, progress=False)
    assert again == path
    assert sha256(path.read_bytes()) == data.REGISTRY["hand"].sha256


def test_default_cache_dir_and_mirror_from_environment(tmp_path, monkeypatch, no_network, data_mirror):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(data.MIRROR_ENV, str(data_mirror))
    path = data.fetch("relion31-star", progress=False)
    assert path == Path("data") / "relion31.star"
    assert (tmp_path / "data" / "relion31.star").is_file()

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "elsewhere"))
    path = data.fetch("relion31-star", progress=False)
    assert path == tmp_path / "elsewhere" / "relion31.star"


def test_corrupted_mirror_file_is_an_error_and_leaves_nothing(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "f.bin").write_bytes(b"tampered")
    entry = DataFile("f", "f.bin", sha256(b"original"), (), "test file")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="discarded f.bin"), pytest.raises(DataError) as info:
        data.fetch(entry, cache_dir=cache, mirror=mirror, progress=False)
    message = str(info.value)
    assert "f.bin" in message
    assert sha256(b"original") in message and sha256(b"tampered") in message
    assert str(mirror / "f.bin") in message
    assert listing(cache) == []


# --------------------------------------------------------------------------------------------
# Downloading over HTTP (a local server)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A directory served over HTTP on 127.0.0.1; yields (directory, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # a short poll interval keeps shutdown() (and so each test) fast
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-listens-here.bin"


PAYLOAD = bytes(range(256)) * 300


def test_download_verifies_and_caches(tmp_path, http_root):
    root, base = http_root
    (root / "good.bin").write_bytes(PAYLOAD)
    entry = DataFile("good", "good.bin", sha256(PAYLOAD), (f"{base}/good.bin",), "test file")
    cache = tmp_path / "cache"
    path = data.fetch(entry, cache_dir=cache, progress=True)
    assert path == cache / "good.bin"
    assert path.read_bytes() == PAYLOAD
    assert listing(cache) == ["good.bin"]


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, http_root):
    root, base = http_root
    (root / "bad.bin").write_bytes(PAYLOAD[:-1])
    url = f"{base}/bad.bin"
    entry = DataFile("bad", "bad.bin", sha256(PAYLOAD), (url,), "test file")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="discarded"), pytest.raises(DataError) as info:
        data.fetch(entry, cache_dir=cache, progress=False)
    message = str(info.value)
    assert "bad.bin" in message and url in message
    assert sha256(PAYLOAD) in message and sha256(PAYLOAD[:-1]) in message
    assert "wrong sha256" in message
    assert listing(cache) == []


def test_git_lfs_pointer_is_recognised(tmp_path, http_root):
    root, base = http_root
    (root / "lfs.mrc").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    entry = DataFile("lfs", "lfs.mrc", sha256(PAYLOAD), (f"{base}/lfs.mrc",), "test file")
    with (
        pytest.warns(UserWarning, match="Git LFS pointer"),
        pytest.raises(DataError, match="Git LFS pointer"),
    ):
        data.fetch(entry, cache_dir=tmp_path / "cache", progress=False)


def test_download_falls_back_to_next_url(tmp_path, http_root):
    root, base = http_root
    (root / "good.bin").write_bytes(PAYLOAD)
    entry = DataFile(
        "good",
        "good.bin",
        sha256(PAYLOAD),
        (f"{base}/missing.bin", closed_port_url(), f"{base}/good.bin"),
        "test file",
    )
    path = data.fetch(entry, cache_dir=tmp_path / "cache", progress=False)
    assert path.read_bytes() == PAYLOAD


def test_bad_source_then_good_source_succeeds_with_warning(tmp_path, http_root):
    root, base = http_root
    (root / "bad.bin").write_bytes(b"not it")
    (root / "good.bin").write_bytes(PAYLOAD)
    entry = DataFile("good", "good.bin", sha256(PAYLOAD), (f"{base}/bad.bin", f"{base}/good.bin"), "test file")
    with pytest.warns(UserWarning, match=f"discarded good.bin from {base}/bad.bin"):
        path = data.fetch(entry, cache_dir=tmp_path / "cache", progress=False)
    assert path.read_bytes() == PAYLOAD


def test_all_sources_failing_gives_one_actionable_error(tmp_path, http_root):
    _, base = http_root
    urls = (f"{base}/missing.bin", closed_port_url())
    entry = DataFile("gone", "gone.bin", sha256(PAYLOAD), urls, "test file")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        data.fetch(entry, cache_dir=cache, progress=False, timeout=5)
    message = str(info.value)
    assert "gone.bin" in message
    for url in urls:
        assert url in message
    assert "404" in message
    assert "DATA_MIRROR=/path/to/dir" in message
    assert str((cache / "gone.bin").resolve()) in message
    assert listing(cache) == []


def test_unpinned_file_is_trusted_on_first_use(tmp_path, http_root):
    root, base = http_root
    (root / "model.bin").write_bytes(PAYLOAD)
    entry = DataFile("model", "model.bin", None, (f"{base}/model.bin",), "test file")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="trusting .* on first use"):
        path = data.fetch(entry, cache_dir=cache, progress=False)
    sidecar = cache / "model.bin.sha256"
    assert sidecar.read_text().split()[0] == sha256(PAYLOAD)

    # known now: no warning on a cache hit
    assert data.fetch(entry, cache_dir=cache, progress=False) == path

    # upstream changes after first use: the recorded checksum rejects it
    path.unlink()
    (root / "model.bin").write_bytes(PAYLOAD[::-1])
    with (
        pytest.warns(UserWarning, match="discarded"),
        pytest.raises(DataError, match="delete that sidecar") as info,
    ):
        data.fetch(entry, cache_dir=cache, progress=False)
    assert str(sidecar) in str(info.value)
    assert listing(cache) == ["model.bin.sha256"]


# --------------------------------------------------------------------------------------------
# Reading and writing MRC files


def test_load_volume_5j0n(data_mirror):
    volume, voxel_size = data.load_volume(data_mirror / "5j0n.mrc")
    assert volume.shape == (69, 57, 75)
    assert volume.dtype == np.float32 and volume.flags.c_contiguous
    assert voxel_size == pytest.approx(3.6667, abs=1e-4)
    with mrcfile.open(data_mirror / "5j0n.mrc") as mrc:
        np.testing.assert_array_equal(volume, mrc.data)
        assert not np.shares_memory(volume, mrc.data)


def test_load_volume_without_voxel_size_warns(data_mirror):
    with pytest.warns(UserWarning, match="70s-ribosome.mrc has no voxel size"):
        volume, voxel_size = data.load_volume(data_mirror / "70s-ribosome.mrc")
    assert volume.shape == (65, 65, 65)
    assert voxel_size == 1.0


def test_load_by_name(tmp_path, no_network, data_mirror):
    volume, voxel_size = data.load("hand", cache_dir=tmp_path, mirror=data_mirror, progress=False)
    assert volume.shape == (64, 64, 64) and voxel_size == 1.0
    with pytest.raises(ValueError, match=r"fetch\('relion31-star'\)"):
        data.load("relion31-star", cache_dir=tmp_path, mirror=data_mirror)


def test_write_then_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, 5, 6))  # float64, [z, y, x]
    original = volume.copy()
    path = data.write_volume(tmp_path / "v.mrc", volume, 2.5, origin=(1.0, 2.0, 3.0))
    np.testing.assert_array_equal(volume, original)
    loaded, voxel_size = data.load_volume(path)
    np.testing.assert_array_equal(loaded, volume.astype(np.float32))
    assert voxel_size == 2.5
    with mrcfile.open(path) as mrc:
        assert (mrc.header.nx, mrc.header.ny, mrc.header.nz) == (6, 5, 4)
        assert tuple(mrc.header.origin.item()) == (1.0, 2.0, 3.0)
    # overwriting in place works and leaves no temporary file
    data.write_volume(path, np.zeros((2, 2, 2), dtype=np.int16), 1.0)
    assert data.load_volume(path)[0].shape == (2, 2, 2)
    assert listing(tmp_path) == ["v.mrc"]


def test_write_volume_refuses_bad_input(tmp_path):
    target = tmp_path / "v.mrc"
    with pytest.raises(ValueError, match="3-D"):
        data.write_volume(target, np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        data.write_volume(target, np.array([[[np.nan, np.inf, 0.0]]]), 1.0)
    with pytest.raises(ValueError, match="voxel_size"):
        data.write_volume(target, np.zeros((2, 2, 2)), 0.0)
    with pytest.raises(ValueError, match="real numbers"):
        data.write_volume(target, np.zeros((2, 2, 2), dtype=complex), 1.0)
    assert listing(tmp_path) == []


def test_load_volume_applies_axis_order(tmp_path):
    zyx = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "xyz.mrc"
    with mrcfile.new(path) as mrc:
        # stored with x as the slowest axis: sections are x, rows y, columns z
        mrc.set_data(np.ascontiguousarray(zyx.transpose(2, 1, 0)))
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
        mrc.voxel_size = 1.0
    volume, _ = data.load_volume(path)
    np.testing.assert_array_equal(volume, zyx)


def test_load_volume_errors(tmp_path):
    missing = tmp_path / "missing.mrc"
    with pytest.raises(FileNotFoundError, match=r"missing\.mrc"):
        data.load_volume(missing)

    empty = tmp_path / "empty.mrc"
    empty.touch()
    with pytest.raises(DataError, match=r"empty\.mrc is empty \(0 bytes\)"):
        data.load_volume(empty)

    text = tmp_path / "page.mrc"
    text.write_text("<html>404 Not Found</html>\n" * 100)
    with pytest.raises(DataError, match=r"cannot read .*page\.mrc as an MRC map"):
        data.load_volume(text)

    image = tmp_path / "image.mrc"
    with mrcfile.new(image) as mrc:
        mrc.set_data(np.zeros((8, 9), dtype=np.float32))
    with pytest.raises(DataError, match=r"2-D array of shape \(8, 9\)"):
        data.load_volume(image)

    stack = tmp_path / "particles.mrcs"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(np.zeros((3, 8, 8), dtype=np.float32))
        mrc.set_image_stack()
    with pytest.raises(DataError, match="image stack of 3 images"):
        data.load_volume(stack)

    nan = tmp_path / "nan.mrc"
    values = np.zeros((3, 3, 3), dtype=np.float32)
    values[0, 0, 0] = np.nan
    values[1, 2, 0] = np.nan
    values[2, 2, 2] = -np.inf
    with pytest.warns(RuntimeWarning, match="NaN"), mrcfile.new(nan) as mrc:
        mrc.set_data(values)
    with pytest.raises(DataError, match="3 NaN or infinite values"):
        data.load_volume(nan)

    anisotropic = tmp_path / "aniso.mrc"
    with mrcfile.new(anisotropic) as mrc:
        mrc.set_data(np.zeros((3, 3, 3), dtype=np.float32))
        mrc.voxel_size = (1.0, 1.0, 2.0)
    with pytest.raises(DataError, match="anisotropic voxels"):
        data.load_volume(anisotropic)


# --------------------------------------------------------------------------------------------
# Maps from atomic models


def write_pdb(path, atoms):
    """Write ``atoms``, tuples (element, x, y, z[, occupancy[, b_factor]]), as a minimal PDB."""
    lines = []
    for serial, (element, x, y, z, *rest) in enumerate(atoms, start=1):
        occupancy, b_factor = (list(rest) + [1.0, 20.0][len(rest) :])[:2]
        lines.append(
            f"HETATM{serial:5d} {element:<4s} UNK A{serial:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
            f"{occupancy:6.2f}{b_factor:6.2f}          {element:>2s}"
        )
    lines.append("END")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


# Far apart along x (C -> S) and along z (C -> O), nothing along y: a transposed map shows up.
ATOMS = [("C", 2.0, 3.0, 4.0), ("S", 14.0, 3.0, 4.0), ("O", 2.0, 3.0, 24.0)]


def electron_f0(element):
    """Electron scattering factor at zero angle (A): the integral of an atom's density."""
    import gemmi

    return sum(gemmi.Element(element).c4322.get_coefs()[:5])


@pytest.mark.parametrize("voxel_size", [1.0, 0.75])
def test_density_from_model_geometry(tmp_path, voxel_size):
    pdb = write_pdb(tmp_path / "atoms.pdb", ATOMS)
    volume, returned, origin = data.density_from_model(pdb, voxel_size, 3.0, margin=6.0, return_origin=True)
    assert returned == voxel_size
    assert volume.dtype == np.float32 and volume.flags.c_contiguous
    np.testing.assert_allclose(origin, [2 - 6, 3 - 6, 4 - 6])
    extent_xyz = np.array([12.0, 0.0, 20.0]) + 12.0
    assert volume.shape == tuple(np.ceil(extent_xyz / voxel_size).astype(int))[::-1]

    for _, *position in ATOMS:
        i, j, k = np.round((np.array(position) - origin) / voxel_size).astype(int)
        window = volume[k - 2 : k + 3, j - 2 : j + 3, i - 2 : i + 3]
        assert volume[k, j, i] == window.max() > 0

    # the density integrates to the atoms' zero-angle electron scattering factors
    total = volume.sum(dtype=np.float64) * voxel_size**3
    assert total == pytest.approx(sum(electron_f0(a[0]) for a in ATOMS), rel=1e-2)


def test_density_from_model_weights_atoms(tmp_path):
    atoms = [("C", 0.0, 0.0, 0.0), ("S", 12.0, 0.0, 0.0), ("C", 0.0, 12.0, 0.0, 0.5)]
    pdb = write_pdb(tmp_path / "atoms.pdb", atoms)
    volume, voxel_size, origin = data.density_from_model(pdb, 1.0, 3.0, return_origin=True)

    def mass(position):
        i, j, k = np.round((np.array(position) - origin) / voxel_size).astype(int)
        return volume[k - 4 : k + 5, j - 4 : j + 5, i - 4 : i + 5].sum(dtype=np.float64)

    carbon, sulfur, half_carbon = (mass(a[1:4]) for a in atoms)
    assert sulfur > 1.8 * carbon  # heavier atom, more density
    assert half_carbon == pytest.approx(0.5 * carbon, rel=1e-3)  # occupancy weights


def test_density_from_model_ignores_b_factors_and_reads_gzip(tmp_path):
    sharp = write_pdb(tmp_path / "sharp.pdb", [(e, x, y, z, 1.0, 2.0) for e, x, y, z in ATOMS])
    blurred = write_pdb(tmp_path / "blur.pdb", [(e, x, y, z, 1.0, 90.0) for e, x, y, z in ATOMS])
    gz = tmp_path / "sharp.pdb.gz"
    gz.write_bytes(gzip.compress(sharp.read_bytes()))
    reference, _ = data.density_from_model(sharp, 1.0, 3.0)
    np.testing.assert_array_equal(data.density_from_model(blurred, 1.0, 3.0)[0], reference)
    np.testing.assert_array_equal(data.density_from_model(gz, 1.0, 3.0)[0], reference)


def test_density_from_model_resolution_sets_blur(tmp_path):
    pdb = write_pdb(tmp_path / "atoms.pdb", ATOMS)
    sharp, _ = data.density_from_model(pdb, 1.0, 2.0, margin=8.0)
    soft, _ = data.density_from_model(pdb, 1.0, 4.0, margin=8.0)
    assert sharp.shape == soft.shape
    assert sharp.max() > 2 * soft.max()


def test_density_from_model_default_margin_avoids_wraparound(tmp_path):
    pdb = write_pdb(tmp_path / "atoms.pdb", ATOMS)
    volume, _ = data.density_from_model(pdb, 1.0, 3.0)
    faces = [volume[0], volume[-1], volume[:, 0], volume[:, -1], volume[:, :, 0], volume[:, :, -1]]
    assert max(float(f.max()) for f in faces) < 1e-3 * float(volume.max())


def test_density_from_model_argument_checks(tmp_path):
    pdb = write_pdb(tmp_path / "atoms.pdb", ATOMS)
    with pytest.raises(ValueError, match="voxel_size must be a positive"):
        data.density_from_model(pdb, 0.0, 3.0)
    with pytest.raises(ValueError, match="resolution must be a positive"):
        data.density_from_model(pdb, 1.0, -3.0)
    with pytest.raises(ValueError, match="margin"):
        data.density_from_model(pdb, 1.0, 3.0, margin=-1.0)
    with pytest.warns(UserWarning, match=r"Nyquist.*use resolution >= 2\.0"):
        data.density_from_model(pdb, 1.0, 1.5)
    with pytest.warns(UserWarning, match="wrap around"):
        data.density_from_model(pdb, 1.0, 3.0, margin=1.0)


def test_density_from_model_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pdb"):
        data.density_from_model(tmp_path / "nothing.pdb", 1.0, 3.0)

    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\nEND\n")
    with pytest.raises(DataError, match="contains no atoms"):
        data.density_from_model(empty, 1.0, 3.0)

    unknown = write_pdb(tmp_path / "unknown.pdb", [("X", 0.0, 0.0, 0.0)])
    with (
        pytest.warns(UserWarning, match="1 x 'X'"),
        pytest.raises(DataError, match="no atoms with known elements"),
    ):
        data.density_from_model(unknown, 1.0, 3.0)

    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    with pytest.raises(DataError, match="cannot read atomic model"):
        data.density_from_model(text, 1.0, 3.0)


def test_load_builds_and_caches_map_from_model(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_pdb(mirror / "tiny.pdb", ATOMS)
    entry = DataFile("tiny", "tiny.pdb", None, (), "test model", voxel_size=1.0, resolution=3.0)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="trusting"):
        volume, voxel_size = data.load(entry, cache_dir=cache, mirror=mirror, progress=False)
    expected, _, origin = data.density_from_model(mirror / "tiny.pdb", 1.0, 3.0, return_origin=True)
    np.testing.assert_array_equal(volume, expected)
    assert voxel_size == 1.0

    model_sha = sha256((mirror / "tiny.pdb").read_bytes())
    built = cache / f"tiny_voxel1A_res3A_{model_sha[:12]}.mrc"
    assert listing(cache) == sorted(["tiny.pdb", "tiny.pdb.sha256", built.name])
    with mrcfile.open(built) as mrc:
        np.testing.assert_allclose(tuple(mrc.header.origin.item()), origin)

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("the cached map should have been used")

    monkeypatch.setattr(registry, "density_from_model", must_not_rebuild)
    again, _ = data.load(entry, cache_dir=cache, mirror=mirror, progress=False)
    np.testing.assert_array_equal(again, expected)

    incomplete = DataFile("tiny", "tiny.pdb", None, (), "test model")
    with pytest.raises(ValueError, match="needs voxel_size and resolution"):
        data.load(incomplete, cache_dir=cache, mirror=mirror)
