"""Replay at scale: 1,000,000 queries x 16 samples (synthetic) through both policies.

Goal: read + lay out + replay in under 60 s and under 8 GiB on a 2-core machine. The synthetic table is
written to Parquet by a child process first, so its generation neither counts in the time nor in the
peak RSS. Prints one JSON line per policy:
``{"queries", "samples", "policy", "objective", "budget", "wall_s", "load_s", "replay_s", "peak_rss_gib", ...}``
where ``wall_s`` = load (read Parquet + validate + dense layout) + that replay, ``total_s`` = load + both
replays, and ``peak_rss_gib`` is the process peak after all policies ran.

Usage: python bench/replay_scale.py [--queries 1000000] [--samples 16] [--budget-per-query 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generate(path: str, queries: int, samples: int, seed: int) -> None:
    from tierwise.pipelines.replay.synthetic import synthetic_samples

    synthetic_samples(queries, samples, seed=seed).drop("population").write_parquet(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--budget-per-query", type=float, default=6.0, help="budget in samples per query")
    ap.add_argument("--objective", default="accuracy", choices=["accuracy", "coverage"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--file", help="reuse this Parquet file instead of generating one")
    ap.add_argument("--generate-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        _generate(args.generate_only, args.queries, args.samples, args.seed)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or os.path.join(tmp, "samples.parquet")
        if not args.file:
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate-only", path, "--queries", str(args.queries),
                            "--samples", str(args.samples), "--seed", str(args.seed)], check=True)
            print(f"generated {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        from tierwise.pipelines.replay.run import replay
        from tierwise.pipelines.replay.table import build_table, load_samples

        t0 = time.perf_counter()
        table = build_table(load_samples(path))
        load_s = time.perf_counter() - t0
        budget = args.budget_per_query * args.queries
        lines = []
        for policy in ("uniform", "adaptive"):
            t = time.perf_counter()
            r = replay(table, budget, "samples", args.objective, policy, seed=args.seed,
                       progress=lambda m: print(m, file=sys.stderr))
            replay_s = time.perf_counter() - t
            lines.append({"queries": r.queries, "samples": int(table.n_available.sum()), "policy": policy,
                          "objective": args.objective, "budget": budget, "spent": r.spent, "score": round(r.score, 5),
                          "mean_samples_per_query": round(r.mean_samples_per_query, 3),
                          "load_s": round(load_s, 2), "replay_s": round(replay_s, 2)})
        # The first policy also builds the vote tables both share, so wall_s (load + this replay) of the
        # second is optimistic by that much; total_s is load + both replays.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        total = round(load_s + sum(line["replay_s"] for line in lines), 2)
        for line in lines:
            line["wall_s"] = round(line["load_s"] + line["replay_s"], 2)
            line["total_s"] = total
            line["peak_rss_gib"] = round(peak, 2)
            print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
