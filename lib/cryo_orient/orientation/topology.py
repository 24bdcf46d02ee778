"""Is a recovered configuration "unwound"? A check of its topology that needs no ground truth.

Why it can be
-------------
Particles land on the grid at every in-plane angle, so the true orientations contain full
in-plane loops ``Rz(α) R, α ∈ [0, 2π)``. Such a loop is not contractible in SO(3): followed
continuously on the unit quaternions it ends at ``-q``, never back at ``+q``. The paper's head
``d = 2 arccos cos(f_i, f_j)`` cannot represent the geodesic distance along such a loop (see
:mod:`cryo_orient.estimation.siamese`); on restricted coverage its errors favour a configuration
whose loops close at ``+q`` (an "unwound" one), which fits Eq. 4 *better* than the truth, so a
good optimiser finds it (measured: ribosome "quarter" coverage, E_OR median 0.73–0.81 rad).

The check
---------
A configuration is unwound exactly when its quaternions admit a continuous choice of sign (a
lift from SO(3) to the unit sphere S³) over the configuration: every loop then closes at ``+q``.
:func:`check_topology` builds the symmetric k-nearest-neighbour graph of the orientations (by
geodesic distance), fixes the signs along a minimum spanning tree (each quaternion takes the sign
that makes its dot product with its tree parent positive), and counts the graph edges left
*frustrated* (negative dot product after the signs are fixed). The count is invariant under the
gauge of Eq. 4 (left and right multiplication, inversion), since it depends only on ``|⟨qᵢ, qⱼ⟩|``
and the signs of the dot products.

* Orientations with full in-plane loops cannot be lifted: the tree must cut every loop, and the
  edges across the cut stay frustrated. Measured at k = 8 on 1,000 orientations: 2.2 % (the
  "quarter" set), 3.1 % ("half"), 8 % (full SO(3)); the cpu profile's recovered 5j0n
  configurations: 2.4 % and 6.0 %.
* An unwound configuration lifts: 0.0 % (the two failed ribosome "quarter" recoveries of the
  cpu profile, and the unwound minima of the paper's head fitted without a CNN).

A fraction below :data:`UNWOUND_FRACTION` is reported as likely unwound. The check says nothing
about particles whose in-plane angles are truly restricted (rare), and it needs enough
orientations for the neighbour graph to close the loops (:data:`MIN_ORIENTATIONS`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from cryo_orient import validation
from cryo_orient.geometry import rotations

__all__ = ["MIN_ORIENTATIONS", "UNWOUND_FRACTION", "TopologyCheck", "check_topology", "warn_if_unwound"]

#: Below this fraction of frustrated neighbour edges, a configuration is reported as unwound.
UNWOUND_FRACTION = 0.002
#: Fewer orientations than this: the neighbour graph is too sparse to close the loops; no verdict.
MIN_ORIENTATIONS = 200
#: At most this many orientations enter the graph (an evenly strided subset of larger sets).
MAX_ORIENTATIONS = 4000


@dataclasses.dataclass(frozen=True)
class TopologyCheck:
    """Result of :func:`check_topology`.

    Attributes
    ----------
    frustrated_fraction : float
        Fraction of the k-nearest-neighbour edges whose quaternion dot product stays negative
        after the signs are fixed along a spanning tree (0 for a configuration that lifts to S³).
    n_edges : int
        Edges of the (symmetric) neighbour graph.
    n_orientations : int
        Orientations in the graph (at most :data:`MAX_ORIENTATIONS`).
    k : int
        Neighbours per orientation.
    unwound : bool or None
        True when ``frustrated_fraction < UNWOUND_FRACTION`` (likely unwound); None when there
        are too few orientations for a verdict.
    """

    frustrated_fraction: float
    n_edges: int
    n_orientations: int
    k: int
    unwound: bool | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def message(self) -> str:
        """One line for logs and warnings."""
        share = f"{100 * self.frustrated_fraction:.2f} % of {self.n_edges} neighbour edges frustrated"
        if self.unwound is None:
            return f"topology: {share}; too few orientations ({self.n_orientations}) for a verdict"
        if self.unwound:
            return (
                f"topology: the recovered orientations are likely unwound ({share}; particles with every in-plane "
                "angle give 2-8 %): their in-plane loops close at +q, which the truth cannot do. The estimated "
                "distances fit a wrong configuration; recover with the squared head (feature_distance = "
                "'squared_cosine') or from an Euler-box start (init='uniform_euler')"
            )
        return f"topology: {share}, as orientations with full in-plane loops show; not unwound"


def _neighbour_graph(q, k):
    """Symmetric k-NN graph weighted by geodesic distance (a small floor keeps zero distances)."""
    n = len(q)
    rows, cols, weights = [], [], []
    block = max(1, 2**22 // n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        dots = np.abs(q[start:stop] @ q.T)
        dots[np.arange(stop - start), np.arange(start, stop)] = -1.0  # not one's own neighbour
        nearest = np.argpartition(-dots, k - 1, axis=1)[:, :k]
        rows.append(np.repeat(np.arange(start, stop), k))
        cols.append(nearest.ravel())
        weights.append(2.0 * np.arccos(np.clip(np.take_along_axis(dots, nearest, axis=1).ravel(), 0.0, 1.0)))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    w = np.concatenate(weights) + 1e-9
    graph = scipy.sparse.coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    return graph.maximum(graph.T)


def check_topology(quaternions, *, k=8) -> TopologyCheck:
    """Whether recovered orientations lift to S³ (are "unwound"), from their geometry alone.

    Parameters
    ----------
    quaternions : array_like, shape (n, 4)
        Orientations, e.g. from :func:`cryo_orient.orientation.recovery.recover`, in any gauge.
        Not modified.
    k : int, optional
        Neighbours per orientation in the graph (the measurements of the module docstring use 8).

    Returns
    -------
    TopologyCheck
    """
    q = rotations.as_unit_quaternions(quaternions, "quaternions")
    if q.ndim != 2:
        raise validation.InputError(f"quaternions must be an (n, 4) array, got shape {q.shape}")
    k = validation.positive_int(k, "k")
    n_all = len(q)
    if n_all > MAX_ORIENTATIONS:
        q = q[np.linspace(0, n_all - 1, MAX_ORIENTATIONS).round().astype(int)]
    n = len(q)
    if n <= k:
        return TopologyCheck(0.0, 0, n, k, None)
    graph = _neighbour_graph(q, k)
    tree = scipy.sparse.csgraph.minimum_spanning_tree(graph)
    tree = tree + tree.T
    sign = np.zeros(n)
    for root in range(n):
        if sign[root]:
            continue
        order, parent = scipy.sparse.csgraph.breadth_first_order(tree, root, directed=False)
        sign[root] = 1.0
        for v in order[1:]:  # parents come before their children in breadth-first order
            sign[v] = sign[parent[v]] * (1.0 if q[v] @ q[parent[v]] >= 0 else -1.0)
    edges = scipy.sparse.triu(graph, k=1).tocoo()
    dots = np.einsum("ij,ij->i", q[edges.row], q[edges.col]) * sign[edges.row] * sign[edges.col]
    fraction = float(np.mean(dots < 0)) if len(dots) else 0.0
    unwound = None if n < MIN_ORIENTATIONS else fraction < UNWOUND_FRACTION
    return TopologyCheck(fraction, int(len(dots)), n, k, unwound)


def warn_if_unwound(check: TopologyCheck, *, stacklevel=2) -> TopologyCheck:
    """Issue a :class:`UserWarning` with ``check.message`` when the configuration is likely unwound."""
    if check.unwound:
        warnings.warn(check.message, stacklevel=stacklevel + 1)
    return check
