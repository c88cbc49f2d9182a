"""Replica-side scoring without an engine: pure verifiers, and judge accounting in
part summaries and the run report. (The judge itself runs live in
tests/jobs/test_judge_run.py, on the real engine.)"""

import asyncio

import pytest

from tierwise.pipelines.data import records
from tierwise.pipelines.tiers.answers import make_extractor
from tierwise.pipelines.tiers.generation import Sample
from tierwise.pipelines.tiers.judge import JudgeConfig
from tierwise.pipelines.tiers.tasks.arithmetic import solution
from tierwise.ray_cluster.scoring import Scorer


def _score(scorer: Scorer, prompt: str, texts: list[str]):
    row = scorer.for_row("r1", prompt, seed=0, cost_per_token=1.0)
    # Pure verifiers never touch the ledger: None stands in for it.
    return asyncio.run(row.score([Sample(t, 5) for t in texts], None)), row


def test_pure_verifier_scores_inline_and_spends_nothing():
    good = solution("57+8=\n")
    scores, row = _score(Scorer(make_extractor("arithmetic"), "arithmetic_steps"), "57+8=\n",
                         [good, good.replace("A: 65", "A: 64"), "nonsense"])
    assert scores[0] == 1.0 and scores[1] < 1.0 and scores[2] == 0.0
    assert (row.tokens, row.cost) == (0, 0.0)
    assert row.columns() == {"judge_tokens": None, "judge_issues": None, "verifier_issues": None}


def test_user_verifier_runs_off_the_event_loop_and_a_slow_call_times_out():
    """Issue 16, point 9: a module:function verifier that sleeps made rows wait one call
    after another on the replica's loop. Now its calls run on threads, each within the
    timeout: the slow one scores null (counted), the others score, and the loop runs on."""
    import time

    scorer = Scorer(make_extractor("full"), "tests.support.slow_verifier:sleepy", timeout_s=0.3)
    ticks = []

    async def go():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)
        t = asyncio.ensure_future(ticker())
        row = scorer.for_row("r1", "p", seed=0, cost_per_token=1.0)
        t0 = time.monotonic()
        scores = await row.score([Sample("ok", 5), Sample("slow", 5), Sample("ok too", 5)], None)
        t.cancel()
        return scores, row, time.monotonic() - t0

    scores, row, took = asyncio.run(go())
    assert scores == [1.0, None, 1.0]
    assert row.verifier_issues == {"timeout": 1} and row.columns()["verifier_issues"] == {"timeout": 1}
    assert took < 1.5  # the timeout, not the 2 s sleep
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.25  # the event loop never stalled


def test_a_verifier_that_raises_scores_null_and_is_counted():
    for name, inline in (("tests.support.slow_verifier:broken", False), ("arithmetic_steps", True)):
        scorer = Scorer(make_extractor("arithmetic"), name, timeout_s=5)
        assert scorer.inline is inline
        if inline:
            scorer.verify = lambda prompt, text: 1 / 0
        scores, row = _score(scorer, "57+8=\n", ["a", "b"])
        assert scores == [None, None] and row.verifier_issues == {"error": 2}


def test_no_verifier_gives_null_scores():
    scorer = Scorer(make_extractor("full"), None)
    scores, _ = _score(scorer, "p", ["a", "b"])
    assert scores == [None, None] and not scorer.scores


def test_judge_needs_an_engine():
    with pytest.raises(ValueError, match="needs an engine"):
        Scorer(make_extractor("arithmetic"), JudgeConfig("agree", "{prompt}"))


def test_judge_columns_reach_the_part_summary_and_the_report():
    from tierwise.jobs.spec import parse_spec
    from tierwise.pipelines.data.report import build_report
    from tierwise.ray_cluster.replica import summarize

    base = {"status": "ok", "n_samples": 2, "prompt_tokens": 10, "output_tokens": 40}
    table = records.to_table([
        {"id": "a", **base, "cost": 80.0, "judge_tokens": 30, "judge_issues": None},
        {"id": "b", **base, "cost": 50.0, "judge_tokens": 0, "judge_issues": {"budget": 2}},
        {"id": "c", **base, "cost": 70.0, "judge_tokens": 20, "judge_issues": {"unparseable": 1}},
    ])
    summary = summarize(0, table, 1.0)
    assert summary["judge_tokens"] == 50 and summary["judge_issues"] == {"budget": 2, "unparseable": 1}
    spec = parse_spec({"input": {"path": "x"}, "output": {"path": "y"}, "budget": {"amount": 1000}})
    report = build_report(spec, [summary, summary], {"spent": 400.0}, 6, 2, 0, 1.0)
    assert report["judge"] == {"tokens": 100, "issues": {"budget": 4, "unparseable": 2}}
    plain = summarize(1, records.to_table([{"id": "d", **base, "cost": 50.0}]), 1.0)
    assert "judge_tokens" not in plain
    assert "judge" not in build_report(spec, [plain], {"spent": 50.0}, 1, 1, 0, 1.0)
