"""The optional comparison with ASPIRE common lines (experiments/compare/): ASPIRE's rotation
convention against ours, the image reader against the pipeline's, the cache key of the runner.

Everything here runs without ASPIRE. Tests that need it either import it (``importorskip``: when it
is installed in this venv) or run it in ``.venv-compare`` (skipped when that venv is absent).
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryo_orient.data.dataset import read_dataset
from cryo_orient.geometry import rotations
from cryo_orient.simulation.simulate import SimulationConfig, simulate_dataset
from cryo_orient.tomography import backends, projection

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "experiments" / "compare"
COMPARE_PYTHON = REPO / ".venv-compare" / "bin" / "python"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"compare_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convention = _load("aspire_convention")


def _blob_volume(n=24, seed=0):
    """A smooth asymmetric volume (four Gaussian blobs), indexed [z, y, x]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    vol = np.zeros((n, n, n))
    for _ in range(4):
        c = rng.uniform(-n / 4, n / 4, 3)
        vol += rng.uniform(0.5, 1.5) * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 6.0)
    return vol


def test_aspire_rotation_is_the_transpose_of_ours():
    q = rotations.uniform_so3(50, rng=np.random.default_rng(1))
    R = rotations.quaternion_to_matrix(q)
    R_aspire = convention.matrices_to_aspire(R)
    np.testing.assert_allclose(R_aspire, np.swapaxes(R, 1, 2))
    np.testing.assert_allclose(convention.aspire_to_matrices(R_aspire), R)
    # Back to our quaternions: the same rotations as cryo_orient's own conversion.
    back = rotations.matrix_to_quaternion(convention.aspire_to_matrices(R_aspire))
    assert np.max(rotations.distance(back, q)) < 1e-7
    np.testing.assert_allclose(back, rotations.matrix_to_quaternion(R), atol=1e-12)


def test_known_case_quarter_turn_about_x():
    # Ours: q = (sin 45°, 0, 0, cos 45°) is R = Rx(90°): the rays run along R^T e_z = +e_y and the
    # image's y axis is R^T e_y = -e_z. ASPIRE's matrix of the same projection is R_A = R^T = Rx(-90°),
    # which maps the image's (kx, ky, 0) into the volume frame: ky -> -z, and the normal e_z -> +e_y.
    s = np.sqrt(0.5)
    R_aspire = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    np.testing.assert_allclose(R_aspire @ [0, 1, 0], [0, 0, -1])  # Rx(-90°) e_y = -e_z
    np.testing.assert_allclose(R_aspire @ [0, 0, 1], [0, 1, 0])
    q = rotations.matrix_to_quaternion(convention.aspire_to_matrices(R_aspire[None]))[0]
    np.testing.assert_allclose(q, [s, 0, 0, s], atol=1e-12)
    np.testing.assert_allclose(rotations.quaternion_to_matrix(q), R_aspire.T, atol=1e-12)


def test_fourier_slice_points_agree():
    # ASPIRE (Volume.project, rotated_grids) samples the volume's transform at R_A (kx, ky, 0) with
    # the image indexed [y, x]; ours at R^T (kx, ky, 0) (backends.slice_points), same indexing.
    q = rotations.uniform_so3(5, rng=np.random.default_rng(2))
    R = rotations.quaternion_to_matrix(q)
    size = 8
    ours = backends.slice_points(R, size)  # (z, y, x), N, ky, kx
    ky, kx, _ = backends.slice_frequencies(size)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    k = np.stack([kxx, kyy, np.zeros_like(kxx)])  # (x, y, z), ky, kx
    theirs = np.einsum("nij,jab->inab", convention.matrices_to_aspire(R), k)[::-1]
    np.testing.assert_allclose(theirs, ours, atol=1e-12)


