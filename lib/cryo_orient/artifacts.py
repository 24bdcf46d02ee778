"""Writing experiment outputs: atomically, with a JSON record of what made them.

Every figure or table target writes its files into ``figures/<profile>/`` and a record
``<target>.json`` beside them holding the parameters (config and seed) it ran with, the numbers
it plotted, the files it wrote, and provenance. Files are written under a temporary name and
renamed, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cryo_orient import __version__

#: Temporary files are named ``.<name>.<pid>.<random>.tmp[<suffix>]``: unique per process and
#: call, so concurrent runs never share one, and the pid says whose it is, so the next run can
#: remove those of processes that died (SIGKILL, power cut) without touching a live run's.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp(?P<suffix>\.[A-Za-z0-9]+)?$")


def temp_name_pid(name: str) -> int | None:
    """The pid in a temporary name made by :func:`temporary_path` (None for any other name)."""
    match = _TEMP_RE.match(name)
    return int(match["pid"]) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale_temporaries(directory) -> list[Path]:
    """Remove the temporary files (and folders) of dead processes in ``directory``; return them.

    Only names made by :func:`temporary_path` whose pid is not running are removed, so a live
    run's temporaries are never touched.
    """
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        pid = temp_name_pid(entry.name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another run swept it first
        except OSError:
            continue  # not ours to remove (permissions): leave it
        removed.append(path)
    return removed


def temporary_path(path, *, suffix: str = "", directory: bool = False) -> Path:
    """Create and return a fresh temporary file (or folder) beside ``path``, named after it and
    this process (see :data:`_TEMP_RE`); ``suffix`` is appended (Keras wants ``.keras``)."""
    path = Path(path)
    prefix, end = f".{path.name}.{os.getpid()}.", ".tmp" + suffix
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=end, dir=path.parent)
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)
        return Path(tmp)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=end, dir=path.parent)
    os.close(fd)
    # the usual permissions (0o666 less the umask), not mkstemp's owner-only ones
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path, *, suffix: str = "", directory: bool = False):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name is unique (see :func:`temporary_path`) and is removed whatever happens in
    the block (an error, KeyboardInterrupt, the CLI's SIGTERM); the temporaries that dead
    processes left in the folder are swept first. The temporary file gets the usual permissions
    (``0o666`` less the umask), not ``mkstemp``'s owner-only ones, so outputs are readable like
    any other file. With ``directory`` it is a folder, renamed onto ``path`` (which must not
    exist as a non-empty folder).
    """
    path = Path(path)
    ensure_folder(path.parent)
    if path.is_dir() and not directory:
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    sweep_stale_temporaries(path.parent)
    try:
        tmp = temporary_path(path, suffix=suffix, directory=directory)
    except OSError as err:
        raise _in_folder(err, path.parent) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        if _disk_full(err):
            # Libraries (HDF5, zip) report a full disk without naming the file: name it here.
            raise OSError(errno.ENOSPC, "no space left on the device while writing it", str(path)) from err
        raise
    finally:
        _remove(tmp)


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it chains) says the disk or the quota is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left" in text or "errno = 28" in text or "Disk quota exceeded" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def _in_folder(err: OSError, folder: Path) -> OSError:
    """``err`` of creating a file of ours in ``folder``, naming the folder (not our file's name)."""
    return type(err)(err.errno, err.strerror, str(folder))


def ensure_folder(folder) -> Path:
    """``folder`` and its parents, created if missing; an error names the part that is a file."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(part))
        if part.exists():
            break
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_free_space(folder, needed: int, what: str = "the output") -> None:
    """Refuse (``OSError(ENOSPC)`` naming ``folder`` and both figures) if the file system holding
    ``folder`` has less than ``needed`` bytes free (plus 1 % and 1 MiB of headroom)."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if probe.is_dir() and os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, "read-only file system", str(folder))
    free = shutil.disk_usage(probe).free
    if free < needed * 1.01 + 2**20:
        raise OSError(
            errno.ENOSPC,
            f"{what} needs {format_bytes(needed)} but only {format_bytes(free)} are free there",
            str(folder),
        )


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (e.g. ``"1.5 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock for the output ``path`` (``fcntl.flock`` on ``.<name>.lock`` beside
    it), so two runs that would compute the same artifact run one after the other: the second
    waits, then finds the artifact and reuses it. The lock file is removed on release; a waiter
    that got the lock of a removed file takes it again on the new one."""
    path = Path(path)
    ensure_folder(path.parent)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as err:
            raise _in_folder(err, path.parent) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed that file: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _atomic_write(path, write) -> Path:
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".")
    options = {"dpi": 150, "bbox_inches": "tight"} | kwargs
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **options))


def save_text(text: str, path) -> Path:
    """Write a text file (CSV, Markdown) atomically."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def jsonable(value):
    """Plain JSON types from nested mappings, sequences, NumPy arrays and scalars, and paths."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def git_commit() -> str:
    """The commit the package was run from, with "-dirty" for uncommitted code changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        # Committed outputs (figures/) are rewritten by the very runs that record this: they
        # do not make the code that produced them dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)figures"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(**extra) -> dict:
    """Where an artifact came from: package, version, git commit, UTC time, host, Python and numpy
    versions, and the ``extra`` items (e.g. the seed)."""
    return {
        "package": "cryo_orient",
        "version": __version__,
        "git_commit": git_commit(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **extra,
    }


def write_record(out_dir, target: str, *, outputs, parameters: dict, results: dict | None = None) -> Path:
    """Write ``<out_dir>/<target>.json``: the outputs, parameters, results and provenance."""
    outputs = [Path(o).name for o in outputs]
    missing = [o for o in outputs if not (Path(out_dir) / o).is_file()]
    if missing:
        raise FileNotFoundError(f"{target}: outputs {missing} were not written to {out_dir}")
    record = {
        "target": target,
        "outputs": outputs,
        "parameters": jsonable(parameters),
        "results": jsonable(results or {}),
        "provenance": {
            "package_version": __version__,
            "git_commit": git_commit(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return save_text(text, Path(out_dir) / f"{target}.json")


def cached_json(directory, key: dict, compute, *, version: int = 1) -> dict:
    """Memoise ``compute()`` (which returns a JSON-able dict) under a hash of ``key``.

    Long experiments run many independent computations (one recovery per noise level, say);
    caching each one under a key of its inputs lets an interrupted run resume where it stopped
    and a re-run skip what is done, while any change of input recomputes. ``version`` is part of
    the key: bump it when the computation itself changes.
    """
    text = json.dumps(jsonable({"key": key, "version": version}), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = Path(directory) / f"{digest}.json"

    def load():
        if path.is_file():
            try:
                return json.loads(path.read_text())["value"], True
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                pass  # a corrupt cache entry is recomputed, never trusted
        return None, False

    value, found = load()
    if found:
        return value
    with file_lock(path):  # a concurrent run computing the same entry: wait, then reuse it
        value, found = load()
        if found:
            return value
        value = jsonable(compute())
        save_text(json.dumps({"key": json.loads(text), "value": value}, allow_nan=True) + "\n", path)
    return value
