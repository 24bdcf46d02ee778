"""The package's error types and the checks every public function applies to its arguments.

The lowest layer of the package: it imports nothing of ours, and every other module raises the
errors defined here (through the checks below or directly).

Error types
-----------
:class:`CryoOrientError`
    Base of every error the package raises on purpose; the command line prints it as one line.
:class:`InputError`
    A bad argument or input file: the caller can fix it. It is a :class:`ValueError`, so
    ``except ValueError`` keeps working.
:class:`InputTypeError`
    An argument of the wrong type (also a :class:`TypeError`).
:class:`UnavailableError`
    Something this machine lacks, e.g. a CUDA GPU for the ASTRA backend; a :class:`RuntimeError`.
:class:`DataError`
    A data file that cannot be obtained or used as it is (wrong checksum, unreadable content); a
    :class:`RuntimeError`.
:class:`ResourceError`
    Not enough memory (or another resource of this machine) for what was asked, found before
    starting (:func:`check_memory`); a :class:`MemoryError`.
:class:`RunError`
    A failure while running (a training that diverged, ...); a :class:`RuntimeError`.

Checks
------
Each takes the value and the name the caller knows it by, returns the value coerced to the type
it names (a new object: inputs are never modified), and raises :class:`InputError` (or
:class:`InputTypeError`) with a message that names the argument, what it must be and what it got.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
from collections.abc import Mapping

import numpy as np

__all__ = [
    "CryoOrientError",
    "DataError",
    "InputError",
    "InputIndexError",
    "InputTypeError",
    "MissingInputError",
    "ResourceError",
    "RunError",
    "Settings",
    "UnavailableError",
    "as_rng",
    "check_memory",
    "memory_limit",
    "choice",
    "finite",
    "float_array",
    "image_stack",
    "index_pairs",
    "integer",
    "positive",
    "positive_int",
    "real",
]


class CryoOrientError(Exception):
    """Base of the errors the package raises on purpose."""


class InputError(CryoOrientError, ValueError):
    """A bad argument or input: its message says what was wrong and how to fix it."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file (or folder) that is not there."""


class InputIndexError(InputError, IndexError):
    """An index outside the range it indexes."""


class UnavailableError(CryoOrientError, RuntimeError):
    """Something this machine lacks (e.g. a CUDA GPU for the ASTRA backend)."""


class DataError(CryoOrientError, RuntimeError):
    """A data file that cannot be obtained or used (unobtainable, wrong checksum, unusable content)."""


class ResourceError(CryoOrientError, MemoryError):
    """Not enough memory (or another resource) for the operation asked, found before it starts."""


class RunError(CryoOrientError, RuntimeError):
    """A failure at run time that no input check could foresee (e.g. a training that diverged)."""


#: Environment variable that caps the memory an operation may plan to use, in bytes (or with a
#: unit: ``"2GiB"``); without it the cap is the memory the system says is available.
MEMORY_LIMIT_ENV = "CRYO_ORIENT_MEMORY_LIMIT"
_UNITS = {"": 1, "B": 1, "K": 2**10, "KIB": 2**10, "M": 2**20, "MIB": 2**20, "G": 2**30, "GIB": 2**30, "T": 2**40}


