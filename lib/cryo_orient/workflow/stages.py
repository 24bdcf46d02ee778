"""Stages: named, cached steps of the pipeline, run in order through one helper.

A :class:`Stage` has a name, the names of the context entries it reads (``inputs``), a function
of the context that computes its result (``compute``), and, for a stage worth caching, a function
of the context that gives the parts of its cache key (``key``). :func:`run_stages` runs a list
of them in order: each result is stored in the context under the stage's name (and its key
under ``context["keys"][name]``), so the stages after it can read it.

A context entry given by the caller stands in for the stage of that name, which is then not run
(e.g. ``{"test": dataset.split("all")}`` recovers every image instead of the test split).

A cached stage's result is a dict of arrays, stored as ``<prefix>-<digest of the key>.npz`` in
the cache folder (:class:`StageCache`): a rerun with the same inputs loads it, a changed input
recomputes it and what depends on it (whose keys include it). A truncated or corrupt entry is
recomputed. Stages without a key either are cheap or cache themselves (the Siamese estimator
keeps a resumable run folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from cryo_orient.artifacts import atomic_output, file_lock, jsonable

__all__ = ["Stage", "StageCache", "digest", "run_stages"]


def digest(*parts) -> str:
    """A 20-hex-digit key of ``parts``: arrays by dtype, shape and bytes, the rest as sorted JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
            h.update(str((part.dtype, part.shape)).encode())
        else:
            h.update(json.dumps(jsonable(part), sort_keys=True).encode())
    return h.hexdigest()[:20]


def _given_key(name: str, value) -> str:
    if isinstance(value, Mapping):
        return digest("given", name, *[part for k in sorted(value) for part in (k, np.asarray(value[k]))])
    return digest("given", name, np.asarray(value))


class StageCache:
    """A folder of cached stage results, one ``.npz`` per result."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def path(self, prefix: str, key: str) -> Path:
        return self.directory / f"{prefix}-{key}.npz"

    def arrays(self, prefix: str, key: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict:
        """Load ``<prefix>-<key>.npz`` if it is there and readable, else store what ``compute()`` returns."""
        path = self.path(prefix, key)
        value = self._load(path)
        if value is not None:
            return value
        # Two runs that need the same stage compute it once: the second waits, then loads it.
        with file_lock(path):
            value = self._load(path)
            if value is not None:
                return value
            value = dict(compute())
            with atomic_output(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **value)
        return value

    @staticmethod
    def _load(path: Path) -> dict | None:
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    return {k: f[k] for k in f.files}
            except (OSError, ValueError, zipfile.BadZipFile, EOFError):
                pass  # a corrupt (e.g. truncated) entry is recomputed
        return None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes
    ----------
    name : str
        Where its result goes in the context.
    inputs : tuple of str
        The context entries it reads (checked before it runs).
    compute : callable
        ``compute(context) -> result``; a dict of arrays for a cached stage.
    key : callable, optional
        ``key(context) -> tuple`` of the parts of its cache key (see :func:`digest`); None for a
        stage that is not cached here.
    prefix : str, optional
        The cache file's prefix (default: ``name``).
    log : callable, optional
        ``log(context, result) -> str``: one line said when the stage has run.
    """

    name: str
    inputs: tuple[str, ...]
    compute: Callable[[dict], object]
    key: Callable[[dict], tuple] | None = None
    prefix: str | None = None
    log: Callable[[dict, object], str] | None = None


def run_stages(stages, context: Mapping, cache: StageCache, *, log=print) -> dict:
    """Run ``stages`` in order on a copy of ``context``; returns the context with every result."""
    ctx = dict(context)
    ctx.setdefault("keys", {})
    for stage in stages:
        if stage.name in context:
            # Given by the caller; a keyed stage's key then digests the given value, so that the
            # stages keyed after it still have one.
            if stage.key is not None and stage.name not in ctx["keys"]:
                ctx["keys"][stage.name] = _given_key(stage.name, context[stage.name])
            continue
        missing = [name for name in stage.inputs if name not in ctx]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} needs {missing}, which no earlier stage or input provides")
        if stage.key is None:
            result = stage.compute(ctx)
        else:
            key = digest(*stage.key(ctx))
            ctx["keys"][stage.name] = key
            result = cache.arrays(stage.prefix or stage.name, key, lambda stage=stage: stage.compute(ctx))
        ctx[stage.name] = result
        if stage.log is not None and log is not None:
            log(stage.log(ctx, result))
    return ctx
