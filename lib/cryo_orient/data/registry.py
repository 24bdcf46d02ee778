"""Input files by name: a registry of public files, verified fetching, and the maps they hold.

Registry and fetching
---------------------
:data:`REGISTRY` maps a short name (``"5j0n"``, ``"hand"``, ...) to a :class:`DataFile`: a file
name, its sha256 and the public URLs it can be downloaded from. :func:`fetch` returns the path of a
verified local copy, looking in this order:

1. the cache directory (argument ``cache_dir``, else the environment variable
   ``CRYO_ORIENT_DATA_DIR``, else ``data/`` relative to the *current working directory*);
2. a mirror directory holding a file of the same name (argument ``mirror``, else the environment
   variable ``DATA_MIRROR``), for machines without internet access;
3. each URL in turn.

A file enters the cache only once its sha256 has been checked: it is written under a temporary
name in the cache directory and renamed (atomically, :func:`os.replace`) when it verifies, so the
cache never holds a partial or unverified file, and concurrent fetches cannot see one.

:func:`load` goes one step further and returns ``(volume, voxel_size)`` for a name: it reads a map
with :func:`load_volume`, or, for an atomic-model entry (``"5a1a"``), builds the map with
:func:`density_from_model` and caches it as an MRC file.

Conventions
-----------
Volumes are ``float32`` arrays indexed ``[z, y, x]`` (as ``mrcfile`` gives ``.data``), voxel sizes
are in Å. Problems with a data file (unobtainable, wrong checksum, unreadable or unusable content)
raise :class:`DataError`; bad arguments raise :class:`ValueError`; a path that does not exist
raises :class:`FileNotFoundError`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cryo_orient import validation
from cryo_orient.artifacts import save_text, sweep_stale_temporaries
from cryo_orient.data.models import density_from_model
from cryo_orient.data.mrc import load_volume, write_volume
from cryo_orient.validation import DataError, InputError, InputTypeError

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "DataError",
    "DataFile",
    "REGISTRY",
    "available",
    "fetch",
    "load",
    "map_file",
]

CACHE_ENV = "CRYO_ORIENT_DATA_DIR"
MIRROR_ENV = "DATA_MIRROR"
DEFAULT_CACHE_DIR = "data"
DEFAULT_TIMEOUT = 60.0  # seconds, per connection attempt and per read

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAP_SUFFIXES = (".mrc", ".map", ".ccp4")
_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
_LFS_POINTER_PREFIX = b"version https://git-lfs"


#: The URL schemes a registry entry may download from.
_URL_SCHEMES = ("https", "http")


@dataclass(frozen=True)
class DataFile:
    """A named public input file.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"5j0n"``.
    filename : str
        Bare file name used in the cache and in mirror directories (no directory part).
    sha256 : str or None
        Expected SHA-256 of the file (64 hex digits). ``None`` means *not pinned*: the checksum of
        the first copy obtained is recorded in a sidecar ``<filename>.sha256`` in the cache
        directory (trust on first use), and later copies must match it.
    urls : sequence of str
        Download addresses, tried in order.
    description : str
        One line for humans.
    voxel_size : float, optional
        Voxel size in Å. For a map, what its header is known to say (informational; ``None`` if
        the header has none). For an atomic model, the voxel size of the map :func:`load` builds.
    resolution : float, optional
        For an atomic model only: the resolution in Å of the map :func:`load` builds.
    """

    name: str
    filename: str
    sha256: str | None
    urls: tuple[str, ...]
    description: str
    voxel_size: float | None = None
    resolution: float | None = None

    def __post_init__(self):
        # tuple("https://...") would silently split a single URL into characters
        if isinstance(self.urls, (str, bytes)):
            raise InputError(
                f"DataFile {self.name!r}: urls must be a sequence of URLs, got the single string "
                f"{self.urls!r}; wrap it as ({self.urls!r},)"
            )
        # frozen dataclass: object.__setattr__ is the sanctioned way to normalise in __post_init__
        object.__setattr__(self, "urls", tuple(str(u) for u in self.urls))
        for url in self.urls:
            # urllib would also open file://, ftp:// and data: addresses: a registry entry (possibly a
            # user's) must not turn a fetch into a read of local files
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in _URL_SCHEMES:
                raise validation.InputError(
                    f"DataFile {self.name!r}: URL {url!r} has the scheme {scheme or '(none)'!r}; only "
                    f"{'/'.join(_URL_SCHEMES)} downloads are allowed (for a local file, use a mirror directory: "
                    "DATA_MIRROR)"
                )
        if self.sha256 is not None:
            sha = str(self.sha256).strip().lower()
            if not _SHA256_RE.match(sha):
                raise InputError(
                    f"DataFile {self.name!r}: sha256 must be 64 hexadecimal digits or None "
                    f"(not pinned), got {self.sha256!r}"
                )
            object.__setattr__(self, "sha256", sha)
        # the file name is joined to the cache and mirror directories: a path could escape them
        if self.filename in ("", ".", "..") or Path(self.filename).name != self.filename:
            raise InputError(
                f"DataFile {self.name!r}: filename must be a bare file name without directories, got {self.filename!r}"
            )

    @property
    def kind(self) -> str:
        """``"map"``, ``"model"`` (PDB/mmCIF, optionally ``.gz``) or ``"other"``, from the name."""
        lower = self.filename.lower()
        if lower.endswith(".gz"):
            lower = lower[: -len(".gz")]
        if lower.endswith(_MAP_SUFFIXES):
            return "map"
        if lower.endswith(_MODEL_SUFFIXES):
            return "model"
        return "other"


def _github_raw(repo: str, branches: tuple[str, ...], path: str) -> tuple[str, ...]:
    return tuple(f"https://raw.githubusercontent.com/{repo}/{b}/{path}" for b in branches)


_ENTRIES = (
    DataFile(
        name="5j0n",
        filename="5j0n.mrc",
        sha256="48d3147ccc6d17c11e57651b43e65494e2cef2e3bb92de4938c29a5189d837ee",
        # media.githubusercontent.com resolves Git LFS objects; raw.githubusercontent.com serves
        # the file itself only while it is stored outside LFS
        urls=(
            "https://media.githubusercontent.com/media/JelenaBanjac/protein-reconstruction/master/data/5j0n.mrc",
            "https://raw.githubusercontent.com/JelenaBanjac/protein-reconstruction/master/data/5j0n.mrc",
        ),
        description=(
            "The paper's density map of PDB 5j0n (lambda integrase Holliday-junction complex), "
            "Chimera molmap by the authors; 75 x 57 x 69 (x, y, z) voxels of 3.6667 A"
        ),
        voxel_size=11.0 / 3.0,
    ),
    DataFile(
        name="70s-ribosome",
        filename="70s-ribosome.mrc",
        sha256="f9de03dd206be3bace4b1aa44feb72c052949f73d419d73bc99ff6b5c8f3256b",
        urls=_github_raw(
            "ComputationalCryoEM/ASPIRE-Python",
            ("main", "develop"),
            "gallery/tutorials/data/clean70SRibosome_vol_65p.mrc",
        ),
        description=(
            "Clean 70S ribosome map downsampled to 65^3 (ASPIRE-Python tutorials, GPL-3.0); "
            "header voxel size 0, i.e. unknown"
        ),
        voxel_size=None,
    ),
    DataFile(
        name="hand",
        filename="hand.mrc",
        sha256="ff89e48b437d04d5c77412ad9532fb0d56178e3ebbc2747cdbf538b29b7fba7e",
        urls=_github_raw("ml-struct-bio/cryodrgn", ("main", "master"), "tests/data/hand-vol.mrc"),
        description=(
            "Synthetic, strongly asymmetric 'hand' volume from cryoDRGN's tests (GPL-3.0); 64^3 voxels of 1 A"
        ),
        voxel_size=1.0,
    ),
    DataFile(
        name="relion31-star",
        filename="relion31.star",
        sha256="3dac86f57bd1390483c47f88d6b5c612ad4209b8bc80bd35a589fb1df0ad20f2",
        urls=_github_raw("ml-struct-bio/cryodrgn", ("main", "master"), "tests/data/relion31.star"),
        description="A RELION 3.1 particle STAR file (optics + particles tables) from cryoDRGN",
    ),
    DataFile(
        name="5a1a",
        filename="5a1a.cif.gz",
        # No pinned checksum exists for this file (the PDB archive re-issues entries when it is
        # remediated), so it is trusted on first use; see DataFile.sha256. The paper's map is a
        # 1 A Chimera molmap (110 x 155 x 199) of unstated resolution; 3 A is our choice: coarser
        # than the 2 A Nyquist limit of a 1 A grid, so not aliased, and fine enough to keep
        # secondary-structure detail.
        sha256=None,
        urls=("https://files.rcsb.org/download/5A1A.cif.gz",),
        description=(
            "Atomic model of beta-galactosidase (PDB 5a1a). load() makes its map at 1 A voxels "
            "and 3 A resolution (the paper used a 1 A Chimera molmap of unstated resolution); "
            "checksum not pinned: trusted on first download"
        ),
        voxel_size=1.0,
        resolution=3.0,
    ),
)

#: Named input files, by :attr:`DataFile.name`.
REGISTRY: dict[str, DataFile] = {entry.name: entry for entry in _ENTRIES}


def available() -> dict[str, str]:
    """Names in :data:`REGISTRY` with their descriptions.

    Returns
    -------
    names : dict of str to str
        ``{name: description}``, in registry order.
    """
    return {name: entry.description for name, entry in REGISTRY.items()}


def _resolve(name_or_datafile) -> DataFile:
    if isinstance(name_or_datafile, DataFile):
        return name_or_datafile
    if isinstance(name_or_datafile, str):
        try:
            return REGISTRY[name_or_datafile]
        except KeyError:
            raise InputError(
                f"unknown data name {name_or_datafile!r}; known names: {', '.join(REGISTRY)} (or pass a DataFile)"
            ) from None
    raise InputTypeError(f"expected a registry name (str) or a DataFile, got {type(name_or_datafile).__name__}")


def _cache_dir(cache_dir) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _read_sidecar(sidecar: Path) -> str | None:
    if not sidecar.is_file():
        return None
    text = sidecar.read_text(encoding="ascii", errors="replace").split()
    sha = text[0].lower() if text else ""
    if not _SHA256_RE.match(sha):
        raise DataError(
            f"checksum sidecar {sidecar} does not hold a sha256 (got {sha[:80]!r}); delete it and "
            "fetch again to record a new one"
        )
    return sha


def _temp_path(path: Path) -> Path:
    """A fresh hidden name next to ``path``, so that os.replace onto ``path`` is atomic."""
    # named like artifacts.temporary_path (.<name>.<pid>.<random>.tmp), so the next run sweeps
    # the partial download of a killed process
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _open_temp(path: Path, mode: str = "xb"):
    # used for downloads, whose temp file is renamed only once its checksum verifies
    # "x" never clobbers a concurrent writer's temp file; unlike tempfile.mkstemp (mode 0600)
    # the result gets the permissions the user's umask gives any other file
    sweep_stale_temporaries(path.parent)  # the partial downloads of killed processes
    while True:
        tmp = _temp_path(path)
        try:
            return tmp, open(tmp, mode)
        except FileExistsError:
            continue


def _record_first_use(datafile: DataFile, target: Path, sha: str, source: str) -> None:
    sidecar = _sidecar(target)
    # sha256sum's format, so `sha256sum -c` can check the cache by hand
    save_text(f"{sha}  {target.name}\n", sidecar)
    warnings.warn(
        f"{datafile.filename} ({datafile.name!r}) has no pinned checksum; trusting the copy from "
        f"{source} on first use and recording its sha256 {sha} in {sidecar}. Later copies must "
        "match it; delete the sidecar to accept a new version.",
        UserWarning,
        stacklevel=3,
    )


def _stream_to_temp(src, cache: Path, filename: str, total, progress: bool) -> tuple[Path, str]:
    """Copy binary file object ``src`` to a temporary file in ``cache``; return it and sha256."""
    digest = hashlib.sha256()
    tmp, out = _open_temp(cache / filename)
    try:
        with (
            out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=filename,
                disable=not progress,
            ) as bar,
        ):
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_LFS_POINTER_PREFIX)) == _LFS_POINTER_PREFIX


def _mirror_dir(mirror) -> Path | None:
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    return None if mirror is None else Path(mirror).expanduser()


def _fetch(datafile: DataFile, cache_dir, mirror, progress: bool, timeout: float):
    cache = _cache_dir(cache_dir)
    target = cache / datafile.filename
    sidecar = _sidecar(target)
    expected = datafile.sha256 or _read_sidecar(sidecar)

    if target.is_file():
        actual = _sha256_file(target)
        if expected is None:
            # a file put there by hand, before any sidecar existed: that is its first use
            _record_first_use(datafile, target, actual, str(target))
            return target, actual
        if actual == expected:
            return target, actual
        warnings.warn(
            f"cached {target} has sha256 {actual}, expected {expected}; deleting it and fetching "
            f"{datafile.filename} again",
            UserWarning,
            stacklevel=3,
        )
        target.unlink()

    attempts: list[str] = []
    mismatch = False

    def sources():
        mirror_dir = _mirror_dir(mirror)
        if mirror_dir is None:
            attempts.append(f"mirror: none ({MIRROR_ENV} is not set and no mirror= was given)")
        elif not mirror_dir.is_dir():
            attempts.append(f"mirror {mirror_dir}: not a directory")
        elif not (mirror_dir / datafile.filename).is_file():
            attempts.append(f"mirror {mirror_dir}: holds no file named {datafile.filename}")
        else:
            path = mirror_dir / datafile.filename
            # a local copy is quick: no progress bar
            yield str(path), lambda: (open(path, "rb"), path.stat().st_size, False)
        for url in datafile.urls:

            def open_url(url=url):
                request = urllib.request.Request(url, headers={"User-Agent": "cryo_orient"})
                response = urllib.request.urlopen(request, timeout=timeout)
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                return response, total, progress

            yield url, open_url

    for source, opener in sources():
        try:
            src, total, show = opener()
            with src:
                tmp, actual = _stream_to_temp(src, cache, datafile.filename, total, show)
        except (OSError, http.client.HTTPException, ValueError) as err:
            # OSError covers URLError, HTTPError and timeouts; ValueError a malformed URL
            attempts.append(f"{source}: {err}")
            continue
        try:
            if expected is not None and actual != expected:
                hint = " (it is a Git LFS pointer, not the file itself)" if _is_lfs_pointer(tmp) else ""
                tmp.unlink()
                mismatch = True
                attempts.append(
                    f"{source}: checksum mismatch, expected sha256 {expected}, got {actual}{hint}; discarded"
                )
                # not silent even if a later source succeeds: a bad mirror or URL needs fixing
                warnings.warn(
                    f"discarded {datafile.filename} from {source}: sha256 {actual} does not match "
                    f"the expected {expected}{hint}",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if expected is None:
            _record_first_use(datafile, target, actual, source)
        return target, actual

    lines = [f"could not fetch {datafile.filename} ({datafile.name!r}); tried:"]
    lines += [f"  - {a}" for a in attempts]
    if not datafile.urls:
        lines.append("  - (no download URLs are registered for it)")
    if mismatch:
        if datafile.sha256 is None:
            lines.append(
                f"A source served a file that differs from the sha256 recorded on first use in "
                f"{sidecar}. If the upstream file changed legitimately, delete that sidecar."
            )
        else:
            lines.append(
                "A source served a file with the wrong sha256: it may be truncated or corrupt, or "
                "the upstream file changed (update the registry checksum only after checking the "
                "new file)."
            )
    checksum = f" (sha256 {expected})" if expected else ""
    lines.append(
        f"To fix: set {MIRROR_ENV}=/path/to/dir (or pass mirror=...) to a directory holding "
        f"{datafile.filename}{checksum}, or download it by hand into {target.resolve()}."
    )
    raise DataError("\n".join(lines))


def fetch(name_or_datafile, cache_dir=None, mirror=None, progress=True, timeout=DEFAULT_TIMEOUT) -> Path:
    """Return the path of a verified local copy of a registered file.

    Parameters
    ----------
    name_or_datafile : str or DataFile
        A key of :data:`REGISTRY`, or a :class:`DataFile`.
    cache_dir : str or path-like, optional
        Where verified files are kept. Default: the environment variable ``CRYO_ORIENT_DATA_DIR``,
        else ``data/`` relative to the current working directory. Created if missing.
    mirror : str or path-like, optional
        A directory holding files by their registry file names, used before downloading (for
        offline machines). Default: the environment variable ``DATA_MIRROR``.
    progress : bool, optional
        Show a download progress bar.
    timeout : float, optional
        Seconds to wait for a connection or for each read before trying the next URL.

    Returns
    -------
    path : pathlib.Path
        ``cache_dir / datafile.filename``; its sha256 has been checked.

    Raises
    ------
    DataError
        If no source yields a file with the right checksum. The message lists every source tried
        and why it failed; no file (temporary or final) is left in the cache.

    Notes
    -----
    A cached file with a wrong checksum is deleted and fetched again, with a warning. A source
    that serves a file with the wrong checksum is skipped with a warning.

    For an entry whose ``sha256`` is ``None`` (not pinned, e.g. ``"5a1a"``), the first copy
    obtained is trusted: its sha256 is written to ``<filename>.sha256`` next to it in the cache,
    with a warning, and every later copy must match that record. This protects against silent
    changes after first use, not against a bad first download.
    """
    datafile = _resolve(name_or_datafile)
    path, _ = _fetch(datafile, cache_dir, mirror, progress, timeout)
    return path


def _built_map_name(datafile: DataFile, sha: str) -> str:
    # the model's checksum is in the name so that a different model never reuses a stale map
    voxel, resolution = datafile.voxel_size, datafile.resolution
    return f"{datafile.name}_voxel{voxel:g}A_res{resolution:g}A_{sha[:12]}.mrc"


def load(name_or_datafile, cache_dir=None, mirror=None, progress=True):
    """Density map of a registered entry.

    Parameters
    ----------
    name_or_datafile : str or DataFile
        A key of :data:`REGISTRY` (see :func:`available`), or a :class:`DataFile`.
    cache_dir, mirror, progress
        As for :func:`fetch`.

    Returns
    -------
    volume : ndarray of float32, shape (nz, ny, nx)
        Indexed ``[z, y, x]``.
    voxel_size : float
        In Å.

    Raises
    ------
    ValueError
        If the entry is neither a map nor an atomic model (e.g. a STAR file), or is an atomic model
        without ``voxel_size`` and ``resolution``.
    DataError
        As for :func:`fetch`, :func:`load_volume` and :func:`density_from_model`.

    Notes
    -----
    A map entry is read with :func:`load_volume`. For an atomic-model entry (``"5a1a"``) the map
    is built with :func:`density_from_model` at the entry's ``voxel_size`` and ``resolution`` and
    cached in the cache directory as ``<name>_voxel<v>A_res<r>A_<model sha256[:12]>.mrc`` (header
    origin = the box origin); later calls read that file.
    """
    datafile = _resolve(name_or_datafile)
    if datafile.kind == "map":
        return load_volume(fetch(datafile, cache_dir, mirror, progress))
    if datafile.kind != "model":
        raise InputError(
            f"{datafile.name!r} ({datafile.filename}) is neither a density map nor an atomic "
            f"model; use fetch({datafile.name!r}) to get its path"
        )
    if datafile.voxel_size is None or datafile.resolution is None:
        raise InputError(
            f"atomic-model entry {datafile.name!r} needs voxel_size and resolution to build its "
            "map; set them in its DataFile, or call density_from_model(fetch(...), ...) yourself"
        )

    model_path, sha = _fetch(datafile, cache_dir, mirror, progress, DEFAULT_TIMEOUT)
    built = model_path.with_name(_built_map_name(datafile, sha))
    if built.is_file():
        try:
            return load_volume(built)
        except DataError as err:
            warnings.warn(f"rebuilding {built}: {err}", UserWarning, stacklevel=2)
    volume, voxel_size, origin = density_from_model(
        model_path, datafile.voxel_size, datafile.resolution, return_origin=True
    )
    write_volume(built, volume, voxel_size, origin=origin)
    return volume, voxel_size


def map_file(name_or_datafile, cache_dir=None, mirror=None, progress=True) -> Path:
    """Path of the MRC file that :func:`load` reads for an entry (its header has the origin).

    A map entry's verified download; for an atomic-model entry, the map built from it (built
    now if it is not cached yet).
    """
    datafile = _resolve(name_or_datafile)
    if datafile.kind == "map":
        return fetch(datafile, cache_dir, mirror, progress)
    load(datafile, cache_dir, mirror, progress)  # builds and caches the map, or raises why not
    model_path, sha = _fetch(datafile, cache_dir, mirror, progress, DEFAULT_TIMEOUT)
    return model_path.with_name(_built_map_name(datafile, sha))
