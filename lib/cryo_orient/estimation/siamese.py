"""The Siamese distance estimator (the paper's step i): a CNN that learns d_q from two projections.

Model
-----
An encoder G maps a projection to a feature vector f ∈ R^{n_f}; the estimated distance of two
projections is a distance of their features, ``d_p = d_f(G(p_i), G(p_j))``, with shared weights on
both branches. The encoder is the paper's (Banjac et al. 2021, §4.2 of ``shared/paper``): seven
blocks of ``Conv2D(same, ReLU) + MaxPool(2, same)`` with 32/64/128/256/256/512/n_f filters and
kernels 7/5/3/3/3/3/3, then a pooling to one vector. The paper's code pooled with
``AvgPool2D(8)`` + squeeze, which is the identity on the 1×1 map left at 116 px and fails above
~1,024 px; we use a true :class:`GlobalAveragePooling2D` (same numbers at 116 px, any size works).
At 116×116 and n_f = 512 the model has 4,551,936 parameters, as the paper reports.

Feature distances (``feature_distance``):

``"cosine"`` (the paper's)
    ``d_f = 2 arccos(cos(f_i, f_j))``, the cosine clipped to ``[ε, 1 − ε]`` (ε = 1e-7) so that the
    arccos stays differentiable; ReLU features are ≥ 0, so d_f ∈ (0, π).
``"euclidean"`` (the paper's ablation, Fig. 17a)
    ``d_f = ‖f_i − f_j‖``.
``"squared_cosine"`` (ours, beyond the paper)
    ``d_f = 2 arccos √clip(cos(f_i, f_j), ε, 1 − ε)``, with a *linear* last convolution (signed
    features). It models ``cos(f_i, f_j) = cos²(d_q/2) = (1 + tr RᵢᵀRⱼ)/4``, a positive-definite
    kernel on SO(3) that a continuous feature represents exactly (``f = (1, vec R)/2`` gives it),
    whereas the paper's head asks for ``cos(f_i, f_j) = |⟨qᵢ, qⱼ⟩|``: on a full in-plane loop
    (θ3 ∈ [0, 2π)) that kernel is ``|cos(α/2)|`` of the in-plane angle difference α, whose
    Fourier coefficients of even order are negative, so *no* feature map, continuous or not,
    represents it. The paper's head is then forced into errors at large distances (its plateau
    near d ≈ 2.6 rad), and on restricted coverage those errors favour an "unwound"
    configuration (see :mod:`cryo_orient.orientation.topology`).

Training regimes (``regime``), all on pairs *within* a split:

``"faithful"``
    the paper's code: 1 % of all ordered pairs (i, j) of the split, drawn with replacement, fixed
    for the run and shuffled every epoch; each pair runs the CNN on both images.
``"uniform"``
    the paper's text (never run by its code): the same number of pairs, rebalanced so that the
    histogram of d_q over 32 bins on [0, π] is flat.
``"batch"``
    efficient: embed a batch of B images once and train on all B(B − 1)/2 pairs of the batch,
    so the CNN runs once per image instead of twice per pair.

Validation is the same for every regime: the MAE of d_p against d_q over a fixed 1 % of the
validation split's ordered pairs, computed from the validation embeddings (one CNN pass per
image). The training loss is Keras' running mean over the epoch, as the paper's TensorBoard logs.

The module uses ``keras`` and ``keras.ops`` only, so the same code runs on the TensorFlow backend
(this project's install) and, with ``KERAS_BACKEND=jax``, on machines that have JAX but no
TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from skimage.transform import resize
from tqdm.auto import tqdm

from cryo_orient import validation
from cryo_orient.artifacts import atomic_output, ensure_folder, file_lock, jsonable, save_text, sweep_stale_temporaries
from cryo_orient.data.dataset import Dataset
from cryo_orient.estimation.base import DistanceEstimator, register
from cryo_orient.geometry import rotations
from cryo_orient.simulation.noise import Perturbation
from cryo_orient.validation import DataError, InputError, InputTypeError, MissingInputError, RunError, Settings, as_rng

__all__ = [
    "FILTERS",
    "KERNELS",
    "PAPER_PARAMETER_COUNT",
    "FEATURE_DISTANCES",
    "REGIMES",
    "LOSSES",
    "build_encoder",
    "build_model",
    "encoder_of",
    "TrainingConfig",
    "Perturbation",
    "TrainingResult",
    "train",
    "SiameseEstimator",
    "run_folder",
    "load_run",
    "embed",
    "feature_distances",
    "distance_function",
    "distance_matrix",
    "predict_pairs",
    "sample_pairs",
    "sample_uniform_distance_pairs",
    "constant_mae",
    "resize_images",
    "layer_table",
]

FILTERS = (32, 64, 128, 256, 256, 512, 512)
KERNELS = (7, 5, 3, 3, 3, 3, 3)
PAPER_PARAMETER_COUNT = 4_551_936
FEATURE_DISTANCES = ("cosine", "euclidean", "squared_cosine")
#: Heads whose features must be signed: the last convolution of their encoder is linear.
SIGNED_FEATURE_DISTANCES = ("squared_cosine",)
REGIMES = ("faithful", "uniform", "batch")
LOSSES = ("mae", "mse")
COSINE_EPS = 1e-7
_NORM_FLOOR = 1e-8
UNIFORM_BINS = 32
#: The largest learning rate accepted: RMSprop steps of more than 1 in the weights diverge.
MAX_LEARNING_RATE = 1.0


def _keras():
    # Imported lazily: TensorFlow takes seconds to import and most of the package never needs it.
    import keras  # noqa: PLC0415

    return keras


# --------------------------------------------------------------------------- feature distances


def _cosine_distance_ops(a, b):
    ops = _keras().ops
    dot = ops.sum(a * b, axis=-1)
    na = ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1), _NORM_FLOOR))
    nb = ops.sqrt(ops.maximum(ops.sum(b * b, axis=-1), _NORM_FLOOR))
    cos = ops.clip(dot / (na * nb), COSINE_EPS, 1.0 - COSINE_EPS)
    return 2.0 * ops.arccos(cos)


def _squared_cosine_distance_ops(a, b):
    ops = _keras().ops
    dot = ops.sum(a * b, axis=-1)
    na = ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1), _NORM_FLOOR))
    nb = ops.sqrt(ops.maximum(ops.sum(b * b, axis=-1), _NORM_FLOOR))
    # A negative cosine (possible with signed features) is clipped to ε: d = π, as cos² ≥ 0.
    cos = ops.clip(dot / (na * nb), COSINE_EPS, 1.0 - COSINE_EPS)
    return 2.0 * ops.arccos(ops.sqrt(cos))


def _euclidean_distance_ops(a, b):
    ops = _keras().ops
    # The floor keeps the gradient of the square root finite for identical features.
    return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1), _NORM_FLOOR))


def _distance_ops(kind):
    return {
        "cosine": _cosine_distance_ops,
        "euclidean": _euclidean_distance_ops,
        "squared_cosine": _squared_cosine_distance_ops,
    }[kind]


def feature_distances(features_a, features_b, kind="cosine") -> np.ndarray:
    """Distances between rows of two feature arrays, with the model head's formula (NumPy).

    Parameters
    ----------
    features_a, features_b : array_like, shape (m, n_f)
        Feature vectors, e.g. from :func:`embed`.
    kind : {"cosine", "euclidean", "squared_cosine"}
        The model's ``feature_distance``.

    Returns
    -------
    ndarray, shape (m,)
        ``2 arccos(clip(cos, ε, 1 − ε))``, ``‖a − b‖`` or ``2 arccos √clip(cos, ε, 1 − ε)``
        (float64).
    """
    validation.choice(kind, "kind", FEATURE_DISTANCES)
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"features must be two (m, n_f) arrays of the same shape, got {a.shape} and {b.shape}")
    if kind in ("cosine", "squared_cosine"):
        na = np.sqrt(np.maximum(np.einsum("ij,ij->i", a, a), _NORM_FLOOR))
        nb = np.sqrt(np.maximum(np.einsum("ij,ij->i", b, b), _NORM_FLOOR))
        cos = np.clip(np.einsum("ij,ij->i", a, b) / (na * nb), COSINE_EPS, 1.0 - COSINE_EPS)
        return 2.0 * np.arccos(cos if kind == "cosine" else np.sqrt(cos))
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", a - b, a - b), _NORM_FLOOR))


def _check_features(features, kind, *, allow_zero=False) -> np.ndarray:
    """``features`` as a finite (n, n_f) float64 array; for the cosine distance no row may be all
    zero (its direction, hence its distance to anything, is undefined), unless ``allow_zero``: then
    a warning says so and those rows are at distance π from everything (the norm floor's limit)."""
    validation.choice(kind, "kind", FEATURE_DISTANCES)
    features = validation.float_array(features, "features", "an (n, n_f) array of feature vectors")
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise InputError(f"features must be an (n, n_f) array of feature vectors, got shape {features.shape}")
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(
            f"features hold NaN or infinite values in {len(rows)} of {len(features)} rows (first: row {rows[0]}); "
            "embed those images again (a model that diverged gives NaN)"
        )
    if kind in ("cosine", "squared_cosine"):
        zero = ~features.any(axis=1)
        if zero.any():
            rows = np.flatnonzero(zero)
            message = (
                f"{len(rows)} of {len(features)} feature vectors are all zero (first: row {rows[0]}), so their cosine "
                "distance is undefined; train the model longer or with more features (n_features)"
            )
            if not allow_zero:
                raise InputError(message)
            warnings.warn(message + "; those images are taken at distance π from all others", stacklevel=3)
    return features


def distance_function(features, kind="cosine", *, allow_zero=False):
    """A callable ``f(i, j) -> d_p`` on index arrays, for :func:`cryo_orient.orientation.recovery.recover`.

    The CNN ran once per projection (in :func:`embed`); every pair distance the recovery asks for
    is then a few flops on the stored features, instead of a CNN pass per pair and step. Features
    given from outside must not be all-zero rows under the cosine distance; a model's own
    (``allow_zero``, as :class:`SiameseEstimator` passes) may be, with a warning: a network with
    dead units for some images is a result to report, not a bad input.
    """
    features = _check_features(features, kind, allow_zero=allow_zero)

    def d_p(i, j):
        i, j = validation.index_pairs(i, j, len(features))
        return feature_distances(features[i], features[j], kind)

    return d_p


#: Bytes of working memory :func:`distance_matrix` allows itself per block of rows.
DISTANCE_BLOCK_BYTES = 64 * 2**20


def distance_matrix(features, kind="cosine", block=None) -> np.ndarray:
    """The full (n, n) matrix of estimated distances from (n, n_f) features (float32).

    Computed by matrix products, ``block`` rows at a time (default: as many as fit in
    :data:`DISTANCE_BLOCK_BYTES` of float64 work space), so the memory beyond the (n, n) float32
    result stays bounded whatever n; the same numbers as :func:`feature_distances` of every pair
    to float rounding (the cosine is computed from unit vectors, the Euclidean distance from
    ``|a|² + |b|² − 2 a·b``).
    """
    features = _check_features(features, kind)
    n = len(features)
    validation.check_memory(
        4 * n * n + 3 * DISTANCE_BLOCK_BYTES, f"the {n:,} × {n:,} distance matrix", "embed fewer images"
    )
    if block is None:
        block = max(1, DISTANCE_BLOCK_BYTES // (8 * 2 * max(n, 1)))
    block = validation.positive_int(block, "block")
    out = np.empty((n, n), dtype=np.float32)
    sq = np.einsum("ij,ij->i", features, features)
    angular = kind in ("cosine", "squared_cosine")
    if angular:
        unit = features / np.sqrt(np.maximum(sq, _NORM_FLOOR))[:, None]
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        if angular:
            cos = unit[rows] @ unit.T
            np.clip(cos, COSINE_EPS, 1.0 - COSINE_EPS, out=cos)
            out[rows] = 2.0 * np.arccos(cos if kind == "cosine" else np.sqrt(cos))
        else:
            d2 = sq[rows, None] + sq[None, :] - 2.0 * (features[rows] @ features.T)
            out[rows] = np.sqrt(np.maximum(d2, _NORM_FLOOR))
    return out


# --------------------------------------------------------------------------- the model


def _register(cls):
    return _keras().saving.register_keras_serializable(package="cryo_orient")(cls)


_CLASSES = {}


def _custom(name):
    """The custom Keras classes, defined (and registered for loading) together on first use, so
    importing this module does not import Keras."""
    if not _CLASSES:
        keras = _keras()
        ops = keras.ops

        class FeatureDistance(keras.layers.Layer):
            """``d_f(f_i, f_j)``: the Siamese head, computed in float32 even under mixed precision."""

            def __init__(self, kind="cosine", **kwargs):
                kwargs.setdefault("dtype", "float32")
                super().__init__(**kwargs)
                self.kind = validation.choice(kind, "feature_distance", FEATURE_DISTANCES)

            def call(self, inputs):
                a, b = inputs
                return _distance_ops(self.kind)(ops.cast(a, "float32"), ops.cast(b, "float32"))

            def compute_output_shape(self, input_shape):
                return tuple(input_shape[0][:-1])

            def get_config(self):
                return super().get_config() | {"kind": self.kind}

        class InBatchPairLoss(keras.losses.Loss):
            """Loss over all B(B − 1)/2 pairs of a batch: ``y_true`` quaternions, ``y_pred`` features."""

            def __init__(self, error="mae", kind="cosine", name="in_batch_pair_loss", **kwargs):
                super().__init__(name=name, **kwargs)
                self.error = validation.choice(error, "loss", LOSSES)
                self.kind = validation.choice(kind, "feature_distance", FEATURE_DISTANCES)

            def call(self, y_true, y_pred):
                q = ops.cast(y_true, "float32")
                q = q / ops.sqrt(ops.sum(q * q, axis=-1, keepdims=True))
                d_q = 2.0 * ops.arccos(ops.clip(ops.abs(ops.matmul(q, ops.transpose(q))), 0.0, 1.0))
                f = ops.cast(y_pred, "float32")
                d_p = _distance_ops(self.kind)(f[:, None, :], f[None, :, :])
                b = ops.shape(f)[0]
                mask = ops.triu(ops.ones((b, b), "float32"), k=1)
                err = ops.abs(d_p - d_q) if self.error == "mae" else ops.square(d_p - d_q)
                n_pairs = ops.cast(b * (b - 1) // 2, "float32")
                # Per-image sums scaled so that Keras' mean over the batch is the mean over pairs.
                return ops.sum(err * mask, axis=1) * ops.cast(b, "float32") / n_pairs

            def get_config(self):
                return super().get_config() | {"error": self.error, "kind": self.kind}

        for cls in (FeatureDistance, InBatchPairLoss):
            _CLASSES[cls.__name__] = _register(cls)
    return _CLASSES[name]


def _check_size(input_size, n_features):
    validation.integer(input_size, "input_size (pixels per side)", 8)
    validation.positive_int(n_features, "n_features")


def build_encoder(input_size=116, n_features=512, *, signed=False, name="encoder"):
    """The paper's CNN G_w: an (s, s, 1) image to an ``n_features`` vector (ReLU, so ≥ 0).

    ``n_features`` is the number of filters of the last convolution (512 in the paper; the
    paper's Fig. 17b varies it from 4 to 512). ``signed``: the last convolution is linear
    (features of either sign, for the ``"squared_cosine"`` head); the parameter count is the same.
    """
    keras = _keras()
    layers = keras.layers

    _check_size(input_size, n_features)
    filters = FILTERS[:-1] + (int(n_features),)
    inputs = keras.Input((input_size, input_size, 1), name="projection")
    x = inputs
    for block, (f, k) in enumerate(zip(filters, KERNELS), start=1):
        activation = None if signed and block == len(filters) else "relu"
        x = layers.Conv2D(
            f, k, padding="same", activation=activation, kernel_initializer="glorot_uniform", name=f"conv{block}"
        )(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{block}")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_model(input_size=116, n_features=512, feature_distance="cosine", *, encoder=None):
    """The Siamese model: ``[p_i, p_j] -> d_p``, one shared encoder (layer ``"encoder"``).

    Parameters
    ----------
    input_size : int
        Side of the square input projections, in pixels (116 in the paper).
    n_features : int
        Length of the feature vector (512 in the paper).
    feature_distance : {"cosine", "euclidean", "squared_cosine"}
        The head: the paper's ``2 arccos(cos)``, the Euclidean ablation, or ours,
        ``2 arccos √cos`` on signed features (see the module docstring).
    encoder : keras.Model, optional
        An existing encoder to share (e.g. one trained on its own); ``input_size`` and
        ``n_features`` are then taken from it.

    Returns
    -------
    keras.Model
        Inputs ``[(batch, s, s, 1), (batch, s, s, 1)]``, output ``(batch,)`` distances.
    """
    keras = _keras()
    validation.choice(feature_distance, "feature_distance", FEATURE_DISTANCES)
    if encoder is None:
        encoder = build_encoder(input_size, n_features, signed=feature_distance in SIGNED_FEATURE_DISTANCES)
    input_size = encoder.input_shape[1]
    a = keras.Input((input_size, input_size, 1), name="projection_i")
    b = keras.Input((input_size, input_size, 1), name="projection_j")
    d = _custom("FeatureDistance")(feature_distance, name="distance")([encoder(a), encoder(b)])
    return keras.Model([a, b], d, name="siamese")


def encoder_of(model):
    """The shared encoder of a Siamese model (or the model itself if it is an encoder)."""
    try:
        return model.get_layer("encoder")
    except ValueError:
        if len(model.inputs) == 1:
            return model
        raise InputError(
            "this model has neither an 'encoder' layer nor a single input; "
            "pass a model built by cryo_orient.estimation.siamese.build_model"
        ) from None


def head_kind(model) -> str:
    """The ``feature_distance`` of a Siamese model's head."""
    return model.get_layer("distance").kind


def layer_table(model) -> list[dict]:
    """The encoder's layers with output shapes and parameter counts (for Fig. 18 and reports)."""
    encoder = encoder_of(model)
    rows = []
    for layer in encoder.layers:
        shape = tuple(layer.output.shape[1:]) if hasattr(layer, "output") else ()
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": [int(s) for s in shape],
                "parameters": int(layer.count_params()),
                "kernel": list(getattr(layer, "kernel_size", ())) or None,
                "filters": getattr(layer, "filters", None),
            }
        )
    return rows


# --------------------------------------------------------------------------- images and pairs


def resize_images(images, size) -> np.ndarray:
    """Square images to ``size × size`` pixels (float32; a new array).

    An integer factor is a block mean (binning, as a detector with larger pixels); otherwise
    scikit-image's anti-aliased resize, as the paper used to bring 5a1a's 275 px to 116 px.
    Binning by k averages the white noise of k² pixels, so it raises the per-pixel SNR by k².
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"images must be an (n, s, s) stack of square images, got shape {images.shape}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    n, s = images.shape[:2]
    if size == s:
        return images.copy()
    if size < s and s % size == 0:
        k = s // size
        return images.reshape(n, size, k, size, k).mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    return np.stack([resize(im, (size, size), anti_aliasing=size < s, preserve_range=True) for im in images]).astype(
        np.float32
    )


def sample_pairs(n, n_pairs, rng=None) -> np.ndarray:
    """The paper's pairs: ``n_pairs`` ordered (i, j) of ``range(n)``², drawn with replacement.

    Returns an (n_pairs, 2) int array (pairs with i == j included, as in the paper's code).
    """
    rng = as_rng(rng)
    if n < 2 or n_pairs < 1:
        raise InputError(f"need n ≥ 2 images and n_pairs ≥ 1, got n={n}, n_pairs={n_pairs}")
    k = rng.integers(0, n * n, size=int(n_pairs))
    return np.stack([k // n, k % n], axis=1)


def sample_uniform_distance_pairs(q, n_pairs, rng=None, n_bins=UNIFORM_BINS, oversample=20) -> np.ndarray:
    """Pairs whose d_q histogram over ``n_bins`` equal bins of [0, π] is flat (as far as it can be).

    Draws ``oversample × n_pairs`` candidate pairs, bins their d_q, and takes the same number
    from every non-empty bin (with replacement only in bins with fewer candidates than that).
    Restricted coverage leaves the largest distances empty: those bins are skipped, so the
    histogram is flat on the distances that occur.
    """
    rng = as_rng(rng)
    q = np.asarray(q, dtype=np.float64)
    candidates = sample_pairs(len(q), oversample * int(n_pairs), rng)
    candidates = candidates[candidates[:, 0] != candidates[:, 1]]
    d = rotations.distance(q[candidates[:, 0]], q[candidates[:, 1]])
    bins = np.minimum((d / np.pi * n_bins).astype(int), n_bins - 1)
    occupied = np.unique(bins)
    per_bin = int(np.ceil(n_pairs / len(occupied)))
    chosen = []
    for b in occupied:
        members = np.flatnonzero(bins == b)
        chosen.append(rng.choice(members, per_bin, replace=len(members) < per_bin))
    chosen = rng.permutation(np.concatenate(chosen))[: int(n_pairs)]
    return candidates[chosen]


def _pair_labels(q, pairs):
    return rotations.distance(q[pairs[:, 0]], q[pairs[:, 1]]).astype(np.float32)


def constant_mae(q, max_pairs: int = 200_000) -> float:
    """The MAE of the best constant prediction of ``d_q`` over the distinct pairs of ``q``.

    The best constant under the absolute error is the median of the pairs' distances; its error is
    their mean absolute deviation from it (about 0.53 rad for uniform orientations on SO(3)). An
    estimator whose validation MAE is not clearly below this has learned next to nothing about the
    orientations, and a recovery from its distances returns orientations close to random.

    Parameters
    ----------
    q : array_like, shape (n, 4)
        Unit quaternions (``n ≥ 2``), e.g. a validation split's.
    max_pairs : int
        Above this many pairs, an evenly spaced subset of them (deterministic).

    Returns
    -------
    float
        In radians.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4 or len(q) < 2:
        raise InputError(f"need at least 2 quaternions as an (n, 4) array, got shape {q.shape}")
    i, j = np.triu_indices(len(q), 1)
    if len(i) > max_pairs:
        keep = np.linspace(0, len(i) - 1, int(max_pairs)).astype(int)
        i, j = i[keep], j[keep]
    d = np.asarray(rotations.distance(q[i], q[j]), dtype=np.float64)
    return float(np.mean(np.abs(d - np.median(d))))


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Settings):
    """Settings of one training run (defaults: the paper's, §4.2)."""

    _unknown_keys = "training setting(s)"
    _known_keys = "settings"

    input_size: int = 116
    n_features: int = 512
    feature_distance: str = "cosine"
    loss: str = "mae"
    regime: str = "faithful"
    pair_fraction: float = 0.01
    batch_size: int = 256
    epochs: int = 150
    learning_rate: float = 1e-3
    target_val_mae: float | None = None
    mixed_precision: bool = False
    seed: int = 0

    def __post_init__(self):
        _check_size(self.input_size, self.n_features)
        validation.choice(self.feature_distance, "feature_distance", FEATURE_DISTANCES)
        validation.choice(self.loss, "loss", LOSSES)
        validation.choice(self.regime, "regime", REGIMES)
        pair_fraction = validation.real(self.pair_fraction, "pair_fraction", minimum=0.0, strict=True)
        if pair_fraction > 1:
            raise InputError(f"pair_fraction must be in (0, 1], got {self.pair_fraction!r}")
        validation.integer(self.batch_size, "batch_size", 2)
        validation.integer(self.epochs, "epochs", 1)
        validation.integer(self.seed, "seed", 0)
        learning_rate = validation.positive(self.learning_rate, "learning_rate")
        if learning_rate > MAX_LEARNING_RATE:
            raise InputError(
                f"learning_rate {learning_rate:g} is beyond {MAX_LEARNING_RATE:g}, where RMSprop diverges "
                "(the paper's is 1e-3)"
            )
        if self.target_val_mae is not None:
            validation.positive(self.target_val_mae, "target_val_mae")
        if not isinstance(self.mixed_precision, (bool, np.bool_)):
            raise InputTypeError(f"mixed_precision must be true or false, got {self.mixed_precision!r}")


@dataclasses.dataclass
class TrainingResult:
    """A trained model and its per-epoch history (``history[k]`` is a list over epochs)."""

    model: object
    history: dict
    config: TrainingConfig
    seconds: float
    stop_reason: str
    out_dir: Path | None = None

    @property
    def epochs(self) -> int:
        return len(self.history.get("epoch", []))

    @property
    def best_val_mae(self) -> float:
        return float(np.min(self.history["val_mae"]))


def _check_split(images, q, name):
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"{name} images must be an (n, s, s) stack of square projections, got shape {images.shape}")
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (len(images), 4):
        raise InputError(f"{name} quaternions must have shape ({len(images)}, 4), got {q.shape}")
    if not np.all(np.isfinite(images)):
        raise InputError(f"{name} images contain NaN or infinite values; simulate the dataset again")
    if not np.all(np.isfinite(q)):
        raise InputError(f"{name} quaternions contain NaN or infinite values")
    if len(images) < 2:
        raise InputError(f"{name} split needs at least 2 projections, got {len(images)}")
    return images, q


def _fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _pair_dataset(images, pairs, labels, batch_size, rng):
    keras = _keras()
    order = rng.permutation(len(pairs))

    class Pairs(keras.utils.PyDataset):
        def __len__(self):
            return int(np.ceil(len(order) / batch_size))

        def __getitem__(self, k):
            idx = order[k * batch_size : (k + 1) * batch_size]
            i, j = pairs[idx, 0], pairs[idx, 1]
            return (images[i][..., None], images[j][..., None]), labels[idx]

    return Pairs()


def _image_dataset(images, q, batch_size, rng):
    keras = _keras()
    order = rng.permutation(len(images))
    n_batches = len(order) // batch_size + (len(order) % batch_size >= 2)

    class Images(keras.utils.PyDataset):
        def __len__(self):
            return n_batches

        def __getitem__(self, k):
            idx = order[k * batch_size : (k + 1) * batch_size]
            return images[idx][..., None], q[idx].astype(np.float32)

    return Images()


def _compile(model, config, encoder_only):
    keras = _keras()
    optimizer = keras.optimizers.RMSprop(learning_rate=config.learning_rate)
    if encoder_only:
        model.compile(optimizer=optimizer, loss=_custom("InBatchPairLoss")(config.loss, config.feature_distance))
    else:
        model.compile(optimizer=optimizer, loss=config.loss)


@contextlib.contextmanager
def _precision(mixed):
    keras = _keras()
    if not mixed:
        yield
        return
    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _distribution_scope():
    """``tf.distribute.MirroredStrategy`` over several GPUs (TensorFlow backend); else nothing."""
    keras = _keras()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415 (see _keras)

        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def _seed_everything(seed):
    keras = _keras()
    keras.utils.set_random_seed(int(seed))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415 (see _keras)

        # Same config and seed on CPU, same numbers: deterministic kernels, single-op order.
        tf.config.experimental.enable_op_determinism()


HISTORY_FIELDS = ("epoch", "loss", "val_mae", "val_mse", "val_rms", "seconds", "pairs_seen", "images_seen")


#: A checkpoint is a folder ``checkpoint-<epoch>`` of a run folder, written whole under a
#: temporary name and renamed once: ``fit.keras`` (what is fitted, with its optimizer state: the
#: Siamese model, or its encoder in the batch regime), ``history.csv`` and ``state.json`` (epoch,
#: stop reason, the global RNG states). Only the newest is kept.
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_FIT_NAME = "fit.keras"


def _latest_checkpoint(out_dir: Path) -> Path | None:
    found = []
    for entry in os.scandir(out_dir):
        match = _CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match[1]), Path(entry.path)))
    return max(found)[1] if found else None


