"""The recovery engine: one optimisation of the orientations against queried distances.

:func:`cryo_orient.orientation.recovery.recover` validates its inputs, resolves the settings of a
mode and chooses the best of several restarts; this module runs one of them. Its interface:

:func:`run`
    Steps an optimiser from its current state, sampling pairs, querying the distance function
    (through :func:`query`, which checks what it returns), following the stopping rules and the
    learning-rate schedule of :class:`Stopper`; returns the final orientations and losses.
An optimiser
    Holds the ``(n, 4)`` variable and takes ``step(i, j, target, learning_rate) -> loss``,
    ``value()`` and ``reset(q0)``. :class:`TensorFlowAdam` is the one implemented: Adam in
    TensorFlow, XLA-compiled for the improved mode, with the faithful mode's lazy row updates.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from cryo_orient.geometry import rotations
from cryo_orient.validation import InputError, InputTypeError

__all__ = ["Stopper", "TensorFlowAdam", "query", "run", "sample_any_pairs", "sample_distinct_pairs"]

#: Progress-bar postfix refresh period, in steps.
_POSTFIX_EVERY = 50


def query(fn, i, j, step):
    """Call a distance callable and check its output; `step` is reported in errors."""
    where = f"at step {step}" if step is not None else "while evaluating pairs"
    out = fn(i, j)
    try:
        d = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"the distance callable must return an array of real numbers; {where} "
            f"it returned {type(out).__name__}: {exc}"
        ) from None
    if d.shape != i.shape:
        if d.size == i.size:
            d = d.reshape(i.shape)
        else:
            raise InputError(
                f"the distance callable returned shape {d.shape} for {i.size} pairs {where}; "
                "f(i, j) must return one distance per pair, d[k] = d_hat(i[k], j[k])."
            )
    bad = ~np.isfinite(d)
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(
            f"the distance callable returned {int(bad.sum())} NaN or infinite value(s) {where} "
            f"(first: pair ({int(i[k])}, {int(j[k])}) -> {d[k]}); fix the estimator, e.g. guard "
            "divisions by zero norms."
        )
    return d


def sample_distinct_pairs(rng, n, size):
    """Uniform ordered pairs with i != j: j is i plus a non-zero offset modulo n."""
    i = rng.integers(0, n, size)
    j = (i + rng.integers(1, n, size)) % n
    return i, j


def run(opt, fn, n, s, rng, progress, callback, label):
    """One optimisation from the optimiser's current state; returns its outcome as a dict."""
    losses = np.empty(s["max_steps"])
    stop = Stopper(s)
    sample = sample_distinct_pairs if s["mode"] == "improved" else sample_any_pairs
    with tqdm(total=s["max_steps"], disable=not progress, desc=label, unit="step", leave=False) as bar:
        step = 0
        while step < s["max_steps"]:
            i, j = sample(rng, n, s["batch_size"])
            target = query(fn, i, j, step + 1)
            loss = opt.step(i, j, target, stop.learning_rate)
            if not math.isfinite(loss):
                raise RuntimeError(
                    f"the loss became {loss} at step {step + 1} (learning rate "
                    f"{stop.learning_rate:g}); lower learning_rate, or use mode='improved', "
                    "whose distance has finite gradients everywhere."
                )
            losses[step] = loss
            step += 1
            bar.update(1)
            if step % _POSTFIX_EVERY == 0:
                bar.set_postfix(loss=f"{loss:.3e}", lr=f"{stop.learning_rate:.2g}", refresh=False)
            if callback is not None:
                callback(step, loss)
            if stop.done(losses[:step]):
                break
    losses = losses[:step].copy()
    window = min(s["window"], step)
    return {
        "q": rotations.canonical(opt.value()),
        "losses": losses,
        "steps": step,
        "reason": stop.reason or "max_steps",
        "learning_rate": stop.learning_rate,
        "final": float(np.mean(losses[-window:])),
    }


def sample_any_pairs(rng, n, size):
    """The paper's pairs: i and j independent and uniform (i == j possible)."""
    return rng.integers(0, n, size), rng.integers(0, n, size)


