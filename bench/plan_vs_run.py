"""``tierwise plan`` against the run it predicts: the demo job's expected spend, accuracy and wall time
from its pilot, then what ``tierwise run`` measures on the same spec and data (fresh output).

Both through the CLI as a user runs them. One JSON line per seed: predicted and measured spend
(share of the budget), accuracy, wall seconds, and the pilot's rows and spend.

    python bench/plan_vs_run.py --rows 1000 --seeds 1234
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "jobs/examples/demo.yaml"


def cli(*args: str) -> str:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "tierwise.jobs.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout


def one(rows: int, seed: int, budget_per_row: float, tmp: Path) -> dict:
    data, out = tmp / f"input-{seed}.parquet", tmp / f"out-{seed}"
    cli("demo-data", str(data), "--rows", str(rows), "--seed", str(seed))
    budget = budget_per_row * rows
    sets = ["--set", f"input.path={data}", "--set", f"output.path={out}", "--set", f"budget.amount={budget}"]
    plan = json.loads(cli("plan", str(SPEC), *sets, "--json", "--quiet", "--png", str(tmp / f"plan-{seed}.png"),
                          "--scratch", str(tmp / f"pilot-{seed}")).strip().splitlines()[-1])
    cli("run", str(SPEC), *sets, "--quiet", "--brief")
    report = json.loads((out / "run_report.json").read_text())
    at = plan["at_budget"]
    return {"bench": "plan_vs_run", "rows": rows, "seed": seed, "budget": budget,
            "pilot_rows": plan["pilot_rows"], "pilot_spent": round(plan["pilot_spent"], 1),
            "predicted_spend_share": round(at["expected_spend"] / budget, 4),
            "measured_spend_share": round(report["spent"] / budget, 4),
            "predicted_accuracy": round(at["expected_accuracy"], 4), "measured_accuracy": round(report["accuracy"], 4),
            "accuracy_gap_points": round(100 * (at["expected_accuracy"] - report["accuracy"]), 2),
            "predicted_wall_s": round(at["expected_wall_s"] or 0, 1), "measured_wall_s": round(report["wall_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1234])
    ap.add_argument("--budget-per-row", type=float, default=150.0, help="the demo's: 150k tokens for 1000 rows")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(json.dumps(one(args.rows, seed, args.budget_per_row, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