def _rng_state() -> dict:
    import random  # noqa: PLC0415

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _restore_rng_state(state: dict) -> None:
    import random  # noqa: PLC0415

    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))


def _write_checkpoint(out_dir: Path, epoch: int, fit_model, history, stop_reason, finished) -> Path:
    target = out_dir / f"checkpoint-{epoch:06d}"
    with atomic_output(target, directory=True) as tmp:
        fit_model.save(tmp / _FIT_NAME)
        _write_history(history, tmp / "history.csv")
        state = {"epoch": epoch, "stop_reason": stop_reason, "finished": bool(finished), "rng": _rng_state()}
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
    _remove_older_checkpoints(out_dir, target)
    return target


def _remove_older_checkpoints(out_dir: Path, keep: Path) -> None:
    for path in out_dir.glob("checkpoint-*"):
        if _CHECKPOINT_RE.match(path.name) and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _read_checkpoint_state(checkpoint: Path):
    try:
        state = json.loads((checkpoint / "state.json").read_text())
        history = _read_history(checkpoint / "history.csv")
        if state["epoch"] != len(history["epoch"]):
            raise InputError(f"state.json says epoch {state['epoch']}, history.csv has {len(history['epoch'])}")
        state["stop_reason"], state["finished"], state["rng"]  # noqa: B018 (all present)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"checkpoint {checkpoint} is damaged ({type(err).__name__}: {err}); delete that folder to resume "
            "from scratch"
        ) from None
    return history, state


