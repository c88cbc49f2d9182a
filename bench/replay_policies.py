"""tierwise adaptive against uniform and the published label-free rules, on recorded samples.

For every samples table it knows and every per-query budget (in samples' worth of tokens: the budget at
b is what uniform sampling of b samples per query costs, interpolated between whole b), it replays:

* ``uniform``: b samples per query (``tierwise.pipelines.replay.run.uniform_draws``);
* ``esc``: ESC (arXiv 2401.10480), windows of ``--esc-window`` samples, a query stops after its first
  unanimous window;
* ``adaptive_consistency``: Adaptive-Consistency (arXiv 2305.11860), a query stops once P(leader is the
  mode) >= 0.95 (Beta criterion);
* ``rr_until_verified`` (tables with a checker): a query stops at its first verified sample
  (verified_yield: at its yield cap);
* ``adaptive``: tierwise's own policy, exactly as ``tierwise replay --policy adaptive`` runs it.

The baselines spend the budget round-robin: each round, every query that has not stopped draws its
next sample (ESC: window), queries in a seeded order, until the budget ends or every query stopped.
Every policy is charged by the same cost table (``ReplayTable.cumcost``) and scored on every query. One
JSON line per (table, budget, policy); then one summary line per table with the worst margins.

Usage:
    python bench/replay_policies.py [--tables demo,math,...] [--budgets 1,1.5,2,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "data", "demo_samples.parquet")
MATH = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data",
                    "math_qwen25math1.5b_probe_checked.parquet")
BUDGETS = (1, 1.5, 2, 3, 4, 6, 8, 16, 32)


def tables(names: list[str]):
    """Yields (name, objective, polars frame) for each known table that is present."""
    import polars as pl

    from tierwise.pipelines.replay.synthetic import synthetic_samples

    for name in names:
        if name.startswith("math"):
            if not os.path.exists(MATH):
                print(json.dumps({"table": name, "skipped": f"{MATH} not found"}), flush=True)
                continue
            df = pl.read_parquet(MATH)
            if "nohint" in name:
                df = df.drop("difficulty_hint")
            if "nochecker" in name:
                df = df.drop("verifier_score")
            yield name, "coverage", df
        elif name == "demo":
            yield name, "accuracy", pl.read_parquet(DEMO)
        elif name == "demo_majority":
            yield name, "accuracy", pl.read_parquet(DEMO).drop("verifier_score")
        elif name.startswith("synthetic"):
            # synthetic[_N][_verifier]: easy / headroom / hopeless mix with clustered wrong answers.
            parts = name.split("_")
            q = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 2000
            verifier = "verifier" in parts
            df = synthetic_samples(q, 40, seed=q).drop("population")
            if verifier:  # a checker (a reference-answer check): verdict = correct
                df = df.with_columns(pl.col("correct").cast(pl.Float32).alias("verifier_score"))
            yield name, "coverage" if verifier else "accuracy", df


def round_robin(table, budget: float, unit: str, order: np.ndarray, step: int, stopped) -> np.ndarray:
    """[Q] samples drawn when every query not yet stopped draws ``step`` more per round, in ``order``,
    until the budget ends. ``stopped(n)`` says, for draws n, which queries stop."""
    cost = table.cumcost(unit)
    q, width = table.shape
    ar = np.arange(q)
    drawn = np.zeros(q, dtype=np.int64)
    left = float(budget)
    done = np.zeros(q, dtype=bool)
    while True:
        active = order[~done[order] & (drawn[order] < table.n_available[order])]
        if not len(active):
            break
        nxt = np.minimum(drawn[active] + step, table.n_available[active])
        extra = cost[active, nxt] - cost[active, drawn[active]]
        fits = np.cumsum(extra) <= left + 1e-9
        take = active[fits]
        drawn[take] = nxt[fits]
        left -= float(extra[fits].sum())
        if not fits.all():
            break
        done[take] = stopped(drawn)[take]
    del ar
    return drawn


def baselines(table, objective: str, budget: float, unit: str, order: np.ndarray, esc_window: int,
              verifier_pass: float, yield_cap: int) -> dict[str, np.ndarray]:
    from tierwise.pipelines.plan.stopping import mode_probability

    q = table.shape[0]
    ar = np.arange(q)
    votes = table.votes()
    out = {}

    def esc_stop(n):
        w = esc_window
        k = np.maximum(n, 1)
        window = np.arange(w)[None, :] + (k - w)[:, None]
        ok = (n >= w) & (n % w == 0)
        idx = np.clip(window, 0, table.shape[1] - 1)
        c = np.take_along_axis(table.codes, idx, axis=1)
        v = np.take_along_axis(table.valid, idx, axis=1)
        return ok & ((c == c[:, :1]) & v).all(axis=1)

    def ac_stop(n):
        k = np.maximum(n - 1, 0)
        p = mode_probability(votes.top[ar, k], votes.second[ar, k])
        return (n > 0) & (p >= 0.95)

    out["esc"] = round_robin(table, budget, unit, order, esc_window, esc_stop)
    out["adaptive_consistency"] = round_robin(table, budget, unit, order, 1, ac_stop)
    if table.verifier_score is not None:
        ver = np.cumsum(np.nan_to_num(table.verifier_score, nan=0.0) >= verifier_pass, axis=1)
        need = yield_cap if objective == "verified_yield" else 1

        def verified(n):
            return (n > 0) & (ver[ar, np.maximum(n - 1, 0)] >= need)

        out["rr_until_verified"] = round_robin(table, budget, unit, order, 1, verified)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="math,math_nohint,math_nochecker,math_nochecker_nohint,demo,"
                                        "demo_majority,synthetic_200,synthetic_2000,synthetic_2000_verifier")
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS))
    ap.add_argument("--unit", default="tokens", choices=["tokens", "samples"])
    ap.add_argument("--esc-window", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tierwise.pipelines.replay.run import _finish, replay, uniform_draws
    from tierwise.pipelines.replay.table import build_table

    budgets = [float(b) for b in args.budgets.split(",")]
    for name, objective, df in tables(args.tables.split(",")):
        t0 = time.perf_counter()
        table = build_table(df)
        order = np.argsort(table.split_hash(args.seed), kind="stable")
        totals = table.cumcost(args.unit).sum(axis=0)
        calib = np.zeros(table.shape[0], dtype=bool)
        worst = {"vs_uniform": np.inf, "vs_best_baseline": np.inf}
        for b in budgets:
            lo = int(np.floor(b))
            hi = min(lo + 1, len(totals) - 1)
            budget = float(totals[min(lo, len(totals) - 1)] + (b - lo) * (totals[hi] - totals[min(lo, len(totals) - 1)]))
            draws = {"uniform": uniform_draws(table, budget, args.unit, order)[0]}
            draws |= baselines(table, objective, budget, args.unit, order, args.esc_window, 1.0, 4)
            scores = {}
            for policy, drawn in draws.items():
                r = _finish(table, policy, objective, budget, args.unit, drawn, calib, {})
                scores[policy] = r.score
                print(json.dumps({"table": name, "objective": objective, "per_query": b, "policy": policy,
                                  "budget": round(budget, 1), "spent": r.spent, "score": round(r.score, 5)}),
                      flush=True)
            r = replay(table, budget, args.unit, objective, "adaptive", calibration_fraction=0.0, seed=args.seed,
                       progress=lambda m: None)
            print(json.dumps({"table": name, "objective": objective, "per_query": b, "policy": "adaptive",
                              "budget": round(budget, 1), "spent": r.spent, "score": round(r.score, 5),
                              "details": {k: v for k, v in r.details.items() if k != "buckets"}}), flush=True)
            best = max(v for k, v in scores.items() if k != "uniform")
            worst["vs_uniform"] = min(worst["vs_uniform"], 100 * (r.score - scores["uniform"]))
            worst["vs_best_baseline"] = min(worst["vs_best_baseline"], 100 * (r.score - best))
        print(json.dumps({"table": name, "summary": True, "worst_points_vs_uniform": round(worst["vs_uniform"], 2),
                          "worst_points_vs_best_baseline": round(worst["vs_best_baseline"], 2),
                          "goal_met": worst["vs_uniform"] >= -0.2 and worst["vs_best_baseline"] >= -0.3,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
