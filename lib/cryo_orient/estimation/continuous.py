"""Features that are smooth functions of the orientation, fitted to d_q with a Siamese head (no CNN).

For studying what a head can represent apart from what a CNN learns (the restricted-coverage
study: ``tests/test_topology.py``, ``experiments/coverage/cnn_free.py``): ``f = W φ(R)`` with
``φ(R)`` the monomials of the rotation matrix's entries of degree at most 2 (1 + 9 + 45 = 55 of
them; ``f = (1, vec R)/2``, which the squared head needs, is among these maps) and ``W`` fitted by
Adam on the MAE between the head's distance and d_q, as the network is trained. The true
orientations are the input, so this is an oracle for experiments, not an estimator for images.
"""

from __future__ import annotations

import numpy as np

from cryo_orient import validation
from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations

__all__ = ["fit_features", "monomials"]


def monomials(q) -> np.ndarray:
    """(n, 55): 1, the 9 entries of R and their 45 products of two (``q``: (n, 4) quaternions)."""
    r = rotations.quaternion_to_matrix(q).reshape(len(q), 9)
    i, j = np.triu_indices(9)
    return np.concatenate([np.ones((len(q), 1)), r, r[:, i] * r[:, j]], axis=1)


def fit_features(q, kind, *, n_features=32, steps=1500, batch=128, learning_rate=1e-2, seed=0):
    """A function ``q -> features`` fitted on the orientations ``q`` with the head ``kind``.

    Parameters
    ----------
    q : ndarray, shape (n, 4)
        Training orientations (unit quaternions), at least ``batch`` of them.
    kind : {"cosine", "euclidean", "squared_cosine"}
        The head (:data:`cryo_orient.estimation.siamese.FEATURE_DISTANCES`). The paper's heads get
        ReLU features, as its encoder's; the squared head linear ones, as
        :func:`cryo_orient.estimation.siamese.build_encoder` builds them.
    n_features, steps, batch, learning_rate, seed : optional
        Feature length, Adam steps, orientations per step (all their pairs enter the loss), Adam's
        learning rate, and the seed of the initial weights and the batches.

    Returns
    -------
    callable
        ``features(q_new) -> (m, n_features)`` array.
    """
    import tensorflow as tf  # noqa: PLC0415

    validation.choice(kind, "kind", siamese.FEATURE_DISTANCES)
    q = rotations.as_unit_quaternions(q, "q")
    if q.ndim != 2 or len(q) < batch:
        raise validation.InputError(f"q must be (n, 4) orientations with n >= batch = {batch}; got shape {q.shape}")
    rng = np.random.default_rng(seed)
    relu = kind not in siamese.SIGNED_FEATURE_DISTANCES
    basis = tf.constant(monomials(q), tf.float32)
    weights = tf.Variable(rng.normal(0.0, 0.3, (basis.shape[1], n_features)).astype(np.float32))
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    head = siamese._distance_ops(kind)
    rows, cols = np.triu_indices(batch, 1)

    @tf.function
    def step(index, d_q):
        with tf.GradientTape() as tape:
            f = tf.gather(basis, index) @ weights
            f = tf.nn.relu(f) if relu else f
            d_p = head(tf.gather(f, rows), tf.gather(f, cols))
            loss = tf.reduce_mean(tf.abs(d_p - d_q))
        optimizer.apply_gradients([(tape.gradient(loss, weights), weights)])
        return loss

    for _ in range(steps):
        index = rng.choice(len(q), batch, replace=False)
        step(tf.constant(index), tf.constant(rotations.distance(q[index[rows]], q[index[cols]]), tf.float32))

    def features(q_new):
        f = monomials(q_new).astype(np.float32) @ weights.numpy()
        return np.maximum(f, 0.0) if relu else f

    return features
