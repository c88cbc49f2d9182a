"""How much coverage any label-free policy can buy on a samples table with a perfect checker.

An oracle-prior bound: the policy is told the true histogram of per-query solve rates (the recorded
draws' rate per query, optionally within quantile bins of ``difficulty_hint``), but not which query
has which rate, and sees each draw's verdict as it comes. For coverage (stop at the first verified
sample) its best rule is known: the k+1-th draw of a query with k failures succeeds with the hazard
``h_k = E[p (1-p)^k] / E[(1-p)^k]`` under its bin's prior, which falls with k (a mixture of
geometrics), so the Bayes policy buys (bin, k) layers in falling hazard order while the budget lasts
(the last layer for a random share of its queries). It is replayed on the recorded draws in their
order, charged one unit per sample drawn, exactly as ``tierwise replay`` charges budget unit
``samples``. The histogram is the queries' own, so no policy that learns its prior from the data can
beat it by more than the noise of a fraction of the draws.

One JSON line per (table, bins, budget): the bound's coverage and spend beside uniform@32's coverage,
the issue's goal (uniform@32 - 0.5 points) and round-robin-until-verified's coverage at that budget.

Usage:
    python bench/coverage_bound.py [--samples PATH] [--budgets 1,2,3,4,5,6,8] [--bins 1,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import polars as pl

HERE = os.path.dirname(os.path.abspath(__file__))
MATH = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data",
                    "math_qwen25math1.5b_probe_checked.parquet")


def verdicts(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[Q, S] verdicts in draw order (``verifier_score >= 0.5``, else ``correct``), and the hint per query."""
    df = pl.read_parquet(path).sort("query_id", "sample_idx")
    col = (pl.col("verifier_score") >= 0.5) if "verifier_score" in df.columns else pl.col("correct")
    wide = df.group_by("query_id", maintain_order=True).agg(col.alias("v"), pl.col("difficulty_hint").first()
                                                            if "difficulty_hint" in df.columns else pl.lit(None))
    v = np.array(wide["v"].to_list(), dtype=bool)
    hint = wide["difficulty_hint"].to_numpy() if "difficulty_hint" in wide.columns else None
    return v, hint


def first_success(v: np.ndarray) -> np.ndarray:
    """Index of each query's first verified draw (S when none)."""
    return np.where(v.any(axis=1), v.argmax(axis=1), v.shape[1])


def hazards(rates: np.ndarray, width: int) -> np.ndarray:
    """[width] hazard of draw k+1 after k failures under the empirical prior ``rates``."""
    k = np.arange(width)[:, None]
    surv = (1.0 - rates[None, :]) ** k
    return (rates[None, :] * surv).sum(1) / np.maximum(surv.sum(1), 1e-300)


def bound(v: np.ndarray, bins: np.ndarray, budget: float, seed: int = 0) -> tuple[float, float]:
    """Coverage and spend of the oracle-prior Bayes policy at a total ``budget`` of samples."""
    q, width = v.shape
    first = first_success(v)
    rates = v.mean(axis=1)
    layers = []  # (hazard, bin, k): the k+1-th draw of the bin's queries that failed k times
    for b in np.unique(bins):
        h = hazards(rates[bins == b], width)
        layers += [(h[k], b, k) for k in range(width)]
    layers.sort(key=lambda t: -t[0])
    n = np.zeros(q, dtype=np.int64)  # draws granted per query
    left = float(budget)
    rng = np.random.default_rng(seed)
    for _, b, k in layers:
        waiting = np.flatnonzero((bins == b) & (first >= k) & (n == k))  # failed k times: draw k+1 is next
        if len(waiting) == 0:
            n[bins == b] = np.maximum(n[bins == b], k + 1)
            continue
        if len(waiting) > left:
            waiting = rng.permutation(waiting)[: int(left)]
        n[waiting] = k + 1
        left -= len(waiting)
        solved_before = (bins == b) & (first < k)
        n[solved_before] = np.maximum(n[solved_before], k + 1)  # stopped already: costs nothing more
        if left < 1:
            break
    spent = np.minimum(n, first + 1).sum()
    return float((first < n).mean()), float(spent)


def round_robin(v: np.ndarray, budget: float) -> float:
    """Coverage of sampling round-robin until verified (every unverified query draws its next sample)."""
    first = first_success(v)
    left, n = float(budget), np.zeros(len(v), dtype=np.int64)
    for k in range(v.shape[1]):
        waiting = np.flatnonzero(first >= k)
        if len(waiting) > left:
            waiting = waiting[: int(left)]
        n[waiting] = k + 1
        left -= len(waiting)
        if left < 1:
            break
    return float((first < n).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default=MATH)
    ap.add_argument("--budgets", default="1,2,3,4,5,6,8")
    ap.add_argument("--bins", default="1,4,8,16,32", help="quantile bins of difficulty_hint the prior is told")
    args = ap.parse_args()
    v, hint = verdicts(args.samples)
    q = len(v)
    uniform32 = float(v[:, :32].any(axis=1).mean())
    for k in [int(x) for x in args.bins.split(",")]:
        if k > 1 and hint is None:
            continue
        bins = np.zeros(q, dtype=np.int64) if k == 1 else np.searchsorted(
            np.quantile(hint, np.linspace(0, 1, k + 1)[1:-1]), hint, side="right")
        for b in [float(x) for x in args.budgets.split(",")]:
            cov, spent = bound(v, bins, b * q)
            print(json.dumps({"bench": "coverage_bound", "table": os.path.basename(args.samples), "queries": q,
                              "hint_bins": k, "budget_per_query": b, "bound_coverage": round(cov, 4),
                              "spent_per_query": round(spent / q, 3), "uniform32": round(uniform32, 4),
                              "goal": round(uniform32 - 0.005, 4),
                              "rr_until_verified": round(round_robin(v, b * q), 4)}), flush=True)


if __name__ == "__main__":
    main()
