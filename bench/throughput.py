"""Throughput: the tierwise uniform n=1 job vs a plain ``vllm.LLM.generate`` call.

Same prompts, same model, same sampling (greedy, max_tokens), one process, run one
after the other on the same machine. Prints one JSON line; ``ratio`` is tierwise's
generated tokens/s over plain vLLM's (goal >= 0.9). Engine start-up is excluded
from both rates (plain vLLM: timed around ``generate``; tierwise: the report's
``generate_wall_s``, from the first part sent to the last part committed);
``tierwise_end_to_end_tok_s`` includes Ray and engine start.

    python bench/throughput.py --rows 1200 --max-tokens 120
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def plain_vllm(prompts: list[str], model: str, max_tokens: int, max_model_len: int) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, max_model_len=max_model_len, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    t0 = time.monotonic()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.monotonic() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine, "engine_core") else None
    del llm
    gc.collect()
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def tierwise_run(data: Path, out: Path, max_tokens: int, max_model_len: int) -> dict:
    from jobs.runner import run_job
    from jobs.spec import parse_spec

    spec = parse_spec({
        "name": "bench-throughput",
        "input": {"path": str(data)},
        "output": {"path": str(out), "part_rows": 256},
        "model": {"path": "embedded:tiny-adder", "max_model_len": max_model_len},
        "sampling": {"max_tokens": max_tokens},
        "budget": {"amount": 1e12},
        "policy": {"kind": "uniform", "n": 1},
        "answer_extractor": "arithmetic",
    })
    report = run_job(spec, show_progress=False)  # starts its own pool: engine start is excluded below
    return {"tokens": report["output_tokens"], "wall_s": report["generate_wall_s"],
            "tok_s": report["output_tokens"] / report["generate_wall_s"],
            "end_to_end_tok_s": report["output_tokens"] / report["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--max-model-len", type=int, default=256)
    args = ap.parse_args()

    from pipelines.tasks.arithmetic import DEMO_MIX, generate_dataset
    from ray_cluster.engine import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.parquet"
        df = generate_dataset(args.rows, DEMO_MIX, seed=99)
        df.write_parquet(data)
        base = plain_vllm(df["prompt"].to_list(), resolve_model("embedded:tiny-adder"), args.max_tokens,
                          args.max_model_len)
        tw = tierwise_run(data, Path(tmp) / "out", args.max_tokens, args.max_model_len)
    print(json.dumps({
        "bench": "throughput", "rows": args.rows, "max_tokens": args.max_tokens, "n": 1,
        "plain_vllm_tok_s": round(base["tok_s"], 1), "plain_vllm_tokens": base["tokens"],
        "tierwise_tok_s": round(tw["tok_s"], 1), "tierwise_tokens": tw["tokens"],
        "tierwise_end_to_end_tok_s": round(tw["end_to_end_tok_s"], 1),
        "ratio": round(tw["tok_s"] / base["tok_s"], 3),
    }))


if __name__ == "__main__":
    main()
