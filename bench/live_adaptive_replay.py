"""The live adaptive driver replayed on recorded samples: what ``adaptive_vs_uniform`` would measure.

``tierwise.jobs.adaptive_driver`` runs a calibration slice (rows at K samples, one request each), plans with
``tierwise.pipelines.plan.adaptive.plan_from_calibration`` and runs the rest with the plan (``plan_draws`` is the
columnar twin of the live ``AdaptiveTier``), re-planning from actual spend as parts commit. This
bench does the same over ``bench/data/demo_samples.parquet`` in seconds, so a change to the plan can
be measured before the 25-minute live bench:

- uniform verifier best-of-n at n = 4 and 8 (one request of n samples: the prompt is paid once);
- adaptive at 30% of uniform n=8's tokens and at uniform n=4's tokens, with in-run calibration
  (``--calibration-rows`` rows, K samples each, charged to adaptive's budget) and "nightly" (the plan
  from other recorded rows, nothing charged).

Rows are the recorded queries; calibration rows score their K-sample vote, as live. Accuracy is the
verifier-weighted vote over each row's drawn samples, graded by the recorded ``correct``. Prints one
JSON line per policy and budget.

    python bench/live_adaptive_replay.py [--estimators pilot,features] [--calibration-rows 107] [--mean]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import polars as pl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo_samples.parquet")


def live_run(df: pl.DataFrame, budget: float, *, estimators: tuple[str, ...], cal_rows: int, k: int,
             seed: int, chunks: int, prior: pl.DataFrame | None = None, truncate: bool = False, gate_min_rows: int | None = 8,
             n_buckets: int | None = None,
             cal_round: int = 2, **plan_kw) -> dict:
    """One simulated adaptive run over the queries of ``df`` (all of them output rows).

    Args:
        budget: Tokens, calibration included.
        cal_rows: Calibration rows (in hash order), each drawing its first ``k`` samples in one request.
        chunks: Re-plans (pacing) over the main rows, each from the spend so far.
        prior: Samples of other queries to plan from instead of calibrating (nightly); cal_rows ignored.
        plan_kw: Passed to ``plan_from_calibration`` (e.g. ``round_size``).
    """
    from tierwise.pipelines.plan.adaptive import plan_draws, plan_from_calibration
    from tierwise.pipelines.plan.calibration import stable_hash01
    from tierwise.pipelines.plan.rules import AdaptiveConfig, round_cumcost, round_draws
    from tierwise.pipelines.replay.table import build_table

    table = build_table(df)
    q = table.shape[0]
    order = np.argsort(stable_hash01(table.query_ids, seed), kind="stable")
    acc = table.scores("accuracy")
    cfg = AdaptiveConfig(estimators=estimators, gate_min_rows=gate_min_rows, **({"n_buckets": n_buckets} if n_buckets else {}))
    if prior is None:
        cal = order[:cal_rows]
        main = order[cal_rows:]
        kk = np.minimum(k, table.n_available[cal])
        if truncate:  # CalibrationTier: a pilot sample, then rounds, until a sample verifies (score 1)
            first = np.where((table.verifier_score[cal, :k] >= 1.0).any(axis=1),
                             (table.verifier_score[cal, :k] >= 1.0).argmax(axis=1) + 1, kk)
            kk = np.minimum(round_draws(first, np.ones_like(first), cal_round, kk), kk)
            cal_cost = float(round_cumcost(table, "tokens", 1, cal_round)[cal, kk].sum())
        else:
            cal_cost = float(table.cumcost("tokens")[cal, kk].sum())
        cal_ids = table.query_ids.gather(cal)
        keep = pl.DataFrame({"query_id": cal_ids, "_k": kk})
        samples = (df.join(keep, on="query_id").filter(pl.col("sample_idx") < pl.col("_k")).drop("_k"))
        hit = acc[cal, kk].sum()
    else:
        main, cal_cost, hit, samples = order, 0.0, 0.0, prior
    spent = cal_cost
    n_drawn = np.zeros(q, dtype=np.int64)
    buckets = np.full(q, -1)
    parts = [c for c in np.array_split(main, max(1, chunks)) if c.size]
    left = len(main)
    plan = None
    for part in parts:
        plan, _ = plan_from_calibration(samples, rows_remaining=left, budget_remaining=max(budget - spent, 0.0),
                                        unit="tokens", objective="accuracy", config=cfg, seed=seed, **plan_kw)
        sub = df.filter(pl.col("query_id").is_in(table.query_ids.gather(part).implode()))
        d = plan_draws(plan, sub)
        idx = {qid: i for i, qid in enumerate(table.query_ids.to_list())}
        ri = np.array([idx[x] for x in d["query_id"].to_list()])
        n = d["n_drawn"].to_numpy()
        cost = round_cumcost(table, "tokens", plan.pilot, plan.round_size)[ri, n]
        cost = np.where(n > 0, cost, 0.0)
        cum = np.cumsum(cost)
        fits = cum <= budget - spent + 1e-9  # the ledger: a row that does not fit is skipped (skipped_budget)
        n = np.where(fits, n, 0)
        n_drawn[ri] = n
        buckets[ri] = d["bucket"].fill_null(-1).to_numpy()
        spent += float(cost[fits].sum())
        hit += float(acc[ri, n].sum())
        left -= len(part)
    per_bucket = {}
    for b in np.unique(buckets[main]):
        m = main[buckets[main] == b]
        per_bucket[int(b)] = {"rows": int(m.size), "mean_n": round(float(n_drawn[m].mean()), 2),
                              "acc": round(float(acc[m, n_drawn[m]].mean()), 3)}
    return {"accuracy": hit / q, "spent": spent, "budget": budget, "calibration_spent": cal_cost,
            "pilot": plan.pilot if plan else None, "buckets": per_bucket}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", nargs="?", default=DEFAULT_SAMPLES)
    ap.add_argument("--estimators", default="pilot,features")
    ap.add_argument("--calibration-rows", type=int, default=107,
                    help="the live bench's 160 of 3,000 rows, scaled to the recorded 2,000")
    ap.add_argument("--k", type=int, default=12, help="calibration samples per row (policy.calibration_samples)")
    ap.add_argument("--chunks", type=int, default=8, help="re-plans over the main rows")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-truncate", dest="truncate", action="store_false",
                    help="calibration rows draw all K samples (before CalibrationTier stopped them when verified)")
    ap.add_argument("--summary", action="store_true", help="print accuracy gaps and spend only")
    ap.add_argument("--gate-min-rows", type=int, default=8, help="the features-only gate; 0: no gate")
    ap.add_argument("--n-buckets", type=int, default=None)
    ap.add_argument("--mean", action="store_true", help="print only the mean gaps over the seeds")
    args = ap.parse_args()

    from tierwise.pipelines.replay.table import build_table, load_samples

    df = load_samples(args.samples)
    ids = df["query_id"].unique().sort()
    est = tuple(args.estimators.split(","))
    gaps: dict[str, list] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        line = {"seed": seed}
        # In-run calibration on every recorded row; nightly plans from one half's first K samples
        # ("last night") and runs the other half.
        half = ids.filter(ids.hash(seed) % 2 == 0).implode()
        for mode, run_df, prior in (("adaptive", df, None),
                                    ("nightly", df.filter(pl.col("query_id").is_in(half)),
                                     df.filter(~pl.col("query_id").is_in(half) & (pl.col("sample_idx") < args.k)))):
            table = build_table(run_df)
            rows = np.arange(table.shape[0])
            acc = table.scores("accuracy")
            uni = {}
            for n in (4, 8):
                nn = np.minimum(n, table.n_available)
                uni[n] = {"accuracy": round(float(acc[rows, nn].mean()), 4),
                          "spent": float(table.cumcost("tokens")[rows, nn].sum())}
            line[f"{mode}_rows"], line[f"{mode}_uniform"] = int(table.shape[0]), uni
            for name, budget in (("30pct_n8", 0.3 * uni[8]["spent"]), ("at_n4", uni[4]["spent"])):
                r = live_run(run_df, budget, estimators=est, cal_rows=args.calibration_rows, k=args.k, seed=seed,
                             chunks=args.chunks, prior=prior, truncate=args.truncate,
                             gate_min_rows=args.gate_min_rows or None, n_buckets=args.n_buckets)
                r["gap_pt"] = round(100 * (r["accuracy"] - uni[8 if name == "30pct_n8" else 4]["accuracy"]), 2)
                line[f"{mode}_{name}"] = r
        line["s"] = round(time.perf_counter() - t0, 1)
        for key, v in line.items():
            if isinstance(v, dict) and "gap_pt" in v:
                gaps.setdefault(key, []).append((v["gap_pt"], v["spent"] / v["budget"]))
        if args.mean:
            continue
        if args.summary:
            line = {k: (f"{v['gap_pt']:+.2f}pt {v['spent']/v['budget']:.3f} cal={v['calibration_spent']:.0f}"
                        if isinstance(v, dict) and "gap_pt" in v else v) for k, v in line.items()
                    if not k.endswith("_uniform")}
        print(json.dumps(line), flush=True)
    print(json.dumps({"mean_over_seeds": {k: {"gap_pt": round(float(np.mean([g for g, _ in v])), 2),
                                              "min_gap_pt": round(float(np.min([g for g, _ in v])), 2),
                                              "utilization": round(float(np.mean([u for _, u in v])), 3)}
                                          for k, v in gaps.items()}, "seeds": args.seeds}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