def _export(out_dir: Path, model, history) -> None:
    """The user's copies of the newest checkpoint: ``model.keras`` (the Siamese model) and
    ``history.csv``, written in that order, so a history that matches means a model that does."""
    buf = _history_text(history)
    current = out_dir / "history.csv"
    if (out_dir / "model.keras").is_file() and current.is_file() and current.read_text() == buf:
        return
    _save_model(model, out_dir / "model.keras")
    save_text(buf, current)


def _read_run_json(path: Path) -> dict:
    try:
        run = json.loads(path.read_text())
        run["identity"]["config"]  # noqa: B018
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not valid JSON ({err}); delete the run folder {path.parent} to train anew"
        ) from None
    except (KeyError, TypeError) as err:
        raise DataError(
            f"{path} lacks the key {err} of a training run; delete the run folder {path.parent} to train anew"
        ) from None
    return run


def _load_keras(path: Path):
    """A saved Keras model; a missing, truncated or foreign file is a :class:`DataError` naming it."""
    keras = _keras()
    _custom("FeatureDistance")  # registers the custom classes for loading
    if not path.is_file():
        raise DataError(f"{path} is missing; train into {path.parent} again (or delete it)")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path} is not a Keras model file (truncated or corrupt: no zip directory); "
            f"train into {path.parent} again (or delete it)"
        )
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # Keras raises many kinds for a damaged archive
        text = " ".join(str(err).split())[:200]
        raise DataError(
            f"{path} cannot be loaded as a Keras model ({type(err).__name__}: {text}); "
            f"train into {path.parent} again (or delete it)"
        ) from None


