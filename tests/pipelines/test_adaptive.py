"""Live adaptive tier: plan from calibration samples, budget math, the row program, and one policy
driven two ways (``AdaptiveTier`` row by row, ``plan_draws`` columnar) drawing alike."""

import json
import pickle

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.plan.adaptive import (
    AdaptivePlan,
    BucketPlan,
    StopRule,
    label_calibration,
    plan_draws,
    plan_from_calibration,
    plot_plan,
)
from tierwise.pipelines.plan.calibration import DifficultyModel
from tierwise.pipelines.plan.rules import AdaptiveConfig, _stop_rules, pilot_features, stop_signal
from tierwise.pipelines.plan.stopping import LABEL_TOP_PROB, label_confident
from tierwise.pipelines.replay.synthetic import synthetic_samples
from tierwise.pipelines.replay.table import build_table
from tierwise.pipelines.tiers.adaptive_tiers import AdaptiveTier, row_features
from tierwise.pipelines.tiers.base import RowState
from tierwise.pipelines.tiers.generation import GenResult, Sample

ROWS = 3000


@pytest.fixture(scope="module")
def calibration():
    return synthetic_samples(600, 16, seed=0).drop("population")


@pytest.fixture(scope="module")
def fresh():
    """Rows the plan has not seen, with their population for diagnostics."""
    return synthetic_samples(400, 16, seed=1)


def _plan(samples, per_row, unit="samples", objective="accuracy", **kw):
    pilot = samples.filter(pl.col("sample_idx") < 2)
    row = 2.0 if unit == "samples" else float((pilot["output_tokens"].sum() + pilot.filter(
        pl.col("sample_idx") == 0)["prompt_tokens"].sum()) / pilot["query_id"].n_unique())
    return plan_from_calibration(samples, rows_remaining=ROWS, budget_remaining=per_row * row * ROWS / 2,
                                 unit=unit, objective=objective, **kw)


def test_plan_round_trips_through_json_and_pickle(calibration, tmp_path):
    plan, report = _plan(calibration, 4.0, "tokens")
    d = json.loads(json.dumps(plan.to_dict()))
    back = AdaptivePlan.from_dict(d)
    assert back.to_dict() == plan.to_dict()
    assert pickle.loads(pickle.dumps(plan)).to_dict() == plan.to_dict()
    feats = np.random.default_rng(0).normal(size=(50, len(plan.feature_names)))
    assert np.array_equal(back.classify(feats)[1], plan.classify(feats)[1])
    json.dumps(report)
    plot_plan(report, str(tmp_path / "plan.png"))
    assert (tmp_path / "plan.png").stat().st_size > 1000


@pytest.mark.parametrize("unit", ["samples", "tokens"])
@pytest.mark.parametrize("per_row", [2.0, 3.0, 5.0, 9.0])
def test_expected_spend_within_budget(calibration, unit, per_row):
    plan, report = _plan(calibration, per_row, unit)
    money = report["budget"]
    assert money["expected_total"] <= money["budget_remaining"] * (1 + 1e-9)
    assert money["expected_total"] == pytest.approx(ROWS * plan.expected_cost_per_row)
    assert sum(b.share for b in plan.buckets) == pytest.approx(1.0)
    assert all(0 <= b.alt_share < 1 for b in plan.buckets)
    if per_row >= 5:  # money beyond the pilot is spent on some bucket, nearly all of it
        assert money["expected_extra_total"] >= 0.9 * money["extra_budget"]


def test_zero_budget_skips_every_bucket(calibration):
    plan, report = plan_from_calibration(calibration, rows_remaining=ROWS, budget_remaining=0.0, unit="tokens",
                                         objective="accuracy")
    assert plan.pilot == 1 and report["warnings"]
    assert {b.tier for b in plan.buckets} == {"skip"} and all(b.rule.cap == plan.pilot for b in plan.buckets)
    assert plan.expected_cost_per_row == plan.pilot_cost
    none_left, _ = plan_from_calibration(calibration, rows_remaining=0, budget_remaining=1e6, unit="samples",
                                         objective="accuracy")
    assert {b.tier for b in none_left.buckets} == {"skip"}


