"""The llm_judge verifier in mode ``agree`` against the other selections, on headroom rows.

The embedded model judges its own samples: it solves each prompt once, greedily, and
a sample scores 1 when its answer matches. On 6-digit rows (the embedded model's
headroom band), every run draws the same samples (per-row seeds), so the runs differ
only in how they select: greedy (n=1), majority of n, best-of-n with the step checker
(``arithmetic_steps``), best-of-n with the judge. The judge's tokens count in its spend.
One JSON line per run.

    python bench/judge_agree.py --rows 40 --n 4
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
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()

    import polars as pl

    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec
    from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="tw-judge-"))
    data = tmp / "rows.parquet"
    generate_dataset(args.rows, {args.digits: 1.0}, seed=args.seed).write_parquet(data)

    def spec(name: str, policy: dict, verifier) -> dict:
        return {"name": name, "input": {"path": str(data), "gold_column": "gold"},
                "output": {"path": str(tmp / name), "part_rows": 20},
                "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
                "sampling": {"temperature": 0.7, "max_tokens": 200, "seed": 1},
                "budget": {"amount": 1e9}, "policy": policy,
                "answer_extractor": "arithmetic", "verifier": verifier}

    judge = {"kind": "llm_judge", "mode": "agree", "template": "{prompt}"}
    runs = [("greedy", {"n": 1}, None),
            ("majority", {"n": args.n}, None),
            ("arithmetic_steps", {"n": args.n, "select": "verifier"}, "arithmetic_steps"),
            ("judge_agree", {"n": args.n, "select": "verifier"}, judge)]
    pool = start_pool(parse_spec(spec("pool", {"n": 1}, None)))
    try:
        for name, policy, verifier in runs:
            rep = run_job(parse_spec(spec(name, policy, verifier)), show_progress=False, pool=pool)
            out = pl.read_parquet(tmp / name / "part-*.parquet").join(pl.read_parquet(data), on="id")
            # pass@n: some sample is right (the ceiling of any selection among them).
            pass_n = out.select(pl.col("sample_answers").list.contains(pl.col("gold")).mean()).item()
            print(json.dumps({"bench": "judge_agree", "select": name, "n": policy["n"], "rows": rep["rows"],
                              "digits": args.digits, "accuracy": rep["accuracy"], "pass_at_n": pass_n,
                              "spent": rep["spent"], "judge_tokens": rep.get("judge", {}).get("tokens", 0),
                              "judge_issues": rep.get("judge", {}).get("issues")}), flush=True)
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