def _history_text(history) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HISTORY_FIELDS)
    for row in zip(*(history[k] for k in HISTORY_FIELDS)):
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def _write_history(history, path):
    save_text(_history_text(history), path)


def _read_history(path):
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        history = {k: [] for k in HISTORY_FIELDS}
        for row in rows:
            for k in HISTORY_FIELDS:
                history[k].append(int(row[k]) if k in ("epoch", "pairs_seen", "images_seen") else float(row[k]))
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"{path} is not a training history ({type(err).__name__}: {err}); train into {Path(path).parent} again"
        ) from None
    return history


def _save_model(model, path):
    # Keras insists on the ".keras" suffix, so the (unique) temporary name keeps it.
    with atomic_output(path, suffix=".keras") as tmp:
        model.save(tmp)


def _validation_metrics(encoder, images, q, pairs, kind, batch_size):
    features = embed(encoder, images, batch_size=batch_size, progress=False)
    d_p = feature_distances(features[pairs[:, 0]], features[pairs[:, 1]], kind)
    return _error_metrics(d_p, _pair_labels(q, pairs))


def _error_metrics(d_p, d_q) -> dict:
    """The validation columns of the history: MAE, MSE and RMS of ``d_p − d_q``."""
    err = d_p - d_q
    return {
        "val_mae": float(np.mean(np.abs(err))),
        "val_mse": float(np.mean(err**2)),
        "val_rms": float(np.sqrt(np.mean(err**2))),
    }


