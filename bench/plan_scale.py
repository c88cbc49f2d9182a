"""Planning at scale: difficulty, buckets and allocation for 10 million rows.

Synthetic pilot features and per-bucket curves (no engine): fits the difficulty
model on a 20,000-row calibration slice, predicts difficulty for every row,
buckets by quantiles, and allocates a budget over per-bucket options with the
same allocator live runs and replay use. Prints one JSON line with wall times
and peak memory (goal: under 10 s and 4 GiB for 10M rows on 2 cores).

    python bench/plan_scale.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--buckets", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tierwise.pipelines.plan.allocation import BucketOptions, Option, allocate
    from tierwise.pipelines.plan.calibration import assign_buckets, fit_difficulty_model, quantile_edges

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    p = rng.choice([0.97, 0.45, 0.0], size=args.rows, p=[0.5, 0.3, 0.2])       # true success rate
    feats = np.column_stack([
        np.clip(p + rng.normal(0, 0.15, args.rows), 0, 1),                   # pilot agreement
        np.log1p(60 + 40 * (1 - p) + rng.normal(0, 8, args.rows)),            # log pilot tokens
        -0.05 - 0.4 * (1 - p) + rng.normal(0, 0.05, args.rows),               # mean logprob
    ])
    t_gen = time.perf_counter() - t0

    t1 = time.perf_counter()
    cal = rng.choice(args.rows, size=20_000, replace=False)
    model = fit_difficulty_model(feats[cal], p[cal], ["agreement", "log_tokens", "mean_logprob"])
    difficulty = 1.0 - model.predict(feats)
    edges = quantile_edges(difficulty[cal], args.buckets)
    bucket = assign_buckets(difficulty, edges)
    counts = np.bincount(bucket, minlength=len(edges) + 1)
    t_bucket = time.perf_counter() - t1

    t2 = time.perf_counter()
    buckets = []
    for b, n in enumerate(counts):
        q = float(p[cal][assign_buckets(difficulty[cal], edges) == b].mean())
        opts = [Option("skip", 0.0, 0.0)] + [
            Option(f"vote@{k}", 80.0 * k, 1 - (1 - q) ** (1 + np.log2(k))) for k in (1, 2, 4, 8, 16)]
        buckets.append(BucketOptions(b, int(n), tuple(opts)))
    budget = 160.0 * args.rows
    alloc = allocate(buckets, budget)
    t_alloc = time.perf_counter() - t2

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({
        "bench": "plan_scale", "rows": args.rows, "buckets": int(len(counts)),
        "difficulty_and_buckets_s": round(t_bucket, 3), "allocate_s": round(t_alloc, 4),
        "plan_s": round(t_bucket + t_alloc, 3), "synthetic_features_s": round(t_gen, 3),
        "peak_rss_gib": round(peak_gib, 2), "budget": budget, "expected_cost": alloc.cost,
        "expected_score_per_row": alloc.score / args.rows,
        "goal_under_10s": t_bucket + t_alloc < 10, "goal_under_4gib": peak_gib < 4,
    }))


if __name__ == "__main__":
    main()
