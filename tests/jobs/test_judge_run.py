"""The llm_judge verifier live: the embedded model judges its own samples (mode
``agree``) on the real engine, paid from the same budget as generation."""

import json

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

JUDGE = {"kind": "llm_judge", "mode": "agree", "template": "{prompt}"}


def _spec(inp, out, budget: float, max_tokens: int = 200, n: int = 4) -> dict:
    return {
        "input": {"path": str(inp), "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": 8},
        "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
        "sampling": {"temperature": 0.7, "max_tokens": max_tokens},
        "budget": {"amount": budget},
        "policy": {"kind": "uniform", "n": n, "select": "verifier"},
        "answer_extractor": "arithmetic",
        "verifier": JUDGE,
    }


@pytest.mark.slow
def test_judge_agree_best_of_n_pays_for_the_judge_and_never_reads_gold(tmp_path, shared_pool):
    data = generate_dataset(16, {d: 0.2 for d in (2, 3, 4, 5, 6)}, seed=11)
    # The gold column holds wrong answers: a verifier reading it would score the true sums 0.
    data.with_columns(gold=(pl.col("gold").cast(pl.Int64) + 1).cast(pl.String)).write_parquet(tmp_path / "in.parquet")
    budget = 100_000.0
    report = run_job(parse_spec(_spec(tmp_path / "in.parquet", tmp_path / "out", budget)), show_progress=False,
                     pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet").join(data.select("id", "gold"), on="id")
    assert out.height == 16 and (out["status"] == "ok").all() and (out["tier"] == "best_of_n").all()

    scores = out["verifier_scores"].explode()
    assert scores.null_count() == 0 and set(scores.to_list()) <= {0.0, 1.0}
    assert report["judge"]["issues"] == {} and out["judge_issues"].is_null().all()

    # Budget: the judge's tokens are in every row's cost and in the ledger's spend.
    generation = (out["prompt_tokens"] + out["output_tokens"]).sum()
    assert (out["judge_tokens"] > 0).all()
    assert (out["cost"] == out["prompt_tokens"] + out["output_tokens"] + out["judge_tokens"]).all()
    assert report["spent"] <= budget and report["spent"] == pytest.approx(out["cost"].sum())
    assert report["spent"] > generation and report["judge"]["tokens"] == out["judge_tokens"].sum()

    # Scores follow the true sums, not the (wrong) gold column: the judge, greedy, gets the
    # easy rows right, so samples agreeing with it are mostly right.
    samples = out.select("gold", "sample_answers", "verifier_scores").explode("sample_answers", "verifier_scores")
    truly_right = samples["sample_answers"] == samples["gold"]  # `data` holds the true sums
    assert truly_right.sum() >= 32 and samples.filter(truly_right)["verifier_scores"].mean() > 0.8
    assert not out["correct"].any()

    # A judge call the budget cannot cover leaves null scores and says why. One row, 4
    # samples truncated at 30 tokens: generation's worst case (prompt + 120) fits the budget;
    # after it settles, the judge's (prompt + 30) cannot.
    one = data.filter(pl.col("digits") == 6).head(1)
    one.write_parquet(tmp_path / "one.parquet")
    tight = parse_spec(_spec(tmp_path / "one.parquet", tmp_path / "tight", 4 * 30 + 20, max_tokens=30))
    report = run_job(tight, show_progress=False, pool=shared_pool)
    row = pl.read_parquet(tmp_path / "tight" / "part-*.parquet").row(0, named=True)
    assert row["status"] == "ok" and row["n_samples"] == 4 and row["output_tokens"] == 120
    assert row["verifier_scores"] == [None] * 4 and row["judge_issues"] == {"budget": 4}
    assert row["judge_tokens"] == 0 and row["cost"] == row["prompt_tokens"] + 120
    assert report["spent"] <= 4 * 30 + 20 and report["judge"]["issues"] == {"budget": 4}


@pytest.mark.slow
def test_adaptive_plan_counts_the_judges_tokens(tmp_path, shared_pool):
    """An adaptive job judged by an LLM: its calibration samples carry the judge's tokens,
    shared out over each row's samples, and the plan's costs count them."""
    data = generate_dataset(60, DEMO_MIX, seed=12)
    data.write_parquet(tmp_path / "in.parquet")
    budget = 60_000.0
    spec = _spec(tmp_path / "in.parquet", tmp_path / "out", budget) | {
        "output": {"path": str(tmp_path / "out"), "part_rows": 10},
        "policy": {"kind": "adaptive", "select": "verifier", "calibration_fraction": 0.34, "calibration_samples": 4}}
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    assert report["spent"] <= budget
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    cal = out.filter(pl.col("tier") == "calibration")
    assert cal.height > 0 and (cal["judge_tokens"] > 0).all()
    samples = pl.read_parquet(tmp_path / "out" / "calibration_samples.parquet")
    assert samples["judge_tokens"].sum() == cal["judge_tokens"].sum()
    # The pilot's expected cost holds the judge's share of each pilot sample.
    plan = json.loads((tmp_path / "out" / "calibration.json").read_text())["plan"]
    first = samples.filter(pl.col("sample_idx") < plan["pilot"])
    generation = (first["output_tokens"].sum() + first.filter(pl.col("sample_idx") == 0)["prompt_tokens"].sum()) \
        / first["query_id"].n_unique()
    assert plan["pilot_cost"] == pytest.approx(generation + first["judge_tokens"].sum() / first["query_id"].n_unique())
