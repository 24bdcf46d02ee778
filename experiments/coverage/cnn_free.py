"""The restricted-coverage study without a CNN: which head can represent d_q, which recovery finds what.

Features that are smooth functions of the orientation (``cryo_orient.estimation.continuous``) are
fitted to d_q with each head on a coverage set; the distances they give for held-out orientations
are recovered with our recovery (uniform SO(3) start, 3 restarts, lowest loss kept), ours from the
paper's Euler box, and the paper's (one Adam run from its box). Prints, per case, E_OR median /
mean after alignment, L_OR beside Eq. 4's loss at the true orientations, and the topology check.

    python experiments/coverage/cnn_free.py [--coverage quarter half full] [--heads cosine squared_cosine]
"""

import argparse
import time
import warnings

import numpy as np

from cryo_orient.estimation import siamese
from cryo_orient.estimation.continuous import fit_features
from cryo_orient.geometry import rotations
from cryo_orient.orientation import alignment, recovery

COVERAGES = {"full": (2.0, 1.0, 2.0), "half": (2.0, 0.4, 2.0), "quarter": (2.0, 1.0, 0.4)}
RECOVERIES = {
    "ours": dict(mode="improved", init="uniform_so3", restarts=3),
    "ours, Euler-box start": dict(mode="improved", init="uniform_euler", restarts=3),
    "paper's": dict(mode="faithful", restarts=1),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", nargs="+", default=["quarter", "half", "full"], choices=sorted(COVERAGES))
    parser.add_argument("--heads", nargs="+", default=["cosine", "squared_cosine"], choices=siamese.FEATURE_DISTANCES)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print("| coverage | head | recovery | E_OR median / mean (rad) | L_OR / at the truth | topology | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.coverage:
        rng = np.random.default_rng(args.seed)
        q_train = rotations.uniform_so3_in_box(args.n_train, COVERAGES[name], rng=rng)
        q_test = rotations.uniform_so3_in_box(args.n_test, COVERAGES[name], rng=rng)
        d_true = rotations.distance(q_test[:, None], q_test[None])
        for head in args.heads:
            features = fit_features(q_train, head, n_features=64, steps=3000, batch=256, seed=args.seed)
            d = siamese.distance_matrix(features(q_test), head).astype(np.float64)
            np.fill_diagonal(d, 0.0)
            d = np.clip((d + d.T) / 2, 0.0, np.pi)
            at_truth = float(np.mean((d - d_true) ** 2))
            for label, settings in RECOVERIES.items():
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # the topology verdict is printed
                    r = recovery.recover(d, args.n_test, rng=0, progress=False, **settings)
                a = alignment.align(q_test, r.quaternions)
                verdict = "likely unwound" if r.topology["unwound"] else "not unwound"
                print(
                    f"| {name} | {head} | {label} | {a.median_error:.3f} / {a.mean_error:.3f} | "
                    f"{r.final_loss:.4f} / {at_truth:.4f} | {verdict} ({100 * r.topology['frustrated_fraction']:.1f} %)"
                    f" | {time.perf_counter() - t0:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