def train(
    train_images,
    train_quaternions,
    val_images,
    val_quaternions,
    config=None,
    *,
    out_dir=None,
    perturbation=None,
    progress=True,
) -> TrainingResult:
    """Train the Siamese distance estimator.

    Parameters
    ----------
    train_images, val_images : array_like, shape (n, s, s)
        Projections of the training and validation splits. With ``perturbation=None`` they are
        the inputs as they are (the paper's fixed noisy dataset); otherwise they must be *clean*
        raw projections, and fresh noise and shifts are drawn for every training batch (the
        validation images are perturbed once, with a fixed seed, so the metric is comparable
        across epochs). Images of another size are resized to ``config.input_size``.
    train_quaternions, val_quaternions : array_like, shape (n, 4)
        Their orientations (scalar-last unit quaternions); labels are d_q of pairs.
    config : TrainingConfig or dict, optional
        The settings (defaults: the paper's).
    out_dir : path, optional
        The run folder: ``run.json`` (what the run is), one checkpoint ``checkpoint-<epoch>/``
        written whole every epoch and renamed once (``fit.keras``, what is fitted with its optimizer
        state: the Siamese model, or its encoder in the batch regime; ``history.csv``; ``state.json``
        with the RNG state), and its copies for users, ``model.keras`` (the Siamese model) and
        ``history.csv``. If it holds an unfinished run of the same config and data, training resumes
        from its checkpoint, bit-identically, wherever a kill stopped it; a finished one is loaded
        without training. A different run there is an error. Two trainings into one folder take
        turns (a file lock): the second loads the first's finished run.
    perturbation : Perturbation, optional
        Fresh noise/shifts per batch (see above).
    progress : bool
        Show a progress bar over epochs.

    Returns
    -------
    TrainingResult
    """
    keras = _keras()
    config = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(dict(config or {}))
    train_images, train_q = _check_split(train_images, train_quaternions, "training")
    val_images, val_q = _check_split(val_images, val_quaternions, "validation")
    if perturbation is not None and not isinstance(perturbation, Perturbation):
        raise InputTypeError(f"perturbation must be a Perturbation or None, got {type(perturbation).__name__}")

    seeds = np.random.SeedSequence(config.seed).spawn(3)  # pairs, validation perturbation, epochs
    pair_rng = np.random.default_rng(seeds[0])
    if perturbation is not None:
        val_images = perturbation.apply(val_images, np.random.default_rng(seeds[1]))
    val_images = resize_images(val_images, config.input_size)
    fixed_train = None if perturbation is not None else resize_images(train_images, config.input_size)

    n_train, n_val = len(train_q), len(val_q)
    n_pairs = max(1, int(config.pair_fraction * n_train**2))
    if config.regime == "faithful":
        train_pairs = sample_pairs(n_train, n_pairs, pair_rng)
    elif config.regime == "uniform":
        train_pairs = sample_uniform_distance_pairs(train_q, n_pairs, pair_rng)
    else:
        train_pairs = None
    val_pairs = sample_pairs(n_val, max(1, int(0.01 * n_val**2)), np.random.default_rng([config.seed, 1]))
    train_labels = None if train_pairs is None else _pair_labels(train_q, train_pairs)

    identity = {
        "config": config.to_dict(),
        "perturbation": None if perturbation is None else dataclasses.asdict(perturbation),
        "train_data": _fingerprint(np.asarray(train_images, np.float32), train_q),
        "val_data": _fingerprint(np.asarray(val_images, np.float32), val_q),
        "keras_backend": keras.backend.backend(),
    }
    loop = dict(
        train_images=train_images,
        train_q=train_q,
        val_images=val_images,
        val_q=val_q,
        fixed_train=fixed_train,
        train_pairs=train_pairs,
        train_labels=train_labels,
        val_pairs=val_pairs,
        perturbation=perturbation,
        progress=progress,
    )
    return _run_training(
        config, identity, out_dir, lambda *resumed, **kw: _train_loop(config, identity, *resumed, **kw, **loop)
    )


