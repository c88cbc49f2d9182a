"""What the adaptive plan no longer wastes: calibration rows stop at a verified sample (with curves that
stay exact), rows the features alone call hopeless skip the pilot (the gate), and budget left after
every bucket's measured peak goes to buckets with headroom instead of going unspent (issue 3's goals)."""

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.plan.adaptive import (
    VERIFIED,
    fit_gate,
    plan_draws,
    plan_from_calibration,
)
from tierwise.pipelines.plan.calibration import fit_difficulty_model
from tierwise.pipelines.plan.rules import AdaptiveConfig, round_draws
from tierwise.pipelines.replay.synthetic import synthetic_samples
from tierwise.pipelines.replay.table import build_table
from tierwise.pipelines.tiers.adaptive_tiers import AdaptiveTier, CalibrationTier
from tierwise.pipelines.tiers.base import RowState
from tierwise.pipelines.tiers.generation import GenResult, Sample


def _verified(n_queries: int, n_samples: int, seed: int) -> pl.DataFrame:
    """Synthetic rows with a verifier that gives correct samples its top score and wrong ones less, and a
    prompt length that marks the hopeless rows (known before any sample)."""
    df = synthetic_samples(n_queries, n_samples, seed=seed, verifier=True)
    noise = (pl.col("query_id").hash(7) + pl.col("sample_idx")).hash(3) % 1000 / 2000.0
    long = pl.col("population") == "hopeless"
    return df.with_columns(
        verifier_score=pl.when(pl.col("correct")).then(VERIFIED).otherwise(noise),
        prompt_tokens=pl.when(long).then(40 + pl.col("query_id").hash(5) % 5)
        .otherwise(10 + pl.col("query_id").hash(5) % 20).cast(pl.Int64))


def _truncate(df: pl.DataFrame, pilot: int = 1, round_size: int = 2) -> pl.DataFrame:
    """What ``CalibrationTier`` records: a row's samples up to the end of the round with a verified one."""
    width = int(df["sample_idx"].max()) + 1
    first = (df.filter(pl.col("verifier_score") >= VERIFIED).group_by("query_id")
             .agg(first=pl.col("sample_idx").min() + 1))
    rows = df.select("query_id").unique().join(first, on="query_id", how="left")
    n = rows["first"].fill_null(width).to_numpy()
    keep = round_draws(n, np.full_like(n, pilot), round_size, np.full_like(n, width))
    return df.join(rows.with_columns(_k=pl.Series(keep)).select("query_id", "_k"), on="query_id") \
        .filter(pl.col("sample_idx") < pl.col("_k")).drop("_k")


# ---- calibration that stops at a verified sample --------------------------------------------------------

def _feed(tier, scores: list[float]) -> tuple[RowState, list]:
    state, requests, fed = RowState("row", 10), [], iter(scores)
    while (req := tier.next_request(state, len(state.samples))) is not None:
        requests.append(req)
        got = [next(fed) for _ in range(req.n)]
        state.add(GenResult("r", 10, [Sample("1", 5, -0.1) for _ in got]), lambda t: t, got)
    return state, requests


def test_calibration_tier_stops_after_the_round_with_a_verified_sample():
    tier = CalibrationTier("calibration", 8, 0.7, 1.0, 64, True, pilot=1, round_size=2, stop_on_verified=True)
    state, reqs = _feed(tier, [1.0] + [0.1] * 10)                 # the pilot verifies: one sample
    assert (len(state.samples), state.stop_reason, [r.n for r in reqs]) == (1, "verified", [1])
    state, reqs = _feed(tier, [0.2, 0.3, 1.0, 0.1] + [0.1] * 10)  # verified in the 2nd round, kept whole
    assert (len(state.samples), state.stop_reason, [r.n for r in reqs]) == (3, "verified", [1, 2])
    state, reqs = _feed(tier, [0.2] * 20)                         # never verified: K samples
    assert (len(state.samples), state.stop_reason, [r.n for r in reqs]) == (8, "done", [1, 2, 2, 2, 1])
    assert [r.seed for r in reqs] == [0, 1, 3, 5, 7]              # every sample its own seed
    whole = CalibrationTier("calibration", 8, 0.7, 1.0, 64, True)  # without a verifier: one request of K
    state, reqs = _feed(whole, [1.0] * 8)
    assert (len(state.samples), [r.n for r in reqs]) == (8, [8])


