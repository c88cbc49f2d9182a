"""Peers: tierwise against plain vLLM and Ray Data LLM on the same workload.

The same prompts (``tierwise demo-data``, at least 20,000 rows), the same model
(``models/tiny-adder``), engine settings (``ENGINE``) and sampling (``SAMPLING``, one seed per
row), one system after another, each in a subprocess of its own so that no two share engine
memory or a Ray cluster:

- ``vllm``: ``vllm.LLM.generate`` over every prompt in one call;
- ``ray_data``: Ray Data LLM, ``build_processor`` with a ``vLLMEngineProcessorConfig`` (as its
  docs show: one replica, batch size 64, raw prompts so no chat template stage);
- ``uniform``: ``tierwise run`` of a spec with the uniform policy, n=1;
- ``adaptive``: ``tierwise run`` with the adaptive policy (verifier best-of-n, the demo job's
  policy) and a token budget equal to what ``uniform`` spent.

One JSON line per system: generated tokens, ``gen_tok_s`` over its generation window (engine
start excluded), ``rows_s``, ``wall_s`` (the subprocess, engine start included), accuracy against
the gold answers (the arithmetic extractor), and ratios to plain vLLM's figures; then a summary
line with the acceptance ratios of issue 14. Generation windows: plain vLLM, the ``generate``
call; tierwise, the run report's ``generate_wall_s`` (first part sent to last part committed);
Ray Data, from the earliest row's request (its output time less its ``time_taken_llm``) to the
last row's output, as its postprocess stage sees them (the engine's start-up is outside it).

    python bench/peers.py --rows 20000 --out docs/bench/peers.jsonl
    python bench/peers.py --rows 20000 --systems vllm,uniform,adaptive --repeat 3   # median ratios

``--repeat R`` runs the systems R rounds, one round after another, each in a fresh work folder
(no run resumes another's output); lines carry ``round``, and the summary gives each ratio as the
median of the rounds' ratios with every round's (``<ratio>_rounds``): on a shared host a single
pair of runs minutes apart does not settle a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parent.parent
MODEL = str(REPO / "models" / "tiny-adder")
# Every system's engine: tierwise's own settings on CPU (chunked prefill off, prefix caching on),
# and vllm.LLM's batch defaults on CPU, which Ray Data's async engine would otherwise halve.
ENGINE = {"max_model_len": 256, "max_num_seqs": 256, "max_num_batched_tokens": 4096,
          "enable_prefix_caching": True, "enable_chunked_prefill": False}
SAMPLING = {"temperature": 0.7, "max_tokens": 200}
SEED = 1
SYSTEMS = ("vllm", "ray_data", "uniform", "adaptive")
CAVEAT = ("2-core shared machine: other sessions' tests ran concurrently, so absolute figures move "
          "between runs; the systems ran one after the other in one run")


def load_rows(data: Path) -> tuple[list[str], list[str]]:
    import polars as pl

    df = pl.read_parquet(data, columns=["prompt", "gold"])
    return df["prompt"].to_list(), df["gold"].to_list()


def accuracy(texts: list[str], golds: list[str]) -> float:
    """The share of rows whose arithmetic answer is the gold one (tierwise's ``correct``)."""
    from tierwise.pipelines.tiers.answers import make_extractor

    extract = make_extractor("arithmetic")
    return sum(a is not None and a == g.strip() for a, g in zip(map(extract, texts), golds)) / len(golds)


def run_vllm(data: Path, _work: Path, _budget: float | None) -> dict:
    from vllm import LLM, SamplingParams

    prompts, golds = load_rows(data)
    llm = LLM(model=MODEL, seed=0, **ENGINE)
    params = [SamplingParams(**SAMPLING, seed=SEED + i) for i in range(len(prompts))]
    t0 = time.monotonic()
    outs = llm.generate(prompts, params, use_tqdm=False)
    gen_wall = time.monotonic() - t0
    texts = [o.outputs[0].text for o in outs]
    return {"rows": len(prompts), "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs), "gen_wall_s": gen_wall,
            "accuracy": accuracy(texts, golds)}


def run_ray_data(data: Path, _work: Path, _budget: float | None) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    prompts, golds = load_rows(data)
    config = vLLMEngineProcessorConfig(
        model_source=MODEL, engine_kwargs=ENGINE | {"seed": 0}, concurrency=1, batch_size=64,
        chat_template_stage=False, placement_group_config={"bundles": [{"CPU": 1}]},
        log_engine_metrics=False)  # its Ray metrics exporter fails to start with vLLM-CPU 0.32 here
    processor = build_processor(
        config,
        preprocess=lambda row: {"prompt": row["prompt"], "gold": row["gold"],
                                "sampling_params": SAMPLING | {"seed": SEED + int(row["i"])}},
        postprocess=lambda row: {"text": row["generated_text"], "gold": row["gold"],
                                 "n_out": row["num_generated_tokens"], "n_in": row["num_input_tokens"],
                                 "t_out": time.time(), "t_llm": row["time_taken_llm"]})
    ds = ray.data.from_items([{"i": i, "prompt": p, "gold": g} for i, (p, g) in enumerate(zip(prompts, golds))])
    out = processor(ds).to_pandas()
    start = (out["t_out"] - out["t_llm"]).min()
    return {"rows": len(out), "generated_tokens": int(out["n_out"].sum()), "prompt_tokens": int(out["n_in"].sum()),
            "gen_wall_s": float(out["t_out"].max() - start),
            "accuracy": accuracy(out["text"].tolist(), out["gold"].tolist())}


def tierwise_spec(data: Path, out: Path, policy: dict, budget: float) -> dict:
    return {"name": f"peers-{policy['kind']}", "input": {"path": str(data), "gold_column": "gold"},
            "output": {"path": str(out)},
            "model": {"path": MODEL, "max_model_len": ENGINE["max_model_len"],
                      "engine_kwargs": {k: v for k, v in ENGINE.items() if k != "max_model_len"}},
            "sampling": SAMPLING | {"seed": SEED}, "budget": {"amount": budget}, "policy": policy,
            "answer_extractor": "arithmetic"} | ({"verifier": "arithmetic_steps"} if policy["kind"] == "adaptive" else {})


def run_tierwise(data: Path, work: Path, policy: dict, budget: float) -> dict:
    """``tierwise run`` of the spec (the CLI, as a user runs it); its run report's figures."""
    spec_path, out = work / f"{policy['kind']}.json", work / f"out-{policy['kind']}"
    spec_path.write_text(json.dumps(tierwise_spec(data, out, policy, budget)))
    subprocess.run([sys.executable, "-m", "tierwise.jobs.cli", "run", str(spec_path), "--quiet"], check=True, cwd=REPO)
    rep = json.loads((out / "run_report.json").read_text())
    busy = {name: e["busy_fraction"] for name, e in rep.get("engines", {}).items()}
    return {"rows": rep["rows"], "generated_tokens": rep["output_tokens"], "prompt_tokens": rep["prompt_tokens"],
            "gen_wall_s": rep["generate_wall_s"], "accuracy": rep.get("accuracy"), "spent": rep["spent"],
            "budget": budget, "samples": rep["samples"], "engine_busy_fraction": busy}


def run_uniform(data: Path, work: Path, _budget: float | None) -> dict:
    return run_tierwise(data, work, {"kind": "uniform", "n": 1}, 1e12)


def run_adaptive(data: Path, work: Path, budget: float | None) -> dict:
    return run_tierwise(data, work, {"kind": "adaptive", "objective": "accuracy", "select": "verifier"}, budget)


RUNNERS = {"vllm": run_vllm, "ray_data": run_ray_data, "uniform": run_uniform, "adaptive": run_adaptive}


def one_system(system: str, data: Path, work: Path, budget: float | None) -> dict:
    """Runs ``system`` in a subprocess of its own; its figures, with the subprocess's wall time."""
    result = work / f"{system}.result.json"
    cmd = [sys.executable, __file__, "--system", system, "--data", str(data), "--work", str(work)]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    subprocess.run(cmd, check=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
    figures = json.loads(result.read_text())
    # The machine's 1-minute load average before and after: how much else ran beside it.
    return figures | {"wall_s": time.monotonic() - t0, "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)]}


def line(system: str, r: dict, base: dict | None) -> dict:
    out = {"bench": "peers", "system": system, **r, "gen_tok_s": r["generated_tokens"] / r["gen_wall_s"],
           "rows_s": r["rows"] / r["gen_wall_s"], "job_rows_s": r["rows"] / r["wall_s"]}
    if base is not None:
        out |= {"gen_tok_s_vs_vllm": out["gen_tok_s"] / base["gen_tok_s"],
                "rows_s_vs_vllm": out["rows_s"] / base["rows_s"], "wall_vs_vllm": r["wall_s"] / base["wall_s"]}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def emit(record: dict, out: str | None) -> None:
    """Prints a JSON line, and adds it to ``out``."""
    print(json.dumps(record), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1234, help="the demo data's seed (tierwise demo-data's default)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", help="JSON lines file to write (also printed)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of --systems, one after another; the summary gives each ratio's median over rounds")
    ap.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)  # a subprocess's one system
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.system:
        figures = RUNNERS[args.system](args.data, args.work, args.budget)
        (args.work / f"{args.system}.result.json").write_text(json.dumps(figures))
        return
    work = Path(tempfile.mkdtemp(prefix="tw-peers-"))
    data = work / "demo.parquet"
    subprocess.run([sys.executable, "-m", "tierwise.jobs.cli", "demo-data", str(data), "--rows", str(args.rows),
                    "--seed", str(args.seed)], check=True, cwd=REPO)
    if args.out:
        Path(args.out).write_text("")  # each system's line is added as it finishes
    systems = args.systems.split(",")
    if "adaptive" in systems and ("uniform" not in systems or systems.index("uniform") > systems.index("adaptive")):
        raise SystemExit("adaptive runs at uniform's spend: list uniform before it in --systems")
    rounds = [run_round(systems, data, work / f"round{r}", r, args.repeat, args.out) for r in range(args.repeat)]
    emit(summarize(rounds, args.rows), args.out)


def run_round(systems: list[str], data: Path, work: Path, r: int, repeat: int, out: str | None) -> dict[str, dict]:
    """One round: each system once, in order (a fresh work folder, so no run resumes another's output)."""
    work.mkdir()
    lines, base, uniform_spent = {}, None, None
    for system in systems:
        res = one_system(system, data, work, uniform_spent if system == "adaptive" else None)
        lines[system] = line(system, res, base) | ({"round": r} if repeat > 1 else {}) | {"caveat": CAVEAT}
        base = base or (lines[system] if system == "vllm" else None)
        uniform_spent = res.get("spent") if system == "uniform" else uniform_spent
        emit(lines[system], out)
    return lines


# The acceptance ratios of issue 14: (name, system, against, goal).
RATIOS = (("uniform_vs_vllm", "uniform", "vllm", 0.95), ("uniform_vs_ray_data", "uniform", "ray_data", 1.0),
          ("adaptive_vs_uniform", "adaptive", "uniform", 0.8))


def summarize(rounds: list[dict[str, dict]], rows: int) -> dict:
    """Each acceptance ratio of generated tok/s within a round (systems run minutes apart, so a
    slow spell of the host weighs on both); with several rounds, the median ratio and every
    round's."""
    summary = {"bench": "peers_summary", "rows": rows, "date": time.strftime("%Y-%m-%d")}
    for name, system, against, _goal in RATIOS:
        per_round = [r[system]["gen_tok_s"] / r[against]["gen_tok_s"] for r in rounds if {system, against} <= r.keys()]
        if per_round:
            summary[name] = round(float(np.median(per_round)), 3)
            if len(per_round) > 1:
                summary[f"{name}_rounds"] = [round(x, 3) for x in per_round]
    if len(rounds) > 1:
        summary["rounds"] = len(rounds)
    return summary

if __name__ == "__main__":
    main()
