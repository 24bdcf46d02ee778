"""Interruptions and concurrency: SIGKILL during training and a bit-identical resume, SIGTERM and
SIGINT (exit 143 / 130, no temporary left), stale temporaries of dead processes swept by the next
run, unique temporary names and locks for concurrent runs, full disks."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cryo_orient import artifacts, data
from cryo_orient.simulation import simulate
from cryo_orient.workflow import profiles

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "interrupt_child.py"


def _env():
    return os.environ | {"PYTHONPATH": str(REPO / "lib"), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _files(folder: Path) -> list[str]:
    """Every name under ``folder`` (recursively), relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- kill and resume


def _child(out_dir, kill, regime):
    return subprocess.run(
        [sys.executable, str(CHILD), str(out_dir), kill, regime],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "regime, kills",
    [
        # Every kind of point: after run.json (no checkpoint yet), before a checkpoint's rename (its
        # temporary folder is left), in the middle of writing model.keras (a half-written .keras),
        # after model.keras but before history.csv (the case), just after the last
        # checkpoint's rename (its copies and run.json not written; the older checkpoint not removed).
        ("batch", ["after:1", "before:2", "mid-save:2", "after:3", "after:2"]),
        ("faithful", ["mid-save:1", "after:3"]),
    ],
)
def test_a_training_killed_at_any_point_resumes_bit_identically(tmp_path, regime, kills):
    full = _child(tmp_path / "full", "none", regime)
    assert full.returncode == 0, full.stderr[-2000:]
    expected = json.loads(full.stdout.splitlines()[-1])
    cut = tmp_path / "cut"
    for kill in kills:
        killed = _child(cut, kill, regime)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-2000:])
    resumed = _child(cut, "none", regime)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads(resumed.stdout.splitlines()[-1])
    assert got["epochs"] == [1, 2, 3]
    # Bit-identical: the same floats and the same weights, not merely close ones.
    assert got["loss"] == expected["loss"] and got["val_mae"] == expected["val_mae"]
    assert got["weights"] == expected["weights"] == got["loaded_weights"]
    assert got["loaded_val_mae"] == expected["val_mae"]
    # Nothing left behind: one checkpoint, its copies, run.json; no temporary.
    top = sorted(p.name for p in cut.iterdir())
    assert top == ["checkpoint-000003", "history.csv", "model.keras", "run.json"], top
    assert _without_seconds(cut / "history.csv") == _without_seconds(tmp_path / "full" / "history.csv")


def _without_seconds(history: Path) -> list[list[str]]:
    """The rows of a history.csv without the wall-clock column (the one field that may differ)."""
    rows = [line.split(",") for line in history.read_text().splitlines()]
    k = rows[0].index("seconds")
    return [row[:k] + row[k + 1 :] for row in rows]


@pytest.mark.slow
def test_two_trainings_into_one_folder_run_one_after_the_other(tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(tmp_path / "run"), "none", "batch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    a, b = (json.loads(out.splitlines()[-1]) for out, _ in outputs)
    assert a == b  # the second waited for the first, then loaded its finished run
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint-000003",
        "history.csv",
        "model.keras",
        "run.json",
    ]


# --------------------------------------------------------------------------- signals


@pytest.fixture(scope="module")
def blob(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    g = np.mgrid[:24, :24, :24].astype(float) - 12
    vol = sum(np.exp(-((g - c[:, None, None, None]) ** 2).sum(0) / 8) for c in rng.uniform(-5, 5, (4, 3))).astype(
        np.float32
    )
    return data.write_volume(tmp_path_factory.mktemp("blob") / "blob.mrc", vol, 2.0)


def _start_simulation(blob, out: Path, n=400_000):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryo_orient.cli",
            "simulate",
            "--set",
            f"volume={blob}",
            "--set",
            f"n_projections={n}",
            "--set",
            "size=24",
            "--set",
            "noise_variance=1",
            "--out",
            str(out),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # A shell running this suite in the background (`... &`) starts it with SIGINT ignored, and
        # children inherit that; give the command the default, as an interactive terminal does.
        preexec_fn=_default_sigint,
    )


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_temporary(folder: Path, proc, timeout=120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.iterdir() if artifacts.temp_name_pid(p.name) == proc.pid]
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the simulation ended first: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no temporary file appeared")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_remove_the_temporaries_and_exit_143_or_130(blob, tmp_path, signum, code):
    out = tmp_path / "d.h5"
    proc = _start_simulation(blob, out)
    tmp = _wait_for_temporary(tmp_path, proc)
    time.sleep(0.3)  # well inside the HDF5 writing
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert not tmp.exists() and not out.exists()
    assert _files(tmp_path) == []