class Stopper:
    """The stopping rules and the learning-rate schedule of both modes."""

    def __init__(self, s):
        self.mode = s["mode"]
        self.window = s["window"]
        self.tol = s["tol"]
        self.plateau_tol = s["plateau_tol"]
        self.learning_rate = s["learning_rate"]
        self.patience = s.get("patience", 0)
        self.decay = s.get("decay", 1.0)
        self.decays_left = s.get("max_decays", 0)
        self.arm_fraction = s.get("arm_fraction", 0.0)
        self.arm_steps = s.get("arm_steps", 0)
        self.armed = self.mode == "faithful"
        self.first = None
        self.best = math.inf
        self.bad = 0
        self.reason = None

    def done(self, losses):
        w, k = self.window, len(losses)
        if k < w and self.mode == "faithful":
            return False
        last = float(np.mean(losses[-w:]))
        if last < self.tol:
            # Improved mode checks from step 1: a start at an exact solution stops at once
            # instead of letting Adam, whose steps do not shrink with the gradient when it has
            # no history, jump away by about the learning rate and converge again.
            self.reason = "tolerance"
            return True
        if k < w:
            return False
        if self.mode == "faithful":
            # The paper: |mean(last 1000) - mean(previous 1000)| < 1e-7, checked every step.
            if k >= 2 * w and abs(last - float(np.mean(losses[-2 * w : -w]))) < self.plateau_tol:
                self.reason = "plateau"
                return True
            return False
        if k % w:
            return False
        # Improved: reduce-on-plateau on disjoint windows, then stop once fully decayed.
        if self.first is None:
            self.first = last
        if not self.armed:
            # From a random start the loss sits near its initial level for a few hundred steps
            # (about 1,000 at n = 100,000) before the configuration organises; decaying the
            # rate there stalls it for good (measured: n = 100,000, batch 32,768 "converged"
            # at step 800 with loss 0.82). So plateaus count only once the loss has clearly
            # left that level, or after `arm_steps` (e.g. when started near a solution).
            self.armed = last < self.arm_fraction * self.first or k >= self.arm_steps
            if not self.armed:
                return False
        if last < self.best * (1.0 - self.plateau_tol):
            self.best, self.bad = last, 0
            return False
        self.bad += 1
        if self.bad < self.patience:
            return False
        if self.decays_left == 0:
            self.reason = "plateau"
            return True
        self.learning_rate *= self.decay
        self.decays_left -= 1
        self.bad = 0
        return False


