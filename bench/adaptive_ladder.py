"""The adaptive policy's ladder: stop rules alone vs stop rules plus think and search rungs, same budget.

On a held-out demo set, runs the adaptive policy (verifier best-of-n) with the default ladder and with
``[best_of_n, think, search]`` at the same token budget, through the ``tierwise run`` path; rung
calibration counts in the second run's spend. ``--max-tokens`` below the longest traces (8-digit traces
take about 120 tokens) is where ``think`` (``--think-max-tokens``) can buy what more samples cannot.
One JSON line per run: accuracy, spend, calibration spend, the rungs' measured cost and score, and the
tier each bucket got.

    python bench/adaptive_ladder.py --rows 400 --budget-per-row 400
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--part-rows", type=int, default=25)
    ap.add_argument("--budget-per-row", type=float, default=400.0, help="tokens per row, calibration included")
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--think-max-tokens", type=int, default=240)
    ap.add_argument("--rung-rows", type=int, default=32)
    args = ap.parse_args()

    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec
    from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="tw-ladder-"))
    data = tmp / "heldout.parquet"
    generate_dataset(args.rows, DEMO_MIX, seed=args.seed).write_parquet(data)
    budget = args.budget_per_row * args.rows

    def spec(name: str, policy: dict) -> dict:
        return {"name": name, "input": {"path": str(data), "gold_column": "gold"},
                "output": {"path": str(tmp / name), "part_rows": args.part_rows},
                "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
                "sampling": {"temperature": 0.7, "max_tokens": args.max_tokens, "seed": 1},
                "budget": {"amount": budget}, "policy": policy,
                "answer_extractor": "arithmetic", "verifier": "arithmetic_steps"}

    pool = start_pool(parse_spec(spec("pool", {"kind": "uniform"})))
    base = {"kind": "adaptive", "select": "verifier"}
    ladders = {"default": base,
               "think_search": base | {"ladder": ["best_of_n", "think", "search"],
                                       "think_max_tokens": args.think_max_tokens,
                                       "search": {"beam_width": 2, "expansions": 2, "max_steps": 16},
                                       "rung_calibration_rows": args.rung_rows}}
    for name, policy in ladders.items():
        rep = run_job(parse_spec(spec(name, policy)), show_progress=False, pool=pool)
        ad = rep.get("adaptive", {})
        print(json.dumps({"bench": "adaptive_ladder", "ladder": name, "rows": rep["rows"], "budget": budget,
                          "spent": rep["spent"], "accuracy": rep.get("accuracy"),
                          "calibration_spent": ad.get("calibration_spent"), "rungs": ad.get("rungs"),
                          "bucket_tiers": [(b["tier"], round(b["share"], 3)) for b in ad.get("buckets", [])],
                          "by_tier": [{k: r[k] for k in ("tier", "rows", "cost", "accuracy") if k in r}
                                      for r in rep["by_tier"]]}), flush=True)
    pool.shutdown()


if __name__ == "__main__":
    main()
