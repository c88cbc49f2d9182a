"""The adaptive policy live: calibration slice, plan, pilot + early stop, pacing."""

import json

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.plan.adaptive import STOP_REASONS
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 200


@pytest.mark.slow
def test_adaptive_job_end_to_end(tmp_path, shared_pool):
    data = tmp_path / "in.parquet"
    gold = generate_dataset(ROWS, DEMO_MIX, seed=21)
    gold.write_parquet(data)
    budget = 120_000.0
    spec = parse_spec({
        "input": {"path": str(data), "gold_column": "gold"},
        "output": {"path": str(tmp_path / "out"), "part_rows": 20},
        "model": {"max_model_len": 256}, "sampling": {"max_tokens": 200},
        "budget": {"amount": budget},
        # Two parts at a time, so that parts are still unsent when others commit: the plan is
        # re-fit for them (by default a replica takes parts enough for 384 rows, all of these).
        "replicas": {"parts_per_replica": 2},
        "policy": {"kind": "adaptive", "select": "verifier", "calibration_fraction": 0.15,
                   "calibration_samples": 8},
        "answer_extractor": "arithmetic", "verifier": "arithmetic_steps",
    })
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet").join(gold, on="id")
    assert out.height == ROWS and out["id"].n_unique() == ROWS
    assert report["spent"] <= budget
    cal = out.filter(pl.col("tier") == "calibration")
    assert cal.height > 0 and (cal["n_samples"] <= 8).all()
    # Calibration rows stop at the round with a verified sample (CalibrationTier), else draw all 8.
    best = cal["verifier_scores"].list.max()
    assert ((cal["stop_reason"] == "verified") == (best >= 1.0)).all()
    assert (cal.filter(pl.col("stop_reason") != "verified")["n_samples"] == 8).all()
    assert cal.filter(pl.col("digits") <= 3)["n_samples"].mean() < 2
    # Only the parts that ran as calibration count as calibration (the slice may stop early).
    assert report["adaptive"]["calibration_spent"] == pytest.approx(cal["cost"].sum())
    rest = out.filter((pl.col("tier") != "calibration") & (pl.col("status") == "ok"))
    assert rest["bucket"].is_not_null().all() and rest["difficulty"].is_not_null().all()
    assert set(rest["stop_reason"].unique()) <= set(STOP_REASONS) | {"budget"}
    assert rest.filter(pl.col("digits") <= 3)["correct"].mean() >= 0.9
    saved = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert saved["summary"]["calibration_rows"] == cal.height and saved["plan"]["buckets"]
    assert (tmp_path / "out" / "calibration.png").stat().st_size > 1000
    assert (tmp_path / "out" / "calibration_samples.parquet").exists()
    assert report["adaptive"]["replans"] >= 1
    assert {r["tier"] for r in report["by_tier"]} >= {"calibration"}
    # The verifier has a prefix check, so samples stop at their first failed step (on by default):
    # the hopeless rows' samples never verify and all stop early; no verified sample was stopped.
    sampled = out.filter(pl.col("n_samples") > 0)
    assert sampled["aborted_samples"].is_not_null().all()
    hopeless = sampled.filter(pl.col("digits") >= 7)
    assert hopeless.height > 0 and hopeless["aborted_samples"].sum() == hopeless["n_samples"].sum()
    assert (sampled["aborted_samples"] <= sampled["n_samples"]
            - sampled["verifier_scores"].list.eval(pl.element() >= 1.0).list.sum()).all()


@pytest.mark.slow
def test_difficulty_estimators_features_column_and_learned(tmp_path, shared_pool):
    """`features` (prompt length) and `column` (a user difficulty column) join the pilot's signals in
    the difficulty model; the model is saved, and a later run's `learned` estimator uses it unchanged."""
    data = tmp_path / "in.parquet"
    gold = generate_dataset(120, DEMO_MIX, seed=22)
    gold.write_parquet(data)

    def run(out: str, difficulty: dict) -> dict:
        spec = parse_spec({
            "input": {"path": str(data), "gold_column": "gold"},
            "output": {"path": str(tmp_path / out), "part_rows": 20},
            "model": {"max_model_len": 256}, "sampling": {"max_tokens": 200},
            "budget": {"amount": 60_000.0},
            "policy": {"kind": "adaptive", "select": "verifier", "calibration_fraction": 0.34,
                       "calibration_budget_share": 0.6, "difficulty": difficulty},
            "answer_extractor": "arithmetic", "verifier": "arithmetic_steps",
        })
        report = run_job(spec, show_progress=False, pool=shared_pool)
        assert report["spent"] <= 60_000.0 and report["rows"] == 120
        return json.loads((tmp_path / out / "calibration.json").read_text())

    first = run("a", {"estimators": ["pilot", "features", "column"], "column": "digits"})
    names = first["plan"]["feature_names"]
    assert {"log_prompt_tokens", "difficulty_hint", "agreement"} <= set(names)
    saved = json.loads((tmp_path / "a" / "difficulty_model.json").read_text())
    assert saved["feature_names"] == names and saved["model"] == first["plan"]["model"]
    out = pl.read_parquet(tmp_path / "a" / "part-*.parquet").join(gold, on="id")
    live = out.filter(pl.col("difficulty").is_not_null())
    # The estimate orders rows as the regimes do: 7-8 digit rows (hopeless) look harder than 1-3 digit ones.
    assert live.filter(pl.col("digits") >= 7)["difficulty"].mean() > live.filter(pl.col("digits") <= 3)["difficulty"].mean()
    # Rows the features-only gate skips (the digits column says hopeless) are written, unsampled and free.
    gated = out.filter(pl.col("stop_reason") == "gated")
    assert (gated["digits"] >= 7).all() and (gated["status"] == "ok").all() and (gated["tier"] == "skip").all()
    assert (gated["n_samples"] == 0).all() and (gated["cost"] == 0).all() and gated["answer"].is_null().all()
    assert (first["plan"]["gate"] is not None) == (gated.height > 0)

    second = run("b", {"estimators": ["pilot", "features", "column", "learned"], "column": "digits",
                       "learned": str(tmp_path / "a" / "difficulty_model.json")})
    assert second["plan"]["model"] == first["plan"]["model"] and second["plan"]["feature_names"] == names
