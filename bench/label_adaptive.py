"""The label job (``jobs/examples/label.yaml``): adaptive with the label distribution's free difficulty signal
vs uniform n=3 majority vote, same model, same data, one after the other, through the ``tierwise run`` path.

Data: ``tierwise example-data label`` (``tierwise.jobs.example_data.label_rows``). Both runs constrain every sample to
the job's labels (structured choice). Uniform draws 3 samples per row and votes; adaptive (budget: what
uniform spent) draws one sample per row first, stops rows whose first-token label distribution puts at
least ``--threshold`` on one label (``policy.label_confidence``) and plans the rest from its calibration slice
(whose samples count in its spend). One JSON line per run, then a ratio line; the goal: adaptive spends
less than uniform n=3 with accuracy at least uniform's minus 0.5 points. ``--nightly`` adds the nightly case
(as ``bench/adaptive_vs_uniform.py``): the plan comes from the calibration samples of "last night's" run (the
same policy on a different data set of the same generator, run first and not counted), so tonight spends
nothing on calibration.

    python bench/label_adaptive.py --rows 600
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

LABEL_SPEC = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "label.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threshold", type=float, default=0.9, help="policy.label_confidence")
    ap.add_argument("--adaptive", default="{}", help="JSON merged into the adaptive policy")
    ap.add_argument("--nightly", action="store_true", help="also run adaptive planned from last night's samples")
    args = ap.parse_args()

    from tierwise.jobs.example_data import label_rows
    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec

    tmp = Path(tempfile.mkdtemp(prefix="tw-label-bench-"))
    data = tmp / "label.parquet"
    label_rows(args.rows, args.seed).write_parquet(data)
    base = yaml.safe_load(LABEL_SPEC.read_text())

    def spec(name: str, policy: dict, budget: float, path: Path = data) -> dict:
        return base | {"name": name, "input": base["input"] | {"path": str(path)},
                       "output": base["output"] | {"path": str(tmp / name)},
                       "budget": {"amount": budget}, "policy": policy}

    uniform = {"kind": "uniform", "n": 3}
    adaptive = {"kind": "adaptive", "label_confidence": args.threshold, "pilot_samples": 1,
                "calibration_samples": 4, "calibration_rows": 40} | json.loads(args.adaptive)
    pool = start_pool(parse_spec(spec("pool", uniform, 0)))

    def run(name: str, policy: dict, budget: float) -> dict:
        t0 = time.perf_counter()
        rep = run_job(parse_spec(spec(name, policy, budget)), show_progress=False, pool=pool)
        lines.append(_line(name, rep, budget, time.perf_counter() - t0, tmp / name, args.threshold))
        print(json.dumps(lines[-1]), flush=True)
        return lines[-1]

    lines: list[dict] = []
    u = run("uniform_n3", uniform, 1e12)
    runs = [run("adaptive", adaptive, u["spent"])]
    if args.nightly:
        last = tmp / "last_night.parquet"
        label_rows(args.rows, args.seed + 1).write_parquet(last)
        run_job(parse_spec(spec("adaptive_last_night", adaptive, u["spent"], last)), show_progress=False, pool=pool)
        prior = adaptive | {"calibration_from": str(tmp / "adaptive_last_night" / "calibration_samples.parquet")}
        runs.append(run("adaptive_nightly", prior, u["spent"]))
    pool.shutdown()
    for a in runs:
        print(json.dumps({
            "bench": "label_adaptive_ratio", "policy": a["policy"], "rows": args.rows,
            "spent_ratio": round(a["spent"] / u["spent"], 4),
            "output_tokens_ratio": round(a["output_tokens"] / u["output_tokens"], 4),
            "accuracy_delta_pt": round(100 * (a["accuracy"] - u["accuracy"]), 2),
            "goal_less_spend_same_accuracy": a["spent"] < u["spent"] and a["accuracy"] >= u["accuracy"] - 0.005,
        }), flush=True)


def _line(name: str, rep: dict, budget: float, wall_s: float, out: Path, threshold: float) -> dict:
    """One run's JSON line (``tierwise run``'s report, and the adaptive rows' stop reasons)."""
    line = {"bench": "label_adaptive", "policy": name, "rows": rep["rows"], "accuracy": rep.get("accuracy"),
            "prompt_tokens": rep["prompt_tokens"], "output_tokens": rep["output_tokens"], "samples": rep["samples"],
            "spent": rep["spent"], "budget": budget, "wall_s": round(wall_s, 1)}
    if "adaptive" in rep:
        line |= {"label_confidence": threshold, "calibration_spent": rep["adaptive"].get("calibration_spent"),
                 "stop_reasons": _stop_reasons(out)}
    return line


def _stop_reasons(out: Path) -> dict[str, int]:
    import polars as pl

    rows = pl.read_parquet(sorted(str(p) for p in out.glob("part-*.parquet")))
    return dict(rows["stop_reason"].fill_null("none").value_counts().iter_rows())


if __name__ == "__main__":
    main()
