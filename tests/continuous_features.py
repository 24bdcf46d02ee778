"""Features that are smooth functions of the orientation, fitted to d_q with a Siamese head (no CNN).

The restricted-coverage study (issue 16) separates what the head can represent from what a CNN
learns: ``f = W φ(R)`` with ``φ(R)`` the monomials of the rotation matrix's entries of degree at
most 2 (1 + 9 + 45 = 55 of them; ``f = (1, vec R)/2`` is among these maps) and ``W`` fitted by
Adam on the MAE between the head's distance and d_q, as the network is trained.
"""

import numpy as np

from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations


def monomials(q) -> np.ndarray:
    """(n, 55): 1, the 9 entries of R and their 45 products of two."""
    r = rotations.quaternion_to_matrix(q).reshape(len(q), 9)
    i, j = np.triu_indices(9)
    return np.concatenate([np.ones((len(q), 1)), r, r[:, i] * r[:, j]], axis=1)


def fit_features(q, kind, *, n_features=32, steps=1500, batch=128, learning_rate=1e-2, seed=0):
    """A function ``q -> features`` fitted on the orientations ``q`` with the head ``kind``.

    The paper's head (``"cosine"``) gets ReLU features, as its encoder's; the squared head
    (``"squared_cosine"``) linear ones, as :func:`cryo_orient.estimation.siamese.build_encoder`
    builds them.
    """
    import tensorflow as tf  # noqa: PLC0415

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
