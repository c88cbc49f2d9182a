"""The example jobs of jobs/examples/ end to end on the shipped model (as `make examples` runs them, on
fewer rows): labels are only allowed labels, exported traces only pass the reference check and are in chat
form, and the capped bulk job stops at its cap with the rest of its rows skipped_budget."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tierwise.jobs.example_data import KINDS
from tierwise.jobs.export_command import run_exports
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "examples"


def _example(name: str, tmp_path: Path, rows: int, data: str = "input.parquet", **sets):
    frame = KINDS[name](rows, 2026)
    inp = tmp_path / data
    frame.write_ndjson(inp) if data.endswith(".jsonl") else frame.write_parquet(inp)
    overrides = {"input.path": str(inp), "output.path": str(tmp_path / "out")} | sets
    return load_spec(EXAMPLES / f"{name}.yaml", overrides), frame


@pytest.mark.slow
def test_traces_example_exports_only_verified_traces_in_chat_form(tmp_path, shared_pool):
    spec, frame = _example("traces", tmp_path, 100, **{"export.traces": str(tmp_path / "traces.jsonl"),
                                                        "budget.amount": 40_000})
    report = run_job(spec, show_progress=False, pool=shared_pool)
    assert report["rows"] == 100 and report["spent"] <= 40_000
    (line,) = run_exports(spec, report)
    traces = pl.read_ndjson(tmp_path / "traces.jsonl").join(frame.select("id", "reference", "prompt"), on="id")
    assert "exported" in line and traces.height > 0
    assert (traces["answer"] == traces["reference"]).all()  # every kept trace passes the reference check
    assert traces["messages"].to_list()[0][0]["role"] == "user"
    assert (traces["messages"].list.get(0).struct.field("content") == traces["prompt"]).all()
    assistant = traces["messages"].list.get(1)
    assert (assistant.struct.field("role") == "assistant").all()
    assert assistant.struct.field("content").str.ends_with(pl.lit("A: ") + traces["reference"]).all()
    assert traces.group_by("id").len()["len"].max() <= 6


@pytest.mark.slow
def test_label_example_uses_only_allowed_labels(tmp_path, shared_pool):
    spec, frame = _example("label", tmp_path, 100)
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert report["status"]["ok"] == 100
    labels = set(spec.structured.choice)
    assert set(out["answer"]) <= labels
    assert set(out["sample_answers"].explode()) <= labels
    assert report["accuracy"] >= 0.9  # the first step of its trace: the model knows it
    # Each row's label distribution at its first token (free: read from its first pass): the answer's
    # first character carries most of it.
    probs = out["label_probs"]
    assert probs.is_not_null().all()
    mass = [sum(p for k, p in row.items() if k[0] == a[0]) for row, a in zip(probs.to_list(), out["answer"])]
    assert sum(m >= 0.5 for m in mass) >= 0.9 * out.height
    assert all(abs(sum(row.values()) - 1) < 1e-6 for row in probs.to_list())


@pytest.mark.slow
def test_bulk_example_stops_at_its_cap(tmp_path, shared_pool):
    spec, _ = _example("bulk", tmp_path, 300, "requests.jsonl", **{"budget.amount": 8_000})
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert out.height == 300 and report["spent"] <= 8_000
    skipped = out.filter(pl.col("status") == "skipped_budget")
    assert skipped.height > 0 and report["status"]["ok"] > 0 and report["status"]["error"] == 0
    assert (skipped["cost"] == 0).all()
    assert report["spent"] > 0.5 * 8_000  # it spent most of the cap before it stopped