def test_huge_budget_takes_each_buckets_peak(calibration):
    """Every bucket reaches its measured peak; a bucket whose curve rose and still has unsolved rows
    takes the richest rule (``_spend_slack``: calibration misses small late gains) instead."""
    plan, report = _plan(calibration, 1e6)
    richest = max((b.rule for b in plan.buckets), key=lambda r: (r.cap, r.threshold if np.isfinite(r.threshold) else 0))
    assert any(b.rule == richest for b in plan.buckets)
    for b, rb in zip(plan.buckets, report["buckets"]):
        assert b.alt_rule is None and b.rule.label in (rb["peak"]["label"], richest.label)
        assert b.expected_score == pytest.approx(max(p["score"] for p in rb["points"]))
        if b.rule.label != rb["peak"]["label"]:
            assert rb["peak"]["score"] < 1.0
    # A price stops each bucket at its knee instead, spending less for most of the score.
    priced, rep = _plan(calibration, 1e6, price=0.01)
    assert priced.expected_cost_per_row < plan.expected_cost_per_row
    assert [b.rule.label for b in priced.buckets] == [rb["knee"]["label"] for rb in rep["buckets"]]


def test_hopeless_and_easy_get_no_headroom_headroom_gets_more(calibration, fresh):
    plan, _ = _plan(calibration, 4.0)
    easiest, hardest = plan.buckets[0], plan.buckets[-1]
    assert easiest.rule.cap == plan.pilot and easiest.tier == "skip"
    assert hardest.rule.cap == plan.pilot and hardest.tier == "skip"
    assert any(b.rule.cap > plan.pilot for b in plan.buckets[1:-1])
    d = plan_draws(plan, fresh).join(fresh.filter(pl.col("sample_idx") == 0).select("query_id", "population"),
                                     on="query_id")
    mean = dict(d.group_by("population").agg(pl.col("n_drawn").mean()).iter_rows())
    assert mean["headroom"] > 2 * mean["easy"] and mean["headroom"] > 2 * mean["hopeless"]
    assert mean["easy"] < plan.pilot + 0.5 and mean["hopeless"] < plan.pilot + 1.0


def test_label_calibration_sources():
    df = pl.DataFrame({"query_id": ["a"] * 4 + ["b"] * 3, "sample_idx": [0, 1, 2, 3, 0, 1, 2],
                       "answer": ["1", "2", "2", "1", None, "5", None], "output_tokens": [1] * 7,
                       "correct": pl.Series([None] * 7, dtype=pl.Boolean)})
    out, source = label_calibration(df)  # majority; tie in "a" goes to "1" (seen first); None never counts
    assert source == "majority" and out["correct"].to_list() == [True, False, False, True, False, True, False]
    scored = df.with_columns(verifier_score=pl.Series([0.9, 0.1, None, 0.5, 0.2, 0.7, 0.0]))
    out, source = label_calibration(scored)
    assert source == "verifier" and out["correct"].to_list() == [True, False, False, True, False, True, False]
    gold = df.with_columns(correct=pl.Series([False, True, True, False, False, None, False]))
    out, source = label_calibration(gold)
    assert source == "gold+majority" and out["correct"].to_list() == [False, True, True, False, False, True, False]
    assert label_calibration(gold.with_columns(pl.col("correct").fill_null(False)))[1] == "gold"


def test_plan_without_gold_uses_majority_labels(calibration):
    plan, report = _plan(calibration.with_columns(correct=pl.lit(None, pl.Boolean)), 4.0)
    assert plan.labels == report["labels"] == "majority" and len(plan.buckets) >= 3


# ---- the row program on hand-made rows ---------------------------------------------------------------

def _hand_plan(easy: StopRule, hard: StopRule, round_size: int = 2, alt: StopRule | None = None,
               alt_share: float = 0.0) -> AdaptivePlan:
    """Two buckets by pilot agreement: both pilot samples agree -> easy (bucket 0), else hard."""
    names = ("agreement", "parsed", "log_tokens")
    model = DifficultyModel(list(names), np.array([0.75, 1.0, 5.0]), np.array([0.25, 1.0, 1.0]),
                            np.array([4.0, 0, 0, 0, 0, 0]), 0.0)
    return AdaptivePlan(2, round_size, "accuracy", "samples", names, model, (0.5,),
                        (BucketPlan(0, 10, 0.5, easy, 0.0, 0.9), BucketPlan(1, 10, 0.5, hard, 1.0, 0.5, alt, alt_share)),
                        False, 2.0)


