"""Inputs: named public files (:mod:`.registry`), MRC maps (:mod:`.mrc`), maps from atomic models
(:mod:`.models`), particle datasets (:mod:`.dataset`), particle stacks of other programs
(:mod:`.particles`), RELION STAR files (:mod:`.relion`) and the paper's train / validation / test
split (:mod:`.splits`).

The names most callers need are importable from here: ``data.fetch``, ``data.load``,
``data.load_volume``, ``data.write_volume``, ``data.REGISTRY``, ``data.read_dataset``.
"""

from cryo_orient.data.dataset import Dataset, read_dataset
from cryo_orient.data.models import density_from_model
from cryo_orient.data.mrc import load_volume, write_volume
from cryo_orient.data.particles import read_particles
from cryo_orient.data.registry import (
    CACHE_ENV,
    MIRROR_ENV,
    REGISTRY,
    DataFile,
    available,
    fetch,
    load,
    map_file,
)
from cryo_orient.validation import DataError

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "REGISTRY",
    "DataError",
    "Dataset",
    "DataFile",
    "available",
    "density_from_model",
    "fetch",
    "load",
    "load_volume",
    "map_file",
    "read_dataset",
    "read_particles",
    "write_volume",
]
