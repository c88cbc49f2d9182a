"""The adaptive ladder's think / search rungs: measuring them, planning with them, running them row by row
(hand-made results; no Ray, no vLLM)."""

import json

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.plan.adaptive import (
    AdaptivePlan,
    BucketPlan,
    StopRule,
    plan_draws,
    plan_from_calibration,
    plot_plan,
)
from tierwise.pipelines.plan.calibration import DifficultyModel
from tierwise.pipelines.plan.rungs import majority_answers, rung_measures, rung_options
from tierwise.pipelines.replay.synthetic import synthetic_samples
from tierwise.pipelines.tiers.adaptive_tiers import AdaptiveTier
from tierwise.pipelines.tiers.base import RowState, think_tier
from tierwise.pipelines.tiers.generation import GenResult, Sample
from tierwise.pipelines.tiers.search import SearchTier
from tierwise.pipelines.tiers.tasks.arithmetic import check_steps, extract_answer

ROWS = 3000


# ---- measuring a rung -----------------------------------------------------------------------------------

def _output() -> pl.DataFrame:
    """Three rung rows as the replica writes them: a: right, b: wrong answer but one right sample, c: the
    budget skipped it (it ran nothing: not a measurement)."""
    return pl.DataFrame({
        "id": ["a", "b", "c"], "status": ["ok", "ok", "skipped_budget"], "answer": ["5", "7", None],
        "prompt_tokens": [10, 30, 12], "output_tokens": [50, 90, 0], "n_samples": [1, 3, 0],
        "sample_answers": [["5"], ["7", None, "6"], []],
        "verifier_scores": [[0.9], [0.2, 0.9, 0.7], []]},
        schema_overrides={"sample_answers": pl.List(pl.String), "verifier_scores": pl.List(pl.Float64)})


def test_rung_measures_cost_everything_sent_and_score_the_final_answer():
    gold = pl.DataFrame({"id": ["a", "b", "c"], "gold": ["5", " 6", "1"]})
    m, labels = rung_measures(_output(), "think", objective="accuracy", gold=gold)
    assert labels == "gold" and m.columns == ["query_id", "rung", "cost", "score"]
    assert m["query_id"].to_list() == ["a", "b"]
    assert m["cost"].to_list() == [60.0, 120.0] and m["score"].to_list() == [1.0, 0.0]
    assert (m["rung"] == "think").all()
    cov = rung_measures(_output(), "think", objective="coverage", gold=gold, unit="samples")[0]
    assert cov["score"].to_list() == [1.0, 1.0] and cov["cost"].to_list() == [1.0, 3.0]
    # Without gold, a verifier pass labels a sample; the unanswered sample (score 0.9) never counts.
    ver, labels = rung_measures(_output(), "search", objective="verified_yield", yield_cap=2)
    assert labels == "verifier" and ver["score"].to_list() == [0.5, 0.5]
    acc = rung_measures(_output(), "search", objective="accuracy")[0]
    assert acc["score"].to_list() == [1.0, 0.0]  # b's answer 7 scores 0.2


def test_rung_measures_without_gold_or_verifier_use_the_calibration_majority():
    cal = pl.DataFrame({"query_id": ["a"] * 3 + ["b"] * 3, "sample_idx": [0, 1, 2] * 2,
                        "answer": ["5", "4", "5", "6", "7", None]})
    maj = majority_answers(cal)
    assert dict(maj.iter_rows()) == {"a": "5", "b": "6"}
    out = _output().drop("verifier_scores")
    m, labels = rung_measures(out, "think", objective="accuracy", majority=maj)
    assert labels == "majority" and m["score"].to_list() == [1.0, 0.0]
    with pytest.raises(ValueError, match="no gold, verifier scores or majority"):
        rung_measures(out, "think", objective="accuracy")


def test_rung_options_average_rows_in_or_nearest_each_bucket():
    ids = pl.Series(["q0", "q1", "q2", "q3"])
    difficulty = np.array([0.1, 0.2, 0.8, 0.9] * 2)  # two orders, same predictions
    measures = pl.DataFrame({"query_id": ["q0", "q1", "q3"], "rung": ["think"] * 3, "cost": [10.0, 20.0, 90.0],
                             "score": [1.0, 1.0, 0.0]})
    easy, hard = rung_options(measures, ids, difficulty, np.array([0.5]), min_rows=1)
    assert easy["think"][0].cost == pytest.approx(15.0) and easy["think"][0].score == 1.0 and easy["think"][1] == 2
    assert hard["think"][0].cost == 90.0 and hard["think"][1] == 1
    # Too few rows in a bucket: the nearest ones by difficulty fill it up.
    easy, hard = rung_options(measures, ids, difficulty, np.array([0.5]), min_rows=2)
    assert hard["think"][1] == 2 and hard["think"][0].cost == pytest.approx(55.0)
    assert rung_options(measures.clear(), ids, difficulty, np.array([0.5])) == [{}, {}]


