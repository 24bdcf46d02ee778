"""One coercion for every function that takes ``rng=``: a Generator, an integer seed, or None."""

import numpy as np


def as_rng(rng) -> np.random.Generator:
    """Return ``rng`` if it is a :class:`numpy.random.Generator`, else ``default_rng(rng)``."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "rng must be a numpy.random.Generator, an integer seed, or None; "
            f"got {type(rng).__name__}: {exc}"
        ) from None