def _run_training(config, identity, out_dir, loop, *, record=None):
    """Run ``loop(history, fit_model, done_reason, out_dir, state=...)`` from scratch (no
    ``out_dir``) or from where the run folder ``out_dir`` stopped: the one way every training
    (:func:`train`, :func:`cryo_orient.estimation.onthefly.train_general`) opens its run folder.

    ``identity`` is what the run is; a folder holding another one is an error. ``record``: extra
    items of ``run.json`` written when the run starts (e.g. provenance), not part of the identity.
    """
    history = {k: [] for k in HISTORY_FIELDS}
    if out_dir is None:
        return loop(history, None, None, None, state=None)
    out_dir = Path(out_dir)
    ensure_folder(out_dir)
    # Two trainings into one folder run one after the other; the second finds the first's
    # finished run and loads it.
    with file_lock(out_dir):
        sweep_stale_temporaries(out_dir)
        run_file = out_dir / "run.json"
        fit_model, done_reason, state = None, None, None
        if run_file.is_file():
            previous = _read_run_json(run_file)
            if previous["identity"] != jsonable(identity):
                raise InputError(
                    f"{out_dir} holds a different training run (other config or data); "
                    "choose another out_dir or delete that one"
                )
            checkpoint = _latest_checkpoint(out_dir)
            if checkpoint is not None:
                _remove_older_checkpoints(out_dir, checkpoint)  # left by a kill just after a checkpoint
                history, state = _read_checkpoint_state(checkpoint)
                fit_model = _load_keras(checkpoint / _FIT_NAME)
                done_reason = state["stop_reason"] if state["finished"] else None
            elif previous.get("stop_reason") and all((out_dir / f).is_file() for f in ("model.keras", "history.csv")):
                # A run finished before checkpoints existed: its model and history are the result
                # (the identity matched), so load them rather than train the same run again.
                history = _read_history(out_dir / "history.csv")
                model = _load_keras(out_dir / "model.keras")
                fit_model = encoder_of(model) if config.regime == "batch" else model
                done_reason = previous["stop_reason"]
        else:
            _write_run_json(run_file, identity, None, record)
        return loop(history, fit_model, done_reason, out_dir, state=state)


def _write_run_json(path, identity, stop_reason, record=None) -> None:
    run = {"identity": jsonable(identity), "stop_reason": stop_reason}
    if record:
        run.update(jsonable(record))
    save_text(json.dumps(run, indent=2) + "\n", path)