def test_the_next_run_sweeps_the_temporaries_of_a_killed_one(blob, tmp_path):
    out = tmp_path / "d.h5"
    proc = _start_simulation(blob, out)
    tmp = _wait_for_temporary(tmp_path, proc)
    proc.kill()  # SIGKILL: no handler runs, the temporary stays
    proc.communicate(timeout=60)
    assert tmp.exists()
    again = _start_simulation(blob, out, n=50)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert not tmp.exists()
    assert _files(tmp_path) == ["d.h5"]


def test_stale_temporaries_of_dead_processes_only_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale_file = tmp_path / f".d.h5.{dead.pid}.abc_123.tmp"
        stale_dir = tmp_path / f".checkpoint-000002.{dead.pid}.x9.tmp"
        stale_keras = tmp_path / f".model.keras.{dead.pid}.q1.tmp.keras"
        live = tmp_path / f".d.h5.{alive.pid}.zz.tmp"
        other = tmp_path / ".hidden.tmp"  # not one of ours: never touched
        for path in (stale_file, stale_keras, live, other):
            path.write_text("partial")
        stale_dir.mkdir()
        (stale_dir / "fit.keras").write_text("partial")
        artifacts.save_text("x\n", tmp_path / "out.txt")  # any atomic write sweeps its folder first
        assert not stale_file.exists() and not stale_dir.exists() and not stale_keras.exists()
        assert live.exists() and other.exists() and (tmp_path / "out.txt").read_text() == "x\n"
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------- concurrency


def test_temporary_names_are_unique_and_name_the_process(tmp_path):
    a = artifacts.temporary_path(tmp_path / "model.keras", suffix=".keras")
    b = artifacts.temporary_path(tmp_path / "model.keras", suffix=".keras")
    assert a != b and a.name.endswith(".tmp.keras")
    assert artifacts.temp_name_pid(a.name) == os.getpid() == artifacts.temp_name_pid(b.name)
    assert artifacts.temp_name_pid("model.keras") is None


def test_concurrent_writers_of_one_file_all_succeed(tmp_path):
    errors = []

    def write(k):
        try:
            for _ in range(20):
                artifacts.save_text(f"writer {k}\n", tmp_path / "shared.txt")
        except Exception as err:  # noqa: BLE001 (collected for the assertion)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "shared.txt").read_text().startswith("writer ")
    assert _files(tmp_path) == ["shared.txt"]


