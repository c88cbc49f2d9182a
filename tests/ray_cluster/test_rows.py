"""A part's rows on a fake engine (no vLLM): what a row spends stays in its record when
something fails part way, a dead engine is the replica's loss (never a row error), and
a halted job's rows start no new round. The real engine's faults are in tests/jobs/test_faults.py."""

from __future__ import annotations

import asyncio

import pytest

from tierwise.pipelines.data.errors import EngineDead
from tierwise.pipelines.plan.budget import GRANTED
from tierwise.pipelines.tiers.answers import make_extractor
from tierwise.pipelines.tiers.base import uniform_tier
from tierwise.pipelines.tiers.generation import GenResult, Sample
from tierwise.ray_cluster.rows import RowRunner
from tierwise.ray_cluster.scoring import Scorer


class FakeEngine:
    max_model_len = 256

    def __init__(self, fail: BaseException | None = None):
        self.fail, self.calls = fail, 0

    def input_ids(self, ids, sampling):
        return ids

    async def generate(self, request_id, ids, sampling, keep_going=None):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return GenResult(request_id, len(ids), [Sample(f"A: {i}", 7) for i in range(sampling.n)])


class FakeLedger:
    """Grants everything; tracks what is reserved and what was spent."""

    def __init__(self):
        self.reserved = self.spent = 0.0

    async def reserve(self, amount):
        self.reserved += amount
        return GRANTED

    async def settle(self, reserved, actual, kind="generation"):
        self.reserved -= reserved
        self.spent += actual

    async def release(self, reserved):
        self.reserved -= reserved


def _run(engine, verifier=None, halt=None, rows=3):
    ledger = FakeLedger()
    scorer = Scorer(make_extractor("arithmetic"), verifier, timeout_s=5)
    runner = RowRunner(engine, asyncio.Semaphore(8), uniform_tier(2, 0.7, 1.0, 20), ledger, scorer, seed=0,
                       cost_per_token=1.0, keep_samples=False, halt=halt)

    async def go():
        return await asyncio.gather(*(runner.run(f"r{i}", "1+2=", None, {}, [1, 2, 3, 4]) for i in range(rows)),
                                    return_exceptions=True)
    return asyncio.run(go()), ledger


def test_a_raising_verifier_keeps_the_rows_spend():
    """Issue 16, point 12: a verifier that raised left the row at cost 0 while its tokens were
    spent (ledger 4,719 vs output 4,537). Now its scores are null and the row goes on."""
    recs, ledger = _run(FakeEngine(), "tests.support.slow_verifier:broken")
    assert [r["status"] for r in recs] == ["ok"] * 3
    assert all(r["verifier_issues"] == {"error": 2} and r["verifier_scores"] == [None, None] for r in recs)
    assert sum(r["cost"] for r in recs) == pytest.approx(ledger.spent) and ledger.spent == 3 * (4 + 14)
    assert ledger.reserved == pytest.approx(0)


def test_a_row_that_fails_part_way_keeps_what_it_spent():
    class BadTier:  # a tier that fails after its first round was spent
        name = "bad"

        def __init__(self):
            self.inner = uniform_tier(2, 0.7, 1.0, 20)

        def next_request(self, state, seed):
            return self.inner.next_request(state, seed)

        def absorb(self, *a):
            raise ValueError("a bug in a tier")

    ledger = FakeLedger()
    runner = RowRunner(FakeEngine(), asyncio.Semaphore(8), BadTier(), ledger,
                       Scorer(make_extractor("arithmetic"), None), seed=0, cost_per_token=1.0, keep_samples=False)
    rec = asyncio.run(runner.run("r0", "1+2=", None, {}, [1, 2, 3, 4]))
    assert rec["status"] == "error" and "a bug in a tier" in rec["error"]
    assert (rec["cost"], rec["prompt_tokens"], rec["output_tokens"], rec["n_samples"]) == (18.0, 4, 14, 2)
    assert ledger.spent == rec["cost"]


def test_a_dead_engine_is_the_replicas_loss_not_a_row_error():
    """Issue 16, point 8: rows sent to a dead engine were committed as `error` records."""
    recs, ledger = _run(FakeEngine(fail=EngineDead("gone")))
    assert all(isinstance(r, EngineDead) for r in recs)
    assert ledger.reserved == pytest.approx(0) and ledger.spent == 0  # every reservation went back


def test_other_engine_errors_stay_row_errors():
    recs, ledger = _run(FakeEngine(fail=RuntimeError("bad request")))
    assert [r["status"] for r in recs] == ["error"] * 3 and ledger.reserved == pytest.approx(0)


def test_a_halted_job_starts_no_new_round():
    class Halt:
        stopped = True

    engine = FakeEngine()
    recs, ledger = _run(engine, halt=Halt())
    assert engine.calls == 0 and ledger.spent == 0
    assert all(r["error"] == "the job stopped" for r in recs)