def _train_loop(
    config,
    identity,
    history,
    fit_model,
    done_reason,
    out_dir,
    *,
    state=None,
    train_images,
    train_q,
    val_images,
    val_q,
    fixed_train,
    train_pairs,
    train_labels,
    val_pairs,
    perturbation,
    progress,
):
    n_train = len(train_q)
    encoder_only = config.regime == "batch"

    def epoch_data(epoch):
        epoch_rng = np.random.default_rng([config.seed, 2, epoch])
        if perturbation is not None:
            images = resize_images(perturbation.apply(train_images, epoch_rng), config.input_size)
        else:
            images = fixed_train
        if encoder_only:
            data = _image_dataset(images, train_q, config.batch_size, epoch_rng)
            sizes = [min(config.batch_size, n_train - k * config.batch_size) for k in range(len(data))]
            return data, sum(b * (b - 1) // 2 for b in sizes), sum(sizes)
        data = _pair_dataset(images, train_pairs, train_labels, config.batch_size, epoch_rng)
        return data, len(train_pairs), 2 * len(train_pairs)

    def validate(encoder):
        return _validation_metrics(encoder, val_images, val_q, val_pairs, config.feature_distance, config.batch_size)

    return _epoch_loop(
        config,
        history,
        fit_model,
        done_reason,
        out_dir,
        state=state,
        epoch_data=epoch_data,
        validate=validate,
        progress=progress,
        desc=f"training ({config.regime})",
    )


def _epoch_loop(config, history, fit_model, done_reason, out_dir, *, state, epoch_data, validate, progress, desc):
    """The epochs of a training, shared by :func:`train` and the on-the-fly training: fit one epoch
    of ``epoch_data(epoch)`` (a Keras input, and the pairs and images it holds), validate with
    ``validate(encoder)`` (the history's validation columns), and after each epoch write the
    checkpoint and the users' copies; stop at ``config.epochs`` or ``config.target_val_mae``."""
    _seed_everything(config.seed)
    if state is not None:
        _restore_rng_state(state)
    encoder_only = config.regime == "batch"
    if fit_model is None:
        with _distribution_scope(), _precision(config.mixed_precision):
            model = build_model(config.input_size, config.n_features, config.feature_distance)
        fit_model = encoder_of(model) if encoder_only else model
        _compile(fit_model, config, encoder_only)
    else:
        model = build_model(feature_distance=config.feature_distance, encoder=fit_model) if encoder_only else fit_model
    encoder = encoder_of(model)

    start_epoch = len(history["epoch"])
    previous_seconds = history["seconds"][-1] if start_epoch else 0.0
    pairs_seen = history["pairs_seen"][-1] if start_epoch else 0
    images_seen = history["images_seen"][-1] if start_epoch else 0
    stop_reason = done_reason or "epochs"
    t0 = time.perf_counter()

    bar = None
    if progress and done_reason is None and start_epoch < config.epochs:
        bar = tqdm(total=config.epochs, initial=start_epoch, desc=desc, unit="epoch")
    last_epoch = start_epoch if done_reason is not None else config.epochs  # a finished run: no epochs
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            data, n_pairs, n_images = epoch_data(epoch)
            pairs_seen += n_pairs
            images_seen += n_images
            logs = fit_model.fit(data, epochs=1, verbose=0, shuffle=False).history
            metrics = validate(encoder)
            row = {
                "epoch": epoch,
                "loss": float(logs["loss"][-1]),
                **metrics,
                "seconds": previous_seconds + time.perf_counter() - t0,
                "pairs_seen": int(pairs_seen),
                "images_seen": int(images_seen),
            }
            if not np.isfinite(row["loss"]):
                raise RunError(
                    f"training loss became {row['loss']} at epoch {epoch}; lower learning_rate or check the inputs"
                )
            for k in HISTORY_FIELDS:
                history[k].append(row[k])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_mae=f"{row['val_mae']:.3f}")
            if config.target_val_mae is not None and row["val_mae"] <= config.target_val_mae:
                stop_reason = "target_val_mae"
            if out_dir is not None:
                # One atomic unit: what was fitted (with its optimizer state), the history and the
                # RNG state, renamed into place at once, so a resumed run continues exactly.
                finished = stop_reason != "epochs" or epoch == config.epochs
                _write_checkpoint(out_dir, epoch, fit_model, history, stop_reason, finished)
                _export(out_dir, model, history)
            if stop_reason != "epochs":
                break
    finally:
        if bar is not None:
            bar.close()
    if out_dir is not None:
        _export(out_dir, model, history)  # after a kill between the checkpoint and its copies
        # The stop reason, keeping what run.json recorded when the run started.
        run = _read_run_json(out_dir / "run.json")
        _write_run_json(out_dir / "run.json", run.pop("identity"), stop_reason, run | {"stop_reason": stop_reason})
    seconds = history["seconds"][-1] if history["seconds"] else 0.0
    return TrainingResult(
        model=model, history=history, config=config, seconds=seconds, stop_reason=stop_reason, out_dir=out_dir
    )


def load_run(out_dir) -> TrainingResult:
    """A finished or interrupted run from its folder (model, history, config): its newest
    checkpoint (model and history of the same epoch), else ``model.keras`` and ``history.csv``."""
    out_dir = Path(out_dir)
    if not (out_dir / "run.json").is_file():
        what = "is not a folder" if out_dir.exists() and not out_dir.is_dir() else "is not a training run"
        raise MissingInputError(
            f"{out_dir} {what} ({out_dir / 'run.json'} is missing); train with cryo_orient.estimation.siamese.train "
            f"(or `cryo-orient train`) into {out_dir} first"
        )
    run = _read_run_json(out_dir / "run.json")
    try:
        config = TrainingConfig.from_dict(run["identity"]["config"])
    except (InputError, TypeError, ValueError) as err:
        raise DataError(f"{out_dir / 'run.json'} holds an invalid training config ({err}); train anew") from None
    checkpoint = _latest_checkpoint(out_dir) if out_dir.is_dir() else None
    if checkpoint is not None:
        history, _ = _read_checkpoint_state(checkpoint)
        fitted = _load_keras(checkpoint / _FIT_NAME)
        model = (
            build_model(feature_distance=config.feature_distance, encoder=fitted)
            if config.regime == "batch"
            else fitted
        )
    else:
        for name in ("model.keras", "history.csv"):
            if not (out_dir / name).is_file():
                raise MissingInputError(
                    f"{out_dir / name} is missing; train with cryo_orient.estimation.siamese.train "
                    f"(or `cryo-orient train`) into {out_dir} first"
                )
        history = _read_history(out_dir / "history.csv")
        model = _load_keras(out_dir / "model.keras")
    return TrainingResult(
        model=model,
        history=history,
        config=config,
        seconds=history["seconds"][-1] if history["seconds"] else 0.0,
        stop_reason=run.get("stop_reason") or "interrupted",
        out_dir=out_dir,
    )