def test_nearly_orthogonal_estimates_are_projected():
    q = rotations.uniform_so3(10, rng=np.random.default_rng(3))
    R = rotations.quaternion_to_matrix(q) + 1e-4 * np.random.default_rng(4).standard_normal((10, 3, 3))
    with pytest.raises(ValueError, match="rotation matrices"):
        rotations.matrix_to_quaternion(R)
    near = convention.nearest_rotation(R)
    np.testing.assert_allclose(np.swapaxes(near, 1, 2) @ near, np.broadcast_to(np.eye(3), near.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(near), 1.0)
    out = rotations.matrix_to_quaternion(near)
    assert np.max(rotations.distance(out, q)) < 1e-3


def test_the_aspire_folder_never_imports_cryo_orient_or_tensorflow():
    for path in FOLDER.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"cryo_orient", "tensorflow", "keras"}, path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    path = folder / "blobs.mrc"
    with mrcfile.new(path) as m:
        m.set_data(_blob_volume(16).astype(np.float32))
        m.voxel_size = 2.0
    config = SimulationConfig(volume=str(path), n_projections=30, noise_variance=0.3, store_clean=True, seed=2)
    return simulate_dataset(config, folder / "blobs.h5", progress=False)


def test_script_reads_the_images_the_pipeline_uses(dataset):
    script = _load("aspire_orientations")
    data = read_dataset(dataset)
    index = np.array([7, 2, 11, 5])  # any order
    images, attrs = script.read_images(dataset, index)
    np.testing.assert_allclose(images, data.images("noisy", index), rtol=1e-6)
    assert attrs["cache_key"] == data.cache_key and attrs["voxel_size"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="distinct"):
        script.read_images(dataset, np.array([1, 1, 2]))


def test_runner_cache_key_follows_every_input(dataset, tmp_path):
    runner = _load("aspire_runner")
    settings = dict(n_theta=360, n_rad=0, max_shift=0.0, downsample=58)
    base = runner.cache_path(tmp_path, dataset, "k", np.arange(5), settings, "py")
    assert base == runner.cache_path(tmp_path, dataset, "k", np.arange(5), dict(settings), "py")
    assert base.name.startswith("aspire-blobs-")
    for changed in (
        runner.cache_path(tmp_path, dataset, "k2", np.arange(5), settings, "py"),
        runner.cache_path(tmp_path, dataset, "k", np.arange(1, 6), settings, "py"),
        runner.cache_path(tmp_path, dataset, "k", np.arange(5), settings | {"n_theta": 180}, "py"),
    ):
        assert changed != base


_PROJECT_CHECK = """
import json, sys
import numpy as np
from aspire.volume import Volume
d = np.load(sys.argv[1])
images = Volume(d["volume"]).project(d["R_aspire"]).asnumpy()
print(json.dumps(images.tolist()))
"""


def _aspire_projections(volume, R_aspire, tmp_path):
    """ASPIRE's projections: in process when ASPIRE is importable here, else in .venv-compare."""
    if importlib.util.find_spec("aspire") is not None:
        Volume = pytest.importorskip("aspire.volume").Volume

        return Volume(volume).project(R_aspire).asnumpy()
    if not COMPARE_PYTHON.is_file():
        pytest.skip("ASPIRE is neither importable here nor installed in .venv-compare (`make compare` installs it)")
    np.savez(tmp_path / "in.npz", volume=volume, R_aspire=R_aspire)
    (tmp_path / "check.py").write_text(_PROJECT_CHECK)
    (tmp_path / "config.yaml").write_text(f"logging:\n  log_dir: {tmp_path}\n  console_level: WARNING\n")
    done = subprocess.run(
        [str(COMPARE_PYTHON), "check.py", "in.npz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=os.environ | {"ASPIREDIR": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_aspire_projects_our_images_with_the_converted_rotations(tmp_path):
    """ASPIRE's own projector, with our rotations converted, gives our projections (no image flip)."""
    volume = _blob_volume(24)
    q = rotations.uniform_so3(4, rng=np.random.default_rng(5))
    ours = projection.project(volume, q, 24, "nufft")
    theirs = _aspire_projections(volume, convention.matrices_to_aspire(rotations.quaternion_to_matrix(q)), tmp_path)
    for a, b in zip(ours, theirs):
        a, b = a - a.mean(), b - b.mean()
        assert np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)) > 0.999
        # The transposed image (the usual mistake) does not match.
        bt = b.T
        assert np.sum(a * bt) / np.sqrt(np.sum(a * a) * np.sum(bt * bt)) < 0.95


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