def test_rung_score_is_paired_with_the_pilot_on_the_rungs_own_rows():
    """A rung measured only on rows its pilot already gets right gains nothing: the bucket's pilot-only score
    (measured on all its rows) plus that zero gain, not the sub-slice's raw 1.0."""
    ids = pl.Series(["q0", "q1", "q2", "q3"])
    measures = pl.DataFrame({"query_id": ["q0", "q1"], "rung": ["search"] * 2, "cost": [5.0, 7.0], "score": [1.0, 1.0]})
    args = (measures, ids, np.full(4, 0.5), np.array([]))
    assert rung_options(*args)[0]["search"][0].score == 1.0
    paired = rung_options(*args, pilot_score=np.array([1.0, 1.0, 0.0, 0.0]), reference=[0.5])[0]["search"][0]
    assert (paired.cost, paired.score) == (6.0, 0.5)
    gain = rung_options(*args, pilot_score=np.array([0.0, 0.5, 0.0, 0.0]), reference=[0.9])[0]["search"][0]
    assert gain.score == 1.0  # 0.9 + 0.75, clipped


# ---- planning with rungs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration():
    return synthetic_samples(600, 16, seed=0).drop("population")


def _measures(calibration: pl.DataFrame, rung: str, cost: float, score: float, every: int = 3) -> pl.DataFrame:
    ids = calibration["query_id"].unique(maintain_order=True)[::every]
    return pl.DataFrame({"query_id": ids, "rung": [rung] * len(ids), "cost": [cost] * len(ids),
                         "score": [score] * len(ids)})


def _plan(calibration, per_row: float, **kw):
    # budget: per_row samples per row in all, the pilot (2) included
    return plan_from_calibration(calibration, rows_remaining=ROWS, budget_remaining=per_row * ROWS, unit="samples",
                                 objective="accuracy", **kw)


def test_allocator_picks_a_rung_that_is_cheaper_per_point(calibration):
    base, _ = _plan(calibration, 4.0)
    assert all(b.rule.rung is None for b in base.buckets)
    cheap = _measures(calibration, "think", 1.0, 0.99)
    dear = _measures(calibration, "search", 40.0, 0.5)
    plan, report = _plan(calibration, 4.0, rungs=pl.concat([cheap, dear]))
    # Where sampling cannot reach think's 0.99 (the headroom and hopeless buckets), think is cheaper per point;
    # the easy buckets reach 1.0 with a few more samples, which the budget pays for.
    hard = [b for b, old in zip(plan.buckets, base.buckets) if old.expected_score < 0.99]
    assert len(hard) >= 2 and all(b.tier == "think" and b.rule.rung == "think" and b.alt_rule is None for b in hard)
    assert all(b.expected_score >= 0.99 - 1e-9 for b in plan.buckets) and "search" not in {b.tier for b in plan.buckets}
    assert sum(b.share * b.expected_score for b in plan.buckets) > sum(b.share * b.expected_score for b in base.buckets)
    assert report["budget"]["expected_total"] <= report["budget"]["budget_remaining"] * (1 + 1e-9)
    assert report["rungs"] == ["search", "think"]
    for b, rb in zip(plan.buckets, report["buckets"]):
        assert {r["label"] for r in rb["rungs"]} == {"think", "search"}
        assert (rb["chosen"] == {"think": 1.0}) == (b.tier == "think") == (rb["operating_point"]["tier"] == "think")
    # The plan names its rung in JSON, and reads back.
    d = json.loads(json.dumps(plan.to_dict()))
    last = d["buckets"][-1]
    assert last["rule"]["rung"] == "think" and last["tier"] == "think" and "rung" not in d["buckets"][0]["rule"]
    assert AdaptivePlan.from_dict(d).to_dict() == plan.to_dict()
    # Replayed, rung rows draw only their pilot (recorded samples hold no rung) and say their rung.
    draws = plan_draws(plan, calibration)
    rung_rows = draws.filter(pl.col("bucket") >= len(plan.buckets) - len(hard))
    assert set(rung_rows["tier"]) == {"think"} and (rung_rows["n_drawn"] <= plan.pilot).all()


def test_budget_splits_a_bucket_between_skip_and_a_rung(calibration):
    rung = _measures(calibration, "search", 6.0, 0.99)
    plan, report = _plan(calibration, 2.0 + 3.0, rungs=rung, sampling=False)
    assert report["budget"]["expected_total"] <= report["budget"]["budget_remaining"] * (1 + 1e-9)
    tiers = {r.tier for b in plan.buckets for r in (b.rule, b.alt_rule) if r is not None}
    assert tiers <= {"skip", "search"} and "search" in tiers
    assert any(b.alt_rule is not None and 0 < b.alt_share < 1 for b in plan.buckets)
    # No sampling rung: every stop rule left is the pilot alone.
    assert all(r.cap == plan.pilot for b in plan.buckets for r in (b.rule, b.alt_rule) if r is not None)


def test_plot_marks_rungs(calibration, tmp_path):
    _, report = _plan(calibration, 4.0, rungs=_measures(calibration, "think", 1.5, 0.9))
    plot_plan(report, str(tmp_path / "plan.png"))
    assert (tmp_path / "plan.png").stat().st_size > 1000