def test_concurrent_simulations_of_one_file_compute_it_once(blob, tmp_path, monkeypatch):
    calls = []
    original = simulate._simulate

    def counted(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # long enough for the others to arrive and wait
        return original(*args, **kwargs)

    monkeypatch.setattr(simulate, "_simulate", counted)
    config = simulate.SimulationConfig(volume=str(blob), n_projections=30, size=24, noise_variance=1.0)
    results, errors = [], []

    def run():
        try:
            results.append(simulate.simulate_dataset(config, tmp_path / "d.h5", progress=False))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert len(calls) == 1  # the others waited for the lock, then reused the file
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["projections"].shape == (30, 24, 24)
    assert _files(tmp_path) == ["d.h5"]


def test_file_lock_makes_the_second_wait(tmp_path):
    order = []
    inside = threading.Event()

    def first():
        with artifacts.file_lock(tmp_path / "x"):
            inside.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    inside.wait()
    with artifacts.file_lock(tmp_path / "x"):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    assert _files(tmp_path) == []  # the lock file goes with the lock


def test_concurrent_profile_syncs_all_succeed(tmp_path):
    import shutil

    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    script = REPO / "lib" / "cryo_orient" / "workflow" / "profiles.py"
    procs = [
        subprocess.Popen([sys.executable, str(script), "sync", "tiny"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for _ in range(16)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, errors
    params = tmp_path / "build" / "tiny" / "params"
    assert not [n for n in _files(params) if ".tmp" in n]
    expected = profiles.target_params("tiny", profiles.load_profile("tiny", root=tmp_path), root=tmp_path)
    for target, values in expected.items():
        assert json.loads((params / f"{target}.json").read_text()) == values


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount(8)); skipped with the reason where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
        )
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def _cli(args):
    return subprocess.run(
        [sys.executable, "-m", "cryo_orient.cli", *args], capture_output=True, text=True, env=_env(), timeout=300
    )


def test_a_full_disk_is_refused_up_front_naming_the_path_and_the_space(blob, small_disk):
    done = _cli(
        ["simulate", "--set", f"volume={blob}", "--set", "n_projections=2000", "--set", "size=24"]
        + ["--out", str(small_disk / "d.h5"), "--quiet"]
    )
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"error: {small_disk}: the dataset needs 4.6 MiB but only 1.0 MiB are free there; ")
    assert _files(small_disk) == []


def test_a_disk_that_fills_while_writing_gives_one_line_and_leaves_nothing(blob, small_disk, tmp_path):
    # The estimate passes, then another writer fills the disk: the write itself fails.
    script = tmp_path / "fill.py"
    script.write_text(
        "import sys\n"
        "from cryo_orient.simulation import simulate\n"
        "from cryo_orient import cli\n"
        "simulate.check_free_space = lambda *a, **k: None\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "simulate", "--set", f"volume={blob}", "--set", "n_projections=2000"]
        + ["--set", "size=24", "--out", str(small_disk / "d.h5"), "--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: {small_disk / 'd.h5'}: no space left on the device; free some space or write the output elsewhere"
    )
    assert _files(small_disk) == []
    # Small text outputs on the full disk: the same line, nothing left.
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 8192))
    with pytest.raises(OSError) as err:
        artifacts.save_text("x" * 200_000, small_disk / "big.txt")
    assert err.value.filename == str(small_disk / "big.txt")
    assert _files(small_disk) == ["filler"]


def test_concurrent_cached_computations_run_once(tmp_path):
    from cryo_orient.workflow.stages import StageCache

    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"x": np.arange(3)}

    def slow_json():
        calls.append(1)
        time.sleep(0.3)
        return {"v": 1}

    for run in (
        lambda: StageCache(tmp_path / "stages").arrays("recover", "k1", compute),
        lambda: artifacts.cached_json(tmp_path / "json", {"a": 1}, slow_json),
    ):
        calls.clear()
        tmp_path.joinpath("stages").mkdir(exist_ok=True)
        tmp_path.joinpath("json").mkdir(exist_ok=True)
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["recover-k1.npz"]
    assert len(list((tmp_path / "json").iterdir())) == 1


def test_same_seed_gives_bit_identical_datasets_through_the_cli(blob, tmp_path):
    args = ["--set", f"volume={blob}", "--set", "n_projections=40", "--set", "size=24", "--set", "noise_variance=2"]
    for name in ("a.h5", "b.h5"):
        done = _cli(
            ["simulate", *args, "--set", "shift_mode=subpixel", "--set", "shift_limit=2", "--set", "seed=7"]
            + ["--out", str(tmp_path / name), "--quiet"]
        )
        assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for name in ("projections", "quaternions", "shifts", "euler"):
            assert a[name][()].tobytes() == b[name][()].tobytes(), name
        assert a.attrs["cache_key"] == b.attrs["cache_key"]