def test_calibration_samples_hold_the_prompt_once_however_many_rounds_paid_it():
    """Regression: a stopped calibration row pays its prompt once per round and its output row holds the
    sum; read back as is, a row that took more rounds looked longer (``log_prompt_tokens``) and dearer."""
    tier = CalibrationTier("calibration", 8, 0.7, 1.0, 64, True, pilot=1, round_size=2, stop_on_verified=True)
    drawn = {"a": 1, "b": 3, "c": 8, "d": 2}  # rounds: 1, 2, 5 (1+2+2+2+1), 2
    rounds = {"a": 1, "b": 2, "c": 5, "d": 2}
    samples = pl.DataFrame({"query_id": [q for q, n in drawn.items() for _ in range(n)],
                            "sample_idx": [i for n in drawn.values() for i in range(n)],
                            "prompt_tokens": [10 * rounds[q] for q, n in drawn.items() for _ in range(n)]})
    assert set(tier.per_round_prompt(samples)["prompt_tokens"]) == {10}
    whole = CalibrationTier("calibration", 8, 0.7, 1.0, 64, True)  # one request: the prompt once already
    assert whole.per_round_prompt(samples).equals(samples)
    # Samples that stop at a failed step are requests of their own: each paid the prompt.
    each = CalibrationTier("calibration", 8, 0.7, 1.0, 64, True, pilot=1, round_size=2, stop_on_verified=True,
                           prompt_per_sample=True)
    paid = samples.with_columns(prompt_tokens=10 * pl.len().over("query_id"))
    assert set(each.per_round_prompt(paid)["prompt_tokens"]) == {10}


def test_plan_costs_pay_the_prompt_per_sample_when_samples_are_requests_of_their_own():
    from tierwise.pipelines.plan.adaptive import plan_from_calibration
    from tierwise.pipelines.replay.synthetic import synthetic_samples

    samples = synthetic_samples(n_queries=200, n_samples=8, seed=3)
    kw = dict(rows_remaining=1000, budget_remaining=1e9, unit="tokens", objective="accuracy", round_size=2)
    _, per_round = plan_from_calibration(samples, **kw)
    _, per_sample = plan_from_calibration(samples, **kw, prompt_per_sample=True)

    def cost(report):
        return {(b["bucket"], p["label"]): p["cost"] for b in report["buckets"] for p in b["points"]}
    a, b = cost(per_round), cost(per_sample)
    assert a.keys() == b.keys() and all(b[k] >= a[k] for k in a) and any(b[k] > a[k] for k in a)


