"""Why medvlp keeps its own AUROC bootstrap: the vectorised replicates against scikit-learn's ``roc_auc_score``
called once per replicate, on the same resampled rows (same numbers, measured in the same run).

    .venv/bin/python bench/bootstrap_auroc.py [--n 500] [--n-boot 1000] [--classes 20]

Prints, for one AUROC with its CI and for a table of ``--classes`` classes (what every zero-shot model's
findings cost), the seconds of each and the ratio sklearn / medvlp, and checks that both CIs agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from medvlp.eval.metrics import _bootstrap_blocks, bootstrap_auroc  # noqa: E402


def sklearn_bootstrap(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The same percentile CI with ``roc_auc_score`` on each replicate of medvlp's resampled rows."""
    reps = []
    for block in _bootstrap_blocks(y.size, n_boot, seed):
        for idx in block:
            yi = y[idx]
            reps.append(roc_auc_score(yi, s[idx]) if yi.any() and not yi.all() else np.nan)
    reps = np.asarray(reps)
    reps = reps[np.isfinite(reps)]
    return float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="items (default 500)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the table case (default 20)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.random((args.classes, args.n)) < 0.2
    s = rng.normal(size=(args.classes, args.n)) + y
    t_ours, ours = timed(bootstrap_auroc, y[0], s[0], args.n_boot, 0.05, 0)
    t_sk, (low, high) = timed(sklearn_bootstrap, y[0], s[0], args.n_boot, 0)
    assert abs(ours["ci_low"] - low) < 1e-12 and abs(ours["ci_high"] - high) < 1e-12, (ours, low, high)
    print(f"one AUROC, n={args.n}, {args.n_boot} replicates: medvlp {t_ours:.3f} s, sklearn loop {t_sk:.3f} s, "
          f"ratio {t_sk / t_ours:.1f}x (CIs equal)")
    t_ours = sum(timed(bootstrap_auroc, y[c], s[c], args.n_boot, 0.05, 0)[0] for c in range(args.classes))
    t_sk = sum(timed(sklearn_bootstrap, y[c], s[c], args.n_boot, 0)[0] for c in range(args.classes))
    print(f"{args.classes} classes: medvlp {t_ours:.2f} s, sklearn loop {t_sk:.2f} s, ratio {t_sk / t_ours:.1f}x")


if __name__ == "__main__":
    main()
