"""The sequential policy live (jobs/sequential_driver.py) and replayed over the job's own samples: one
policy, two drivers, the same decisions."""

import json

import numpy as np
import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.sequential_driver import replay_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 240


def _spec(data, out, budget: float, **policy) -> dict:
    return {
        "input": {"path": str(data), "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": 20},
        "model": {"max_model_len": 256}, "sampling": {"max_tokens": 200, "temperature": 0.7},
        "budget": {"amount": budget},
        # Two parts at a time: priced parts are sent while others are still running.
        "replicas": {"parts_per_replica": 2},
        "policy": {"kind": "adaptive", "planner": "sequential", "select": "verifier"} | policy,
        "answer_extractor": "arithmetic", "verifier": "arithmetic_steps",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "in.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=31).write_parquet(path)
    return path


@pytest.mark.slow
def test_live_decisions_replay_exactly(data, tmp_path, shared_pool):
    budget = 40_000.0  # about 2.5 samples a row: the price binds
    out = tmp_path / "out"
    report = run_job(parse_spec(_spec(data, out, budget)), show_progress=False, pool=shared_pool)
    live = pl.read_parquet(out / "part-*.parquet")
    assert live.height == ROWS and live["id"].n_unique() == ROWS
    assert report["spent"] <= budget
    assert set(live["tier"].unique()) == {"sequential"}
    assert set(live["stop_reason"].unique()) <= {"settled", "price", "cap", "budget"}
    record = json.loads((out / "sequential.json").read_text())
    phases = [p["phase"] for p in record["parts"].values()]
    assert "slice" in phases and "main" in phases
    assert any(p["price"] and p["price"] > 0 for p in record["parts"].values())  # the price bound
    # Replay the job's own samples through the same pacer, parts in the recorded order.
    run, rows = replay_job(str(out), has_verifier=True)
    assert rows.height == ROWS
    ok = (rows["stop_reason"] != "budget").to_numpy()
    assert ok.mean() > 0.9
    assert np.array_equal(run.drawn[ok], rows["n_samples"].to_numpy()[ok])
    assert (run.stop_reason[ok] == rows["stop_reason"].to_numpy()[ok]).all()
    live_prices = [record["parts"][str(pid)]["price"] for kind, pid in record["events"] if kind == "send"]
    replay_prices = [None if not np.isfinite(p) else p for p in run.prices]
    assert replay_prices == pytest.approx(live_prices, rel=1e-9)
    # The spend: what the replayed rows draw costs what the live rows cost, the ledger's figure.
    assert rows["cost"].sum() == pytest.approx(report["spent"], rel=1e-9)
    # Verified rows stop at their first verified sample; easy rows need about one sample.
    settled = rows.filter(pl.col("stop_reason") == "settled")
    assert (settled["verifier_scores"].list.last() >= 1.0).all()
    before = settled.select(pl.col("verifier_scores").list.head(pl.col("n_samples") - 1).list.max().fill_null(0))
    assert (before.to_series() < 1.0).all()
