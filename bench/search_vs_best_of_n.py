"""Step-level search vs verifier best-of-n at similar spend, on headroom rows.

Runs each search configuration, then uniform best-of-n (same step-checking
verifier) at the n whose spend comes closest to it, all through ``run_job`` on
one pool. One JSON line per run: accuracy, tokens spent, tokens per row.

    python bench/search_vs_best_of_n.py --rows 40 --digits 6 --search 2x2,4x4,4x4:even
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
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--search", default="2x2,4x4,4x4:even",
                    help="beam_width x expansions[:allocate], comma-separated")
    args = ap.parse_args()

    import polars as pl

    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec
    from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="tw-search-"))
    data = tmp / "rows.parquet"
    generate_dataset(args.rows, [args.digits], seed=args.seed).write_parquet(data)

    def spec(name: str, policy: dict) -> dict:
        return {"input": {"path": str(data), "gold_column": "gold"}, "output": {"path": str(tmp / name)},
                "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
                "sampling": {"temperature": 0.7, "max_tokens": 200, "seed": args.seed},
                "budget": {"amount": 1e9}, "policy": policy, "answer_extractor": "arithmetic",
                "verifier": "arithmetic_steps"}

    pool = start_pool(parse_spec(spec("unused", {})))

    def run(name: str, policy: dict) -> dict:
        report = run_job(parse_spec(spec(name, policy)), show_progress=False, pool=pool)
        df = pl.read_parquet(f"{tmp / name}/part-*.parquet")
        line = {"run": name, "rows": report["rows"], "accuracy": report["accuracy"], "spent": report["spent"],
                "tokens_per_row": report["spent"] / report["rows"], "samples_per_row": df["n_samples"].mean(),
                "stop_reasons": dict(df.group_by("stop_reason").len().iter_rows())}
        print(json.dumps(line), flush=True)
        return line

    try:
        one = run("best_of_1", {"n": 1})  # greedy: tokens of one trace
        per_sample = one["tokens_per_row"]
        for conf in args.search.split(","):
            shape, _, allocate = conf.partition(":")
            width, expansions = (int(x) for x in shape.split("x"))
            s = run(f"search_{conf}", {"tier": "search", "search": {"beam_width": width, "expansions": expansions,
                                                                   "allocate": allocate or "by_score"}})
            n = max(2, min(256, round(s["tokens_per_row"] / per_sample)))
            run(f"best_of_{n}", {"n": n, "select": "verifier"})
    finally:
        pool.shutdown()


if __name__ == "__main__":
    main()