def test_binomial_fit_is_unbiased_where_sampling_stopped_at_a_success():
    """Rows sampled until their first success: the share of successes overstates p; weighting each row by
    its samples (the binomial likelihood, which the stopping rule leaves unchanged) does not."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.5, 1.0, 6000)
    p = 1 / (1 + np.exp(-x))
    until = rng.geometric(p)                  # the sample that first succeeds
    first = np.minimum(until, 12)             # samples drawn (at most 12)
    share = (until <= 12) / first
    grid = np.linspace(-2.5, 1.0, 8)[:, None]
    truth = 1 / (1 + np.exp(-grid[:, 0]))
    weighted = fit_difficulty_model(x[:, None], share, ["x"], weights=first).predict(grid)
    plain = fit_difficulty_model(x[:, None], share, ["x"]).predict(grid)
    assert np.abs(weighted - truth).mean() < 0.03
    assert np.abs(plain - truth).mean() > 3 * np.abs(weighted - truth).mean()
    same = fit_difficulty_model(x[:, None], share, ["x"], weights=np.full(6000, 3.0)).predict(grid)
    assert np.allclose(same, plain)


def test_curves_from_stopped_calibration_equal_full_calibration_curves():
    """Stopping calibration rows at a verified sample changes no measured point of any rule the plan
    offers (a finite threshold stops there too); "never stop early" is not offered."""
    full = _verified(300, 12, seed=0).drop("population")
    cut = _truncate(full)
    assert len(cut) < 0.7 * len(full)
    cfg = AdaptiveConfig(calibration_orders=1, verifier_quantiles=(1.0,), give_up_quantiles=())
    kw = dict(rows_remaining=1000, budget_remaining=1e6, unit="tokens", objective="accuracy", config=cfg)
    plan_full, rep_full = plan_from_calibration(full, **kw)
    plan_cut, rep_cut = plan_from_calibration(cut, model=plan_full.model, **kw)
    assert plan_cut.edges == plan_full.edges
    for bf, bc in zip(rep_full["buckets"], rep_cut["buckets"]):
        want = {p["label"]: (p["cost"], p["score"]) for p in bf["points"] if "inf" not in p["label"]}
        got = {p["label"]: (p["cost"], p["score"]) for p in bc["points"]}
        assert got.keys() == want.keys() and all(np.allclose(got[k], want[k]) for k in want)
    assert any("inf" in p["label"] for b in rep_full["buckets"] for p in b["points"])
    assert all(np.isfinite(r.threshold) for b in plan_cut.buckets for r in (b.rule, b.alt_rule) if r)


# ---- the features-only gate -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibration():
    return _verified(400, 12, seed=0).drop("population")


def test_gate_skips_rows_the_features_call_hopeless(calibration):
    fresh = _verified(300, 12, seed=1)
    cfg = AdaptiveConfig(estimators=("pilot", "features"))
    plan, report = plan_from_calibration(calibration, rows_remaining=1000, budget_remaining=4e5, unit="tokens",
                                         objective="accuracy", config=cfg)
    assert plan.gate is not None and plan.gate.model.names == ["log_prompt_tokens"]
    assert report["budget"]["rows_gated"] == pytest.approx(1000 * plan.gate.share)
    assert report["budget"]["pilot_total"] == pytest.approx((1000 - report["budget"]["rows_gated"]) * plan.pilot_cost)
    d = plan_draws(plan, fresh).join(fresh.filter(pl.col("sample_idx") == 0).select("query_id", "population"),
                                     on="query_id")
    gated = d.filter(pl.col("n_drawn") == 0)
    assert set(gated["population"]) == {"hopeless"} and len(gated) >= 0.8 * (d["population"] == "hopeless").sum()
    assert gated["bucket"].null_count() == len(gated) and set(gated["tier"]) == {"skip"}
    assert (d.filter(pl.col("population") != "hopeless")["n_drawn"] >= 1).all()
    # The live row program skips the same rows before any request.
    tier = AdaptiveTier(plan=plan, weighted=True)
    for qid, prompt in fresh.filter(pl.col("sample_idx") == 0).select("query_id", "prompt_tokens").iter_rows():
        state = RowState(qid, prompt)
        req = tier.next_request(state, 0)
        skipped = qid in set(gated["query_id"])
        assert (req is None) == skipped and (state.stop_reason == "gated") == skipped
    # Without a free estimator, or with too few all-failing calibration rows, nothing is gated.
    assert plan_from_calibration(calibration, rows_remaining=1000, budget_remaining=4e5, unit="tokens",
                                 objective="accuracy")[0].gate is None
    table = build_table(calibration)
    assert fit_gate(table, ["log_prompt_tokens"], None) is None
    assert fit_gate(table, ["log_prompt_tokens"], 10_000) is None


def test_gate_never_skips_a_region_where_a_calibration_row_was_solved(calibration):
    # One hopeless-looking (long) row that was solved once: rows as long as it are no longer gated.
    table = build_table(calibration)
    gate = fit_gate(table, ["log_prompt_tokens"], 8)
    longest = calibration.filter(pl.col("prompt_tokens") == calibration["prompt_tokens"].max())["query_id"][0]
    solved = calibration.with_columns(correct=pl.when((pl.col("query_id") == longest) & (pl.col("sample_idx") == 0))
                                      .then(True).otherwise(pl.col("correct")))
    again = fit_gate(build_table(solved), ["log_prompt_tokens"], 8)
    assert again is None or again.calibration_rows < gate.calibration_rows


def test_gate_does_not_extrapolate_to_feature_combinations_calibration_never_failed_on():
    """Regression (slow test, 40 calibration rows, prompt length + a digits column): the smooth model
    predicted a 6-digit row with a long prompt below the level, though only 7-8 digit rows were measured
    there. The gate also needs a row's features inside the region the gated calibration rows span."""
    df = _verified(400, 12, seed=0)
    digits = pl.when(pl.col("population") == "hopeless").then(7 + pl.col("query_id").hash(9) % 2) \
        .otherwise(1 + pl.col("query_id").hash(9) % 6)
    df = df.with_columns(feature_digits=digits.cast(pl.Float64),
                         prompt_tokens=(10 + pl.col("query_id").hash(5) % 20).cast(pl.Int64)).drop("population")
    gate = fit_gate(build_table(df), ["log_prompt_tokens", "feature_digits"], 8)
    assert gate is not None and gate.low[1] == 7 and gate.high[1] == np.inf
    x = np.array([[np.log1p(20.0), d] for d in (6.0, 6.99, 7.0, 9.0)])
    assert gate.skips(x).tolist() == [False, False, True, True]
    # A 6-digit row that failed all its samples does not pull the region over the solved 6-digit rows.
    unlucky = df["query_id"].filter(df["feature_digits"] == 6)[0]
    df2 = df.with_columns(correct=pl.when(pl.col("query_id") == unlucky).then(False).otherwise(pl.col("correct")),
                          verifier_score=pl.when(pl.col("query_id") == unlucky).then(0.1)
                          .otherwise(pl.col("verifier_score")))
    again = fit_gate(build_table(df2), ["log_prompt_tokens", "feature_digits"], 8)
    assert again is not None and again.low[1] == 7
    # Outside the region nothing is gated, however low the model's prediction.
    lowered = replace(gate, below=1.0)
    assert lowered.skips(x).tolist() == [False, False, True, True]
    assert not gate.skips(np.array([[np.nan, 8.0]]))[0]  # an unknown feature: never gated


