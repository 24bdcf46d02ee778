"""Train/validation/test split of the projections, and the number of pairs each set uses.

The paper (Table 1) splits P = 5,000 projections with scikit-learn's ``train_test_split``: 33 % for
test (``random_state=42``), then 25 % of the rest for validation (``random_state=1``), giving
2,512 / 838 / 1,650. Training and validation use 1 % of all ordered pairs ``int(0.01 |set|^2)``,
drawn with replacement; the test set uses all of its |set|^2 pairs.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from cryo_orient.validation import InputError

PAPER_TEST_SIZE = 0.33
PAPER_VAL_SIZE = 0.25
PAPER_SEEDS = (42, 1)
PAPER_PAIR_FRACTION = 0.01


def train_val_test_split(n, test_size=PAPER_TEST_SIZE, val_size=PAPER_VAL_SIZE, seeds=PAPER_SEEDS):
    """Indices of the training, validation and test projections (the paper's procedure).

    Parameters
    ----------
    n : int
        Number of projections.
    test_size : float
        Fraction of all projections held out for testing.
    val_size : float
        Fraction of the remaining projections used for validation.
    seeds : (int, int)
        ``random_state`` of the two scikit-learn splits.

    Returns
    -------
    train, val, test : ndarray of int
        Disjoint index arrays covering ``range(n)``, in scikit-learn's (shuffled) order.
    """
    if not isinstance(n, (int, np.integer)) or n < 3:
        raise InputError(f"need at least 3 projections to split three ways, got n={n!r}")
    for name, frac in (("test_size", test_size), ("val_size", val_size)):
        if not 0 < frac < 1:
            raise InputError(f"{name} must be a fraction in (0, 1), got {frac!r}")
    index = np.arange(n)
    rest, test = train_test_split(index, test_size=test_size, random_state=seeds[0])
    train, val = train_test_split(rest, test_size=val_size, random_state=seeds[1])
    return train, val, test


def pair_count(set_size, fraction=PAPER_PAIR_FRACTION) -> int:
    """Pairs used for a set: ``int(fraction * set_size**2)`` (all ordered pairs for fraction 1)."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    return int(fraction * set_size**2)
