"""How little budget does the adaptive policy need to match uniform n=32?

For each objective (accuracy, coverage): replay ``uniform`` at n samples per query (default 32, all
queries, calibration queries included), then search the smallest budget at which ``adaptive`` scores
within ``--tolerance`` (default 0.5 points) of it. Prints one JSON line per objective:
``{"objective", "uniform32_score", "uniform32_spent", "adaptive_budget", "adaptive_score", "ratio", ...}``
with ``ratio = adaptive_budget / uniform32_spent`` (goal: <= 0.25). Both policies are scored on the same
non-calibration queries; adaptive's calibration spend counts in its budget.

Usage:
    python bench/replay_adaptive.py [SAMPLES.parquet]     # default bench/data/demo_samples.parquet
    python bench/replay_adaptive.py --synthetic [--queries 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo_samples.parquet")


def smallest_matching_budget(table, target: float, hi: float, unit: str, objective: str, seed: int,
                             grid: int = 40, refine: int = 8) -> tuple[float | None, float | None]:
    """Smallest budget (within a geometric grid, refined by bisection) where adaptive scores >= target.

    Returns:
        (budget, adaptive score there), or (None, None) when even ``hi`` falls short.
    """
    from tierwise.pipelines.replay.run import replay

    def score(b: float) -> float:
        return replay(table, b, unit, objective, "adaptive", seed=seed, progress=lambda m: None).score

    lo_b = None
    for b in np.geomspace(0.02 * hi, hi, grid):
        s = score(b)
        if s >= target:
            best = (float(b), s)
            break
        lo_b = float(b)
    else:
        return None, None
    if lo_b is not None:  # bisect between the last miss and the first hit
        left, right = lo_b, best[0]
        for _ in range(refine):
            mid = (left + right) / 2
            s = score(mid)
            if s >= target:
                right, best = mid, (mid, s)
            else:
                left = mid
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", nargs="?", default=DEFAULT_SAMPLES)
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic table instead of a file")
    ap.add_argument("--queries", type=int, default=4000, help="synthetic queries")
    ap.add_argument("--n", type=int, default=32, help="uniform samples per query to match")
    ap.add_argument("--tolerance", type=float, default=0.005, help="score gap allowed (0.005 = 0.5 points)")
    ap.add_argument("--budget-unit", choices=["samples", "tokens"], default="samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tierwise.pipelines.replay.run import prepare, replay

    t0 = time.perf_counter()
    if args.synthetic:
        from tierwise.pipelines.replay.synthetic import synthetic_samples

        source = f"synthetic:{args.queries}x{args.n}:seed{args.seed}"
        table = prepare(synthetic_samples(args.queries, args.n, seed=args.seed))
    else:
        if not os.path.exists(args.samples) and "://" not in args.samples:
            print(f"no samples file at {args.samples}; record one with `tierwise sample` or pass --synthetic",
                  file=sys.stderr)
            return 2
        source = args.samples
        table = prepare(args.samples)
    rows = np.arange(table.shape[0])
    n = min(args.n, table.shape[1])
    for objective in ("accuracy", "coverage"):
        t = time.perf_counter()
        full = float(table.cumcost(args.budget_unit)[rows, np.minimum(n, table.n_available)].sum())
        u = replay(table, full, args.budget_unit, objective, "uniform", seed=args.seed)
        budget, score = smallest_matching_budget(table, u.score - args.tolerance, u.spent, args.budget_unit,
                                                 objective, args.seed)
        print(json.dumps({
            "objective": objective, "source": source, "queries": table.shape[0], "budget_unit": args.budget_unit,
            f"uniform{n}_score": round(u.score, 5), f"uniform{n}_spent": u.spent,
            "adaptive_budget": None if budget is None else round(budget, 1),
            "adaptive_score": None if score is None else round(score, 5),
            "ratio": None if budget is None else round(budget / u.spent, 4),
            "tolerance": args.tolerance, "search_s": round(time.perf_counter() - t, 2),
        }), flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