def _run(tier: AdaptiveTier, answers: list[str | None], seed: int = 100) -> tuple[RowState, list]:
    """Drive the row program as a replica does (seed + samples drawn so far), feeding ``answers`` in order as if generated."""
    state, requests, fed = RowState("row-1", 10), [], iter(answers)
    while (req := tier.next_request(state, seed + len(state.samples))) is not None:
        requests.append(req)
        got = [next(fed) for _ in range(req.n)]
        state.add(GenResult("r", 10, [Sample(a or "", 5, -0.1) for a in got]), lambda t: t or None)
    return state, requests


def test_row_stops_at_agreement_and_records_bucket():
    tier = AdaptiveTier(plan=_hand_plan(StopRule(0.8, None, 8, "vote"), StopRule(0.8, None, 8, "vote")))
    state, reqs = _run(tier, ["7", "7"] + ["9"] * 10)
    assert (len(state.samples), state.stop_reason, state.bucket, state.tier) == (2, "agreed", 0, "vote")
    assert state.difficulty == pytest.approx(1 / (1 + np.exp(4)))
    # 7 8 | 7 7: P(leader is mode) is 0.6875 after 3 samples and 0.8125 after 4.
    state, reqs = _run(tier, ["7", "8", "7", "7", "7", "7"])
    assert (len(state.samples), state.stop_reason, state.bucket) == (4, "agreed", 1)
    assert [r.n for r in reqs] == [2, 2] and reqs[0].temperature == 0.7
    # The rule fires mid-round (after sample 5 of 5-6): the row still stops at the round's end.
    state, _ = _run(tier, ["7", "8", "7", "9", "7", "1", "7", "7"])
    assert (len(state.samples), state.stop_reason) == (6, "agreed")
    assert tier.select(state)[0] == "7"


def test_row_respects_cap_with_a_short_last_round_and_fresh_seeds():
    tier = AdaptiveTier(plan=_hand_plan(StopRule(0.8, None, 4, "vote"), StopRule(float("inf"), None, 7, "vote"),
                                        round_size=3))
    state, reqs = _run(tier, [str(i % 2) for i in range(20)], seed=100)
    assert (len(state.samples), state.stop_reason) == (7, "cap")
    assert [r.n for r in reqs] == [2, 3, 2]
    assert [r.seed for r in reqs] == [100, 102, 105]  # base + samples drawn: no sample seed repeats


def test_row_gives_up_and_no_headroom():
    give_up = StopRule(0.95, 4, 16, "vote")
    tier = AdaptiveTier(plan=_hand_plan(StopRule(0.8, None, 2, "skip"), give_up))
    state, _ = _run(tier, ["1", "2", "3", "4", "5", "6"])
    assert (len(state.samples), state.stop_reason) == (4, "gave_up")
    state, _ = _run(tier, ["1", "2", "3", "3", "3", "3", "3", "3"])  # 3 has 2 of 4 votes: keeps going
    assert state.stop_reason == "agreed" and len(state.samples) > 4
    state, reqs = _run(tier, ["5", "5", "5"])
    assert (len(state.samples), state.stop_reason, state.tier, len(reqs)) == (2, "no_headroom", "skip", 1)


def _run_labelled(tier: AdaptiveTier, answers: list[str], top_prob: float | None) -> tuple[RowState, list]:
    """``_run`` with the first pass's label distribution set as the replica sets it (``tierwise.ray_cluster.rows``)."""
    state, requests, fed = RowState("row-1", 10), [], iter(answers)
    while (req := tier.next_request(state, 100 + len(state.samples))) is not None:
        requests.append(req)
        state.add(GenResult("r", 10, [Sample(next(fed), 5, -0.1) for _ in range(req.n)]), lambda t: t or None)
        if top_prob is not None and len(requests) == 1:
            state.features[LABEL_TOP_PROB] = top_prob
    return state, requests


