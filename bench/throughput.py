"""Throughput: the tierwise uniform n=1 job vs a plain ``vllm.LLM.generate`` call.

Same prompts, same model, same sampling (greedy, max_tokens), one process, on the
same machine. Each side starts its engine once, warms it up on a small batch, then
generates the whole prompt set ``--repeats`` times; the two sides run one after the
other (not interleaved: an idle vLLM-CPU worker still polls, and both engines' workers
are pinned to the same core). Prints one JSON line; ``ratio`` is the median of
tierwise's generated tokens/s over the median of plain vLLM's (goal >= 0.9). Engine
start-up is excluded from both rates (plain vLLM: timed around ``generate``; tierwise:
the report's ``generate_wall_s``, from the first part sent to the last part committed,
after the job's set-up: input checks, its ledger actor started). ``tierwise_job_tok_s``
is the same job's tokens over its whole wall time (``wall_s``: set-up and the run
report included), for scale; the goal is on ``ratio``.

    python bench/throughput.py --rows 2000 --max-tokens 120 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
WARMUP_ROWS = 64


def plain_vllm(prompts: list[str], model: str, max_tokens: int, max_model_len: int, repeats: int) -> list[dict]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, max_model_len=max_model_len, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    llm.generate(prompts[:WARMUP_ROWS], params, use_tqdm=False)
    runs = []
    for _ in range(repeats):
        t0 = time.monotonic()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.monotonic() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        runs.append({"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall})
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
    gc.collect()
    return runs


def tierwise_runs(data: Path, warmup: Path, out: Path, max_tokens: int, max_model_len: int, repeats: int,
                  engine: dict | None = None, replicas: dict | None = None) -> list[dict]:
    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec

    def spec(inp: Path, name: str):
        return parse_spec({
            "name": "bench-throughput",
            "input": {"path": str(inp)},
            "output": {"path": str(out / name), "part_rows": 256},
            "model": {"path": "embedded:tiny-adder", "max_model_len": max_model_len, "engine_kwargs": engine or {}},
            "sampling": {"max_tokens": max_tokens},
            "budget": {"amount": 1e12},
            "policy": {"kind": "uniform", "n": 1},
            "answer_extractor": "arithmetic",
            "replicas": replicas or {},
        })

    pool = start_pool(spec(data, "warmup"))
    try:
        run_job(spec(warmup, "warmup"), show_progress=False, pool=pool)
        runs = []
        for i in range(repeats):
            report = run_job(spec(data, f"run{i}"), show_progress=False, pool=pool)
            runs.append({"tokens": report["output_tokens"], "wall_s": report["generate_wall_s"],
                         "tok_s": report["output_tokens"] / report["generate_wall_s"],
                         "job_tok_s": report["output_tokens"] / report["wall_s"]})
    finally:
        pool.shutdown()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--max-model-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset
    from tierwise.ray_cluster.engine import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        data, warmup = Path(tmp) / "prompts.parquet", Path(tmp) / "warmup.parquet"
        df = generate_dataset(args.rows, DEMO_MIX, seed=99)
        df.write_parquet(data)
        df.head(WARMUP_ROWS).write_parquet(warmup)
        base = plain_vllm(df["prompt"].to_list(), resolve_model("embedded:tiny-adder"), args.max_tokens,
                          args.max_model_len, args.repeats)
        tw = tierwise_runs(data, warmup, Path(tmp) / "out", args.max_tokens, args.max_model_len, args.repeats)
    plain_med = statistics.median(r["tok_s"] for r in base)
    tw_med = statistics.median(r["tok_s"] for r in tw)
    print(json.dumps({
        "bench": "throughput", "rows": args.rows, "max_tokens": args.max_tokens, "n": 1, "repeats": args.repeats,
        "plain_vllm_tok_s": round(plain_med, 1), "tierwise_tok_s": round(tw_med, 1),
        "plain_vllm_runs": [round(r["tok_s"], 1) for r in base], "tierwise_runs": [round(r["tok_s"], 1) for r in tw],
        "tierwise_job_tok_s": round(statistics.median(r["job_tok_s"] for r in tw), 1),
        "tokens": [base[0]["tokens"], tw[0]["tokens"]],
        "ratio": round(tw_med / plain_med, 3),
    }))


if __name__ == "__main__":
    main()