# ---- a rung row by row ------------------------------------------------------------------------------

def _plan_with(hard: StopRule, alt: StopRule | None = None, alt_share: float = 0.0) -> AdaptivePlan:
    """Two buckets by pilot agreement (as test_adaptive's hand plan): agreeing pilots skip, others ``hard``."""
    names = ("agreement", "parsed", "log_tokens")
    model = DifficultyModel(list(names), np.array([0.75, 1.0, 5.0]), np.array([0.25, 1.0, 1.0]),
                            np.array([4.0, 0, 0, 0, 0, 0]), 0.0)
    return AdaptivePlan(2, 2, "accuracy", "tokens", names, model, (0.5,),
                        (BucketPlan(0, 10, 0.5, StopRule(0.8, None, 2, "skip"), 0.0, 0.9),
                         BucketPlan(1, 10, 0.5, hard, 50.0, 0.6, alt, alt_share)), True, 20.0)


THINK = StopRule(float("inf"), None, 2, "think", rung="think")
SEARCH = StopRule(float("inf"), None, 2, "search", rung="search")
PROMPT = "57+8=\n"
STEP1, STEP2, ANSWER = "7+8+0=15 5\n", "5+0+1=6 65\n", "A: 65"


def _step(text: str) -> Sample:
    return Sample(text, len(text), -0.1, "stop")


def _drive(tier: AdaptiveTier, pilot: list[str], answer, seed: int = 100) -> tuple[RowState, list]:
    """Run a row as a replica does: the pilot's ``pilot`` answers, then ``answer(request) -> [Sample]`` per
    request, verifier scores from ``check_steps`` on prefix + sample."""
    state, asked_all = RowState("row-1", 6), []
    while (asked := tier.next_request(state, seed + len(state.samples))) is not None:
        requests = asked if isinstance(asked, list) else [asked]
        asked_all.append(requests)
        if state.rounds == 0:
            results = [GenResult("p", 6, [Sample(a, 40, -0.2, "stop") for a in pilot])]
        else:
            results = [GenResult("r", 6 + len(r.prefix), answer(r)) for r in requests]
        scores = [[check_steps(PROMPT, q.prefix + s.text) for s in r.samples] for q, r in zip(requests, results)]
        tier.absorb(state, requests, results, extract_answer, scores)
    return state, asked_all


def test_think_rung_runs_after_the_pilot_and_answers_alone():
    think = think_tier(1, 0.7, 1.0, 1024, weighted=True)
    tier = AdaptiveTier(plan=_plan_with(THINK), weighted=True, max_tokens=256, rungs=(think,))
    state, asked = _drive(tier, ["A: 1", "A: 2"], lambda r: [_step(STEP1 + STEP2 + ANSWER)])
    assert (state.bucket, state.tier, state.stop_reason) == (1, "think", "done")
    assert [len(a) for a in asked] == [1, 1]
    pilot, rung = asked[0][0], asked[1][0]
    assert (pilot.n, pilot.max_tokens) == (2, 256)
    assert (rung.n, rung.max_tokens, rung.temperature, rung.seed) == (1, 1024, 0.0, 102)
    # The row's samples hold the pilot's and the rung's (accounting); its answer is the rung's.
    assert len(state.samples) == 3 and state.answers == ["1", "2", "65"] and state.scores[-1] == 1.0
    assert tier.select(state)[0] == "65"
    # Agreeing pilots land in the skip bucket and never reach the rung.
    state, asked = _drive(tier, ["A: 7", "A: 7"], lambda r: pytest.fail("no rung for easy rows"))
    assert (state.tier, state.stop_reason, len(asked)) == ("skip", "no_headroom", 1)


def test_search_rung_grows_traces_after_the_pilot():
    search = SearchTier(beam_width=2, expansions=2, max_tokens=100, temperature=0.7)
    tier = AdaptiveTier(plan=_plan_with(StopRule(0.8, None, 2, "skip"), alt=SEARCH, alt_share=1.0), weighted=True,
                        rungs=(search,))
    steps = {"": [_step(STEP1), _step("7+8+0=14 4\n")] * 2, STEP1: [_step(STEP2)] * 4,
             STEP1 + STEP2: [_step(ANSWER)] * 4}
    state, asked = _drive(tier, ["A: 1", "no answer"], lambda r: steps[r.prefix][:r.n])
    assert (state.bucket, state.tier, state.stop_reason) == (1, "search", "search_done")
    assert all(r.stop == ("\n",) for a in asked[1:] for r in a) and asked[1][0].seed == 102
    assert [r.prefix for r in asked[2]] == [STEP1]  # the invalid step got no share
    assert tier.select(state)[0] == "65" and state.answers[:2] == ["1", None]
    assert len(state.samples) == 2 + 4 + 4 + 4 and state.rounds == 4


def test_a_plan_naming_a_rung_needs_its_row_program():
    with pytest.raises(ValueError, match=r"rungs \['think'\]"):
        AdaptiveTier(plan=_plan_with(THINK))
