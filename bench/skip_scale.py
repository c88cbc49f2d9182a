"""Skip at scale: a 2,000,000-row job whose budget covers about 1% of its rows.

Uniform n=1 on ``embedded:tiny-adder``; the input is ids + short addition prompts (one or two
digits, written columnar with numpy/polars, the format of ``tierwise.pipelines.tiers.tasks.arithmetic``). The
budget is 1% of the rows at their worst case (prompt + ``max_tokens``), so the rows it covers are
a little more than 1%. Once no part left can afford its cheapest row, the driver writes the rest
``skipped_budget`` in bulk (``tierwise.jobs.skipping``). Checks every input id is in the output exactly
once and ``spent <= budget``, and prints JSON lines:

- ``skip_scale``: rows, covered (ok) and skipped rows, the job's wall time (engine start
  included), the bulk phase's rows/s, spent and budget.
- ``skip_baseline``: the same engine skipping rows one by one through the replica and the ledger
  (the path before bulk skips, taken here by turning the floor off), over ``--baseline-rows``
  rows with a budget for about 50 of them; ``ratio`` is the bulk phase's rows/s over it.

    python bench/skip_scale.py --rows 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_input(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` addition problems of one or two digits each side, with ids and gold, columnar."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, rows), rng.integers(0, 100, rows)
    df = pl.DataFrame({"id": np.arange(rows), "a": a, "b": b}).select(
        pl.col("id").cast(pl.String),
        pl.format("{}+{}=\n", "a", "b").alias("prompt"),
        (pl.col("a") + pl.col("b")).cast(pl.String).alias("gold"))
    df.write_parquet(path, row_group_size=100_000)


def spec_for(inp: Path, out: Path, budget: float, part_rows: int, max_tokens: int):
    from tierwise.jobs.spec import parse_spec

    return parse_spec({
        "name": "bench-skip-scale", "input": {"path": str(inp), "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": part_rows},
        "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
        "sampling": {"temperature": 0.0, "max_tokens": max_tokens},
        "budget": {"amount": budget, "unit": "tokens"}, "policy": {"kind": "uniform", "n": 1},
        "answer_extractor": "arithmetic"})


def worst_tokens(inp: Path, max_tokens: int) -> float:
    """Mean worst case of a row (its prompt's bytes: the embedded tokenizer is byte-level)."""
    import polars as pl

    return float(pl.read_parquet(inp, columns=["prompt"])["prompt"].str.len_bytes().mean()) + max_tokens


def check(out: Path, inp: Path, report: dict) -> dict:
    import polars as pl

    df = pl.read_parquet(f"{out}/part-*.parquet", columns=["id", "status"])
    ids = pl.read_parquet(inp, columns=["id"])["id"]
    assert df.height == ids.len() and df["id"].n_unique() == df.height, "an id is missing or twice"
    assert df["id"].sort().equals(ids.sort()), "output ids differ from the input's"
    assert report["spent"] <= report["budget"]["amount"], "spent past the budget"
    return dict(df["status"].value_counts().iter_rows())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--cover", type=float, default=0.01, help="share of rows the budget covers at worst case")
    ap.add_argument("--part-rows", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--baseline-rows", type=int, default=4000)
    args = ap.parse_args()

    import tierwise.jobs.runner as runner
    from tierwise.jobs.runner import run_job, start_pool

    tmp = Path(tempfile.mkdtemp(prefix="tw-skip-"))
    inp, out = tmp / "in.parquet", tmp / "out"
    write_input(inp, args.rows)
    budget = args.cover * args.rows * worst_tokens(inp, args.max_tokens)
    spec = spec_for(inp, out, budget, args.part_rows, args.max_tokens)
    t0 = time.monotonic()
    pool = start_pool(spec)
    try:
        report = run_job(spec, show_progress=False, pool=pool)
        wall = time.monotonic() - t0
        status = check(out, inp, report)
        bulk = next((b for b in report.get("bulk_written", []) if b["status"] == "skipped_budget"), None)
        bulk_rate = bulk["rows"] / bulk["seconds"] if bulk and bulk["seconds"] else None
        line = {"bench": "skip_scale", "rows": args.rows, "covered_rows": status.get("ok", 0),
                "skipped_rows": status.get("skipped_budget", 0), "error_rows": status.get("error", 0),
                "wall_s": round(wall, 1), "job_wall_s": report["wall_s"], "generate_wall_s": report["generate_wall_s"],
                "bulk_rows": bulk["rows"] if bulk else 0, "bulk_s": bulk["seconds"] if bulk else None,
                "skip_rows_per_s": round(bulk_rate) if bulk_rate else None,
                "spent": report["spent"], "budget": budget, "part_rows": args.part_rows,
                "max_tokens": args.max_tokens}
        print(json.dumps(line), flush=True)
        base = baseline(tmp, args, pool, runner)
        base["ratio"] = round(bulk_rate / base["skip_rows_per_s"], 1) if bulk_rate else None
        print(json.dumps(base), flush=True)
    finally:
        pool.shutdown()


def baseline(tmp: Path, args, pool, runner) -> dict:
    """Rows skipped one by one through the replica and the ledger (the bulk floor turned off)."""
    from tierwise.jobs.runner import run_job

    inp, out = tmp / "base.parquet", tmp / "base-out"
    write_input(inp, args.baseline_rows, seed=1)
    budget = 50 * worst_tokens(inp, args.max_tokens)
    spec = spec_for(inp, out, budget, args.part_rows, args.max_tokens)
    floor, runner._budget_floor = runner._budget_floor, lambda *a: (None, None)
    try:
        report = run_job(spec, show_progress=False, pool=pool)
    finally:
        runner._budget_floor = floor
    status = check(out, inp, report)
    skipped = status.get("skipped_budget", 0)
    return {"bench": "skip_baseline", "rows": args.baseline_rows, "covered_rows": status.get("ok", 0),
            "skipped_rows": skipped, "generate_wall_s": report["generate_wall_s"],
            "skip_rows_per_s": round(skipped / report["generate_wall_s"], 1)}


if __name__ == "__main__":
    main()