def memory_limit() -> int:
    """The bytes an operation may plan to allocate: ``$CRYO_ORIENT_MEMORY_LIMIT`` if set, else
    ``MemAvailable`` of /proc/meminfo (else physical memory, else 8 GiB)."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        number = text.rstrip("kKmMgGtTiIbB")
        unit = text[len(number) :].strip().upper()
        try:
            return int(float(number) * _UNITS[unit])
        except (ValueError, KeyError):
            raise InputError(
                f"${MEMORY_LIMIT_ENV} must be a number of bytes, optionally with a unit (e.g. 4GiB); got {text!r}"
            ) from None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(needed: float, what: str, fix: str) -> None:
    """Refuse with :class:`ResourceError` if ``needed`` bytes exceed :func:`memory_limit`: the
    message gives both figures, what needed them and ``fix`` (how to ask for less)."""
    limit = memory_limit()
    if needed > limit:
        raise ResourceError(
            f"{what} needs about {_format_bytes(needed)} of memory but {_format_bytes(limit)} is available "
            f"(limit: ${MEMORY_LIMIT_ENV} or the system's available memory); {fix}"
        )


class Settings:
    """Mixin of the settings dataclasses (simulation, training, pipeline): built from a plain
    mapping, such as a profile's table, in which an unknown key is an error that lists the known
    ones; written back as a plain dict."""

    #: How an error names the unknown keys and the known ones.
    _unknown_keys = "setting(s)"
    _known_keys = "settings"

    @classmethod
    def from_dict(cls, values):
        """Build from a mapping; unknown keys are an :class:`InputError`."""
        if not isinstance(values, Mapping):
            raise InputTypeError(f"{cls.__name__} needs a table of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown {cls._unknown_keys} {unknown}; known {cls._known_keys} are {sorted(known)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in values
        ]
        if required:
            raise InputError(f"{cls.__name__} needs the setting(s) {required}; add them (e.g. --set {required[0]}=...)")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def as_rng(rng) -> np.random.Generator:
    """Return ``rng`` if it is a :class:`numpy.random.Generator`, else ``default_rng(rng)``.

    The one coercion for every function that takes ``rng=``: a Generator, an integer seed (or a
    sequence of them), or None.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"rng must be a numpy.random.Generator, an integer seed, or None; got {type(rng).__name__}: {exc}"
        ) from None


def choice(value, name: str, choices):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def integer(value, name: str, minimum: int | None = None) -> int:
    """An integer (not a bool: ``True`` would silently mean 1), at least ``minimum`` if given."""
    need = "an integer" if minimum is None else ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise InputTypeError(f"{name} must be {need}; got {value!r}") from None
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be {need}; got {value}")
    return value


def positive_int(value, name: str) -> int:
    """An integer ≥ 1."""
    return integer(value, name, 1)


def real(value, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number (not a bool), ``≥ minimum`` (``> minimum`` with ``strict``) if given."""
    if minimum is None:
        need = "a finite number"
    elif minimum == 0 and strict:
        need = "a positive finite number"
    else:
        need = f"finite and {'>' if strict else '>='} {minimum:g}"
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        try:
            if isinstance(value, (bool, str, bytes)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise InputTypeError(f"{name} must be a real number ({need}); got {value!r}") from None
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and (value < minimum or (strict and value == minimum))):
        raise InputError(f"{name} must be {need}; got {value}")
    return value


def finite(value, name: str) -> float:
    """A finite real number."""
    return real(value, name)


def positive(value, name: str) -> float:
    """A finite number > 0."""
    return real(value, name, minimum=0.0, strict=True)


def index_pairs(i, j, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``i`` and ``j`` of equal shape within ``[0, n)``, as intp arrays."""
    i = np.asarray(i)
    j = np.asarray(j)
    if i.shape != j.shape:
        raise InputError(f"index arrays i and j must have the same shape; got {i.shape} and {j.shape}.")
    for name, a in (("i", i), ("j", j)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise InputTypeError(f"{name} must be an array of integer indices; got dtype {a.dtype}.")
        if a.size and (a.min() < 0 or a.max() >= n):
            raise InputIndexError(f"{name} has indices outside [0, {n}): min {a.min()}, max {a.max()}.")
    return i.astype(np.intp, copy=False), j.astype(np.intp, copy=False)


def float_array(a, name: str, what: str) -> np.ndarray:
    """``a`` as a float64 array (a copy only where a conversion needs one); ``what`` says what it
    must be, for the message when it is not an array of real numbers."""
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"{name} must be {what}; got {type(a).__name__}: {exc}") from None


def image_stack(
    images, name: str = "images", *, square: bool = False, finite: bool = True, empty: bool = False
) -> np.ndarray:
    """``images`` as an array of shape (N, ny, nx) of real numbers (not copied): non-empty unless
    ``empty``, square images with ``square``, no NaN or infinity with ``finite``."""
    a = np.asarray(images)
    if a.ndim != 3:
        hint = "; use images[None] for a single image" if a.ndim == 2 else ""
        raise InputError(f"{name} must be a 3-D array (N, ny, nx) of 2-D images, got shape {a.shape}{hint}")
    if a.size == 0 and not empty:
        raise InputError(f"{name} is empty (shape {a.shape})")
    if square and a.shape[1] != a.shape[2]:
        raise InputError(f"{name} must be square images, got {a.shape[1]} x {a.shape[2]}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputTypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if finite:
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise InputError(f"{name} hold {bad} NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    return a