class TensorFlowAdam:
    """The (n, 4) variable, Adam's moments, and a compiled step for either mode."""

    def __init__(self, q0, s, tf):
        self.tf = tf
        self.dtype = tf.float64 if s["dtype"] == "float64" else tf.float32
        np_dtype = self.dtype.as_numpy_dtype
        self.faithful = s["mode"] == "faithful"
        self.var = tf.Variable(q0.astype(np_dtype))
        self.m = tf.Variable(tf.zeros_like(self.var))
        self.v = tf.Variable(tf.zeros_like(self.var))
        self.t = 0
        adam = s["adam"]
        self.b1, self.b2, self.eps = adam["beta1"], adam["beta2"], adam["epsilon"]
        self.np_dtype = np_dtype
        self.normalise = bool(s["normalise_rows"])
        if self.faithful:
            self._step = self._build_faithful()
        else:
            self._step = self._build_improved(jit=True)
        self._jit_checked = self.faithful

    def value(self):
        return self.var.numpy().astype(np.float64)

    def reset(self, q0):
        """Start again from `q0` with fresh Adam state, keeping the compiled step."""
        self.var.assign(q0.astype(self.np_dtype))
        zeros = np.zeros(q0.shape, self.np_dtype)
        self.m.assign(zeros)
        self.v.assign(zeros)
        self.t = 0

    def step(self, i, j, target, learning_rate):
        tf = self.tf
        self.t += 1
        # Adam's bias correction in float64 on the host; the step gets the corrected rate.
        lr_t = learning_rate * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        args = [
            tf.constant(i, tf.int64),
            tf.constant(j, tf.int64),
            tf.constant(target.astype(self.np_dtype)),
            tf.constant(lr_t, self.dtype),
        ]
        if self.faithful:
            rows, counts = np.unique(np.concatenate([i, j]), return_counts=True)
            args += [tf.constant(rows, tf.int64), tf.constant(counts, tf.int64)]
        if not self._jit_checked:
            self._jit_checked = True
            try:
                return float(self._step(*args))
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                # Builds without XLA: the same step, uncompiled (slower, same arithmetic).
                self._step = self._build_improved(jit=False)
        return float(self._step(*args))

    def _build_improved(self, jit):
        tf = self.tf
        var, m, v = self.var, self.m, self.v
        b1, b2, eps, normalise = self.b1, self.b2, self.eps, self.normalise

        @tf.function(jit_compile=jit, reduce_retracing=True)
        def step(i, j, target, lr_t):
            with tf.GradientTape() as tape:
                d = rotations.distance_tf(tf.gather(var, i), tf.gather(var, j))
                loss = tf.reduce_mean(tf.square(d - target))
            # Sparse rows -> dense (n, 4): dense Adam lets momentum keep moving rows that were
            # not drawn this step, which at large n (a row drawn every few steps) speeds it up.
            g = tf.convert_to_tensor(tape.gradient(loss, var))
            m.assign(b1 * m + (1 - b1) * g)
            v.assign(b2 * v + (1 - b2) * tf.square(g))
            new = var - lr_t * m / (tf.sqrt(v) + eps)
            if normalise:
                new = new / tf.norm(new, axis=1, keepdims=True)
            var.assign(new)
            return loss

        return step

    def _build_faithful(self):
        tf = self.tf
        var, m, v = self.var, self.m, self.v
        b1, b2, eps = self.b1, self.b2, self.eps
        shrink = 1.0 - 2.0 * np.finfo(self.np_dtype).eps

        spec = [tf.TensorSpec([None], tf.int64)] * 2 + [
            tf.TensorSpec([None], self.dtype),
            tf.TensorSpec([], self.dtype),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.int64),
        ]

        @tf.function(input_signature=spec)
        def step(i, j, target, lr_t, rows, counts):
            with tf.GradientTape() as tape:
                a = tf.gather(var, i)
                b = tf.gather(var, j)
                a = a / tf.norm(a, axis=1, keepdims=True)
                b = b / tf.norm(b, axis=1, keepdims=True)
                # The paper's d_q: 2 acos(|<a, b>|), the dot product shrunk by (1 - 2 eps) as
                # its safe_shrink did. Rounding can make |<a, a>| exceed 1; clipping to 1 first
                # keeps acos' finite (about -5e7), as a NaN would otherwise appear at i == j.
                dot = tf.minimum(tf.abs(tf.reduce_sum(a * b, axis=1)), 1.0) * shrink
                d = 2.0 * tf.acos(dot)
                loss = tf.reduce_mean(tf.square(d - target))
            g = tf.gather(tf.convert_to_tensor(tape.gradient(loss, var)), rows)
            x, mr, vr = tf.gather(var, rows), tf.gather(m, rows), tf.gather(v, rows)
            # A row drawn k times is updated k times with the same total gradient (see the module
            # docstring); rows with fewer appearances keep their values in later rounds.
            for_rounds = tf.reduce_max(counts)
            r = tf.constant(0, tf.int64)

            def body(r, x, mr, vr):
                live = (counts > r)[:, None]
                m_new = b1 * mr + (1 - b1) * g
                v_new = b2 * vr + (1 - b2) * tf.square(g)
                x_new = x - lr_t * m_new / (tf.sqrt(v_new) + eps)
                return (r + 1, tf.where(live, x_new, x), tf.where(live, m_new, mr), tf.where(live, v_new, vr))

            _, x, mr, vr = tf.while_loop(lambda r, *_: r < for_rounds, body, (r, x, mr, vr))
            var.scatter_nd_update(rows[:, None], x)
            m.scatter_nd_update(rows[:, None], mr)
            v.scatter_nd_update(rows[:, None], vr)
            return loss

        return step