def test_confident_first_pass_needs_no_second_sample():
    plan = _hand_plan(StopRule(0.8, None, 8, "vote"), StopRule(0.8, None, 8, "vote"))
    tier = AdaptiveTier(plan=plan, label_confidence=0.9)
    state, reqs = _run_labelled(tier, ["7"] * 10, 0.95)
    assert (len(state.samples), state.stop_reason, state.tier, [r.n for r in reqs]) == (1, "confident", "confident", [1])
    assert tier.select(state)[0] == "7"
    # Below the threshold, or with no distribution, the row draws the rest of its pilot (seed past the first
    # sample), then goes on as without the signal: the same samples and stop as the plain tier's.
    plain = _run(AdaptiveTier(plan=plan), ["7", "8", "7", "7", "7", "7"])[0]
    for top in (0.5, None):
        state, reqs = _run_labelled(tier, ["7", "8", "7", "7", "7", "7"], top)
        assert [r.n for r in reqs] == [1, 1, 2] and [r.seed for r in reqs] == [100, 101, 102]
        assert (len(state.samples), state.stop_reason, state.bucket) == (len(plain.samples), plain.stop_reason, 1)


def test_label_confident_threshold_and_missing_distributions():
    got = label_confident(np.array([0.95, 0.9, 0.89, np.nan]), 0.9)
    assert got.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="threshold"):
        label_confident(np.array([0.5]), 0.0)


def test_row_split_between_two_rules_by_row_hash_and_budget_stop_is_kept():
    rich = StopRule(float("inf"), None, 6, "vote")
    for share, cap in ((0.0, 4), (1.0, 6)):
        tier = AdaptiveTier(plan=_hand_plan(StopRule(0.8, None, 2, "skip"), StopRule(float("inf"), None, 4, "vote"),
                                            alt=rich, alt_share=share))
        assert len(_run(tier, [str(i) for i in range(10)])[0].samples) == cap
    state = RowState("r", 3, stop_reason="budget")
    assert tier.next_request(state, 1) is None and state.stop_reason == "budget"
    with pytest.raises(ValueError, match="needs a plan"):
        AdaptiveTier()


# ---- one policy, two drivers -------------------------------------------------------------------------