# ---- budget the allocator leaves over ------------------------------------------------------------------

def test_budget_past_every_peak_goes_to_buckets_with_headroom(calibration):
    """Calibration curves go flat past a few samples (late gains are too small to see on a few dozen rows);
    with budget left, buckets with unsolved rows take the richest rule rather than leave it unspent."""
    kw = dict(rows_remaining=1000, unit="tokens", objective="accuracy")
    top, rep = plan_from_calibration(calibration, budget_remaining=1e9, **kw)
    peak = top.pilot_cost + sum(b["share"] * b["peak"]["cost"] for b in rep["buckets"])
    richest = top.expected_cost_per_row
    assert peak < 0.9 * richest
    budget = 1000 * (peak + richest) / 2  # the peaks alone would spend under 95% of it
    plan, report = plan_from_calibration(calibration, budget_remaining=budget, **kw)
    assert report["budget"]["expected_total"] >= 0.95 * budget
    assert report["budget"]["expected_total"] <= budget * (1 + 1e-9)


def test_budget_past_every_peak_and_the_richest_rule_samples_past_k(calibration):
    """With budget left once every bucket with headroom runs the richest rule (largest cap K), a cap
    beyond K (``max_cap``) lets the rows unsolved at K sample on: unmeasured, so no score is claimed."""
    kw = dict(rows_remaining=1000, unit="tokens", objective="accuracy")
    capped, _ = plan_from_calibration(calibration, budget_remaining=1e9, **kw)
    k = max(b.rule.cap for b in capped.buckets)
    longer, report = plan_from_calibration(calibration, budget_remaining=1e9, max_cap=4 * k, **kw)
    extended = [(a, b) for a, b in zip(capped.buckets, longer.buckets) if b.rule.cap > k]
    assert extended and all(b.rule.cap == 4 * k for _, b in extended)  # the slack pays for all of it here
    for a, b in extended:
        assert b.rule == replace(a.rule, cap=4 * k) and b.expected_score == a.expected_score
        assert b.expected_cost > a.expected_cost
    # Buckets without unsolved rows at K (or that never rose) keep their rule.
    assert all(a.rule == b.rule for a, b in zip(capped.buckets, longer.buckets) if b.rule.cap <= k)
    # A budget just past the richest rule's cost extends the cap only as far as the slack pays.
    budget = 1000 * capped.expected_cost_per_row * 1.5
    some, rep = plan_from_calibration(calibration, budget_remaining=budget, max_cap=4 * k, **kw)
    assert k < max(b.rule.cap for b in some.buckets) < 4 * k
    assert 0.9 * budget <= rep["budget"]["expected_total"] <= budget * (1 + 1e-9)  # whole samples: not all of it