def run_folder(dataset: Dataset, config: TrainingConfig, perturbation: Perturbation | None, cache_dir) -> Path:
    """The run folder of a training on ``dataset`` in ``cache_dir``: named by a hash of the
    dataset's content key, the config and the perturbation, so a re-run loads the finished model,
    an interrupted one resumes, and any change trains anew."""
    key = json.dumps(
        jsonable(
            {
                "dataset": dataset.cache_key,
                "config": config.to_dict(),
                "perturbation": None if perturbation is None else dataclasses.asdict(perturbation),
            }
        ),
        sort_keys=True,
    )
    return Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]


@register
class SiameseEstimator(DistanceEstimator):
    """The paper's estimator: a Siamese CNN trained to output ``d_q`` for a pair of projections.

    Parameters
    ----------
    training : TrainingConfig or dict, optional
        The network and its training (:class:`TrainingConfig`).
    fresh_noise : bool
        Train on the dataset's *clean* projections (simulate it with ``store_clean = true``) with
        new noise and shifts of the dataset's kind every batch (:class:`Perturbation`).

    :meth:`fit` trains on the dataset's ``"train"`` split, validated on its ``"val"`` split
    (Table 1's, :meth:`cryo_orient.data.dataset.Dataset.split`); :meth:`embed` runs the encoder
    once per image; the distances are the head's formula on the features.
    """

    name = "siamese"
    #: Trained on the dataset: the pipeline passes it ``training`` and ``fresh_noise``.
    trained = True

    def __init__(self, training=None, *, fresh_noise: bool = False):
        self.config = (
            training if isinstance(training, TrainingConfig) else TrainingConfig.from_dict(dict(training or {}))
        )
        self.fresh_noise = bool(fresh_noise)
        self.result: TrainingResult | None = None

    def fit(self, dataset: Dataset, *, cache_dir=None, out_dir=None, progress: bool = True) -> SiameseEstimator:
        """Train (or load the finished run of) the network; give exactly one of ``cache_dir``
        (a folder of cached runs, see :func:`run_folder`) and ``out_dir`` (the run folder)."""
        if (cache_dir is None) == (out_dir is None):
            raise InputError("give exactly one of cache_dir (a folder of cached runs) and out_dir (the run folder)")
        perturbation = None
        if self.fresh_noise:
            if not dataset.has_clean:
                raise InputError(
                    f"{dataset.path} has no clean projections, which fresh noise and shifts need; "
                    "simulate it with store_clean = true"
                )
            perturbation = Perturbation.from_dataset(dataset)
        if dataset.quaternions is None:
            raise InputError(f"{dataset.path} has no known orientations to train on")

        def inputs(part):
            # Fresh noise starts from the clean raw images, stored as float32 (the cast is exact).
            return part.images("clean").astype(np.float32) if perturbation else part.images("standardized")

        train_part, val_part = dataset.split("train"), dataset.split("val")
        if out_dir is None:
            out_dir = run_folder(dataset, self.config, perturbation, cache_dir)
        self.result = train(
            inputs(train_part),
            train_part.quaternions,
            inputs(val_part),
            val_part.quaternions,
            self.config,
            out_dir=out_dir,
            perturbation=perturbation,
            progress=progress,
        )
        return self

    @classmethod
    def load(cls, out_dir) -> SiameseEstimator:
        """The estimator of a finished run folder (:func:`load_run`)."""
        result = load_run(out_dir)
        estimator = cls(result.config)
        estimator.result = result
        return estimator

    def _fitted(self) -> TrainingResult:
        if self.result is None:
            raise InputError("the Siamese estimator is not fitted yet; call fit(dataset, cache_dir=...) first")
        return self.result

    def embed(self, dataset: Dataset, *, progress: bool = False) -> np.ndarray:
        size = encoder_of(self._fitted().model).input_shape[1]
        return embed(self.result.model, resize_images(dataset.images("standardized"), size), progress=progress)

    def distance_function(self, features):
        return distance_function(features, self._fitted().config.feature_distance, allow_zero=True)

    @property
    def key(self) -> str:
        return Path(self._fitted().out_dir).name

    def describe(self) -> dict:
        run = self._fitted()
        return {
            "run_dir": str(run.out_dir),
            "epochs": run.epochs,
            "seconds": run.seconds,
            "fresh_noise": self.fresh_noise,
            "final_train_loss": run.history["loss"][-1],
            "final_val_mae": run.history["val_mae"][-1],
        }

    def log_line(self) -> str:
        run = self._fitted()
        return (
            f"estimator: {run.epochs} epochs{' (fresh noise every batch)' if self.fresh_noise else ''}, "
            f"val MAE {run.history['val_mae'][-1]:.3f} ({run.out_dir})"
        )


# --------------------------------------------------------------------------- inference


def _as_batch(images, input_size):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise InputError(f"images must be an (n, s, s) or (n, s, s, 1) array, got shape {images.shape}")
    if images.shape[1:3] != (input_size, input_size):
        raise InputError(
            f"the model takes {input_size}×{input_size} images, got {images.shape[1]}×{images.shape[2]}; "
            f"resize them with cryo_orient.estimation.siamese.resize_images(images, {input_size})"
        )
    if not np.all(np.isfinite(images)):
        raise InputError("images contain NaN or infinite values")
    return images


def embed(model, images, *, batch_size=256, progress=True) -> np.ndarray:
    """Feature vectors of projections: the CNN runs once per image.

    Parameters
    ----------
    model : keras.Model
        A Siamese model (its encoder is used) or an encoder.
    images : array_like, shape (n, s, s)
        Projections at the model's input size.

    Returns
    -------
    ndarray, shape (n, n_features), float32
    """
    encoder = encoder_of(model)
    images = _as_batch(images, encoder.input_shape[1])
    chunks = range(0, len(images), batch_size)
    if progress and len(chunks) > 1:
        chunks = tqdm(chunks, desc="embedding", unit="batch")
    # predict_on_batch runs the compiled inference function (an eager call is several times slower
    # on JAX and TensorFlow alike, which matters for the per-epoch validation of short epochs).
    out = [np.asarray(encoder.predict_on_batch(images[k : k + batch_size]), dtype=np.float32) for k in chunks]
    return np.concatenate(out) if out else np.zeros((0, encoder.output_shape[-1]), np.float32)


def predict_pairs(model, images_a, images_b, *, batch_size=256) -> np.ndarray:
    """The Siamese model's own output d_p for pairs of images (both branches run)."""
    size = encoder_of(model).input_shape[1]
    a, b = _as_batch(images_a, size), _as_batch(images_b, size)
    if len(a) != len(b):
        raise InputError(f"need as many images on both sides, got {len(a)} and {len(b)}")
    return np.concatenate(
        [
            np.asarray(model([a[k : k + batch_size], b[k : k + batch_size]], training=False))
            for k in range(0, len(a), batch_size)
        ]
    ).astype(np.float32)