def _feed_rows(samples: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {k[0]: g.sort("sample_idx") for k, g in samples.group_by("query_id")}


def _add(state: RowState, part: pl.DataFrame) -> None:
    """Append recorded samples as one generated round (verifier scores returned as recorded)."""
    scores = part["verifier_score"].to_list() if "verifier_score" in part.columns else None
    state.add(GenResult("x", state.prompt_tokens, [
        Sample(a or "", t, lp) for a, t, lp in zip(part["answer"], part["output_tokens"], part["mean_logprob"])]),
        lambda t: t or None, scores)


def _live_row(tier: AdaptiveTier, row: pl.DataFrame) -> RowState:
    """Run the row program over one recorded row, its samples returned in recorded order (and its
    ``difficulty_hint``, when the plan reads it, as the replica reads the user's column)."""
    hint = {"difficulty_hint": row["difficulty_hint"][0]} if "difficulty_hint" in row.columns else {}
    state = RowState(row["query_id"][0], int(row["prompt_tokens"][0]), features=hint)
    while (req := tier.next_request(state, 7 + state.rounds)) is not None:
        _add(state, row.slice(len(state.samples), req.n))
    return state


@pytest.mark.parametrize("estimators,extra", [
    (("pilot",), ()),
    (("pilot", "features", "column"), ("log_prompt_tokens", "difficulty_hint", "feature_digits")),
    (("features", "column"), ("log_prompt_tokens", "difficulty_hint", "feature_digits")),
])
def test_live_features_equal_replay_features(estimators, extra):
    samples = synthetic_samples(60, 6, seed=4, verifier=True, null_rate=0.2)
    # A user column (``features``) that is constant per row, and a prompt length that varies by row.
    samples = samples.with_columns(feature_digits=pl.col("difficulty_hint") // 10,
                                   prompt_tokens=(pl.col("query_id").hash(1) % 50 + 5).cast(pl.Int64))
    plan, _ = plan_from_calibration(samples, rows_remaining=100, budget_remaining=1e7, unit="tokens",
                                    objective="accuracy",
                                    config=AdaptiveConfig(pilot_samples=3, estimators=estimators))
    pilot_signals = ("agreement", "parsed", "log_tokens", "mean_logprob", "verifier_score")
    assert plan.pilot == 3 and plan.feature_names == (pilot_signals if "pilot" in estimators else ()) + extra
    table = build_table(samples)
    replayed = pilot_features(table, 3, np.minimum(3, table.n_available), plan.feature_names)[0]
    rows = _feed_rows(samples)
    for i, qid in enumerate(table.query_ids):
        first = rows[qid].row(0, named=True)
        state = RowState(qid, first["prompt_tokens"],
                         features={k: first[k] for k in ("difficulty_hint", "feature_digits")})
        _add(state, rows[qid].head(3))
        assert np.array_equal(row_features(state, plan)[0], replayed[i], equal_nan=True)


@pytest.mark.parametrize("objective,verifier,round_size,unit,estimators", [
    ("accuracy", False, 1, "samples", None), ("accuracy", False, 2, "tokens", None),
    ("accuracy", True, 3, "tokens", None), ("coverage", False, 2, "samples", None),
    ("coverage", True, 1, "tokens", None), ("coverage", True, 2, "samples", None),
    ("verified_yield", True, 1, "samples", None), ("verified_yield", True, 2, "tokens", None),
    # Without the pilot's signals the model reads no verifier score, yet rows must still stop on it.
    ("coverage", True, 2, "samples", ("features", "column")), ("accuracy", True, 1, "tokens", ("column",)),
])
def test_live_tier_draws_what_replay_draws(objective, verifier, round_size, unit, estimators):
    cal = synthetic_samples(400, 12, seed=0, verifier=verifier)
    rows = synthetic_samples(250, 12, seed=1, verifier=verifier)
    plan = None
    for per_row in (5.0, 3.0, 4.0):  # pick a budget whose plan mixes rules and has headroom buckets
        plan, _ = _plan(cal, per_row, unit, objective, round_size=round_size,
                        config=AdaptiveConfig(estimators=estimators) if estimators else None)
        if any(b.alt_rule is not None for b in plan.buckets):
            break
    assert any(b.rule.cap > plan.pilot for b in plan.buckets)
    replayed = plan_draws(plan, rows)
    tier = AdaptiveTier(plan=plan, weighted=plan.weighted)
    live = {qid: _live_row(tier, r) for qid, r in _feed_rows(rows).items()}
    got = replayed.with_columns(
        live_n=pl.Series([len(live[q].samples) for q in replayed["query_id"]]),
        live_bucket=pl.Series([live[q].bucket for q in replayed["query_id"]], dtype=pl.Int32),
        live_tier=pl.Series([live[q].tier for q in replayed["query_id"]]),
        reason=pl.Series([live[q].stop_reason for q in replayed["query_id"]]))
    assert (got["n_drawn"] == got["live_n"]).all()
    assert (got["bucket"] == got["live_bucket"]).all() and (got["tier"] == got["live_tier"]).all()
    assert got["n_drawn"].n_unique() > 2 and set(got["reason"]) <= {"agreed", "verified", "yield_reached",
                                                                     "gave_up", "cap", "no_headroom", "gated"}
    # Rows the features-only gate skips draw nothing, live and replayed.
    assert set(got.filter(pl.col("reason") == "gated")["n_drawn"]) <= {0}
    if objective == "verified_yield":
        assert plan.signal == "verified_count" and "yield_reached" in set(got["reason"])
    if verifier and estimators:
        assert "verifier_score" not in plan.feature_names and plan.signal == "verifier"
    if round_size == 1:  # and plan_draws is replay's own decision rule: stop point of the rule, then the cap
        table = build_table(rows.drop(*([] if "difficulty_hint" in plan.feature_names else ["difficulty_hint"]),
                                      *([] if verifier else ["verifier_score"]), strict=False))
        cfg = AdaptiveConfig()
        thresholds = tuple(sorted({r.threshold for b in plan.buckets for r in (b.rule, b.alt_rule) if r}))
        levels = (None, *sorted({r.give_up_below for b in plan.buckets for r in (b.rule, b.alt_rule)
                                 if r and r.give_up_below is not None}))
        signal = stop_signal(table, objective, plan.yield_cap, plan.verifier_pass)
        stops, labels, _ = _stop_rules(table, signal, thresholds, plan.pilot, cfg, levels)
        drawn = dict(zip(replayed["query_id"], replayed["n_drawn"]))
        alt = plan.takes_alt(table.query_ids, replayed["bucket"].fill_null(0).to_numpy())
        for i, (qid, b) in enumerate(zip(table.query_ids, replayed["bucket"])):
            if b is None:  # gated
                continue
            r = plan.buckets[b].alt_rule if alt[i] else plan.buckets[b].rule
            want = min(int(stops[labels.index(r.label.rsplit(",cap=", 1)[0]), i]), r.cap)
            assert drawn[qid] == (want if r.cap > plan.pilot else plan.pilot)


def test_verifier_give_up_live_equals_replay():
    """Coverage with a verifier: a one-sample pilot, and a give-up on the best verifier score so far,
    decided alike row by row and columnar."""
    cal = synthetic_samples(400, 12, seed=0, verifier=True)
    rows = synthetic_samples(250, 12, seed=1, verifier=True)
    plan, report = _plan(cal, 4.0, "samples", "coverage", round_size=1)
    assert plan.pilot == 1 and plan.signal == "verifier"
    assert any("<" in p["label"] for b in report["buckets"] for p in b["points"])
    best = np.maximum.accumulate(np.nan_to_num(build_table(rows.drop("difficulty_hint")).verifier_score, nan=-1), axis=1)
    level = float(np.median(best[:, 3]))
    rule = StopRule(plan.buckets[0].rule.threshold if np.isfinite(plan.buckets[0].rule.threshold) else 0.9, 4, 12,
                    "best_of_n", level)
    assert StopRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    plan = AdaptivePlan.from_dict({**plan.to_dict(), "buckets": [
        {**b.to_dict(), "rule": rule.to_dict(), "alt_rule": None, "alt_share": 0.0} for b in plan.buckets]})
    replayed = plan_draws(plan, rows)
    tier = AdaptiveTier(plan=plan, weighted=plan.weighted)
    live = {qid: _live_row(tier, r) for qid, r in _feed_rows(rows).items()}
    assert replayed["n_drawn"].to_list() == [len(live[q].samples) for q in replayed["query_id"]]
    gave_up = [q for q in replayed["query_id"] if live[q].stop_reason == "gave_up"]
    assert gave_up and all(len(live[q].samples) == 4 and max(live[q].scores) < level for q in gave_up)


def test_judge_tokens_enter_the_plans_cost(calibration):
    """A judge's tokens per sample make every sample dearer: the same budget buys a cheaper plan in
    samples, and the plan's expected cost counts them (so its spend stays within the budget)."""
    judged = calibration.with_columns(judge_tokens=pl.lit(40, pl.Int64))
    first = calibration.filter(pl.col("sample_idx") == 0)
    budget = 3000 * 4 * float((first["output_tokens"] + first["prompt_tokens"]).mean())  # about 4 samples a row
    plain, _ = plan_from_calibration(calibration, rows_remaining=3000, budget_remaining=budget, unit="tokens",
                                     objective="accuracy")
    plan, report = plan_from_calibration(judged, rows_remaining=3000, budget_remaining=budget, unit="tokens",
                                         objective="accuracy")
    assert plan.pilot_cost == pytest.approx(plain.pilot_cost + 40 * plan.pilot)
    assert report["budget"]["expected_total"] <= budget * (1 + 1e-9)
    mean_cap = [sum(b.share * b.rule.cap for b in p.buckets) for p in (plain, plan)]
    assert mean_cap[1] <= mean_cap[0]
