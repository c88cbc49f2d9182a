"""The label-free sequential policy (pipelines/plan/sequential.py): pure numpy, no Ray or vLLM."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tierwise.pipelines.plan.sequential import (
    GRID,
    RowModel,
    SequentialConfig,
    _take,
    draws_at_price,
    fit_prior,
    row_priority,
    rows_from_table,
    sequential_draws,
    solve_price,
)
from tierwise.pipelines.replay.run import replay
from tierwise.pipelines.replay.synthetic import synthetic_samples
from tierwise.pipelines.replay.table import build_table


@pytest.fixture(scope="module")
def checker_table():
    df = synthetic_samples(1500, 24, seed=5)
    return build_table(df.with_columns(verifier_score=pl.col("correct").cast(pl.Float32)))


@pytest.fixture(scope="module")
def vote_table():
    return build_table(synthetic_samples(1200, 24, seed=6))


@pytest.mark.parametrize("per_query", [0.5, 1.0, 1.3, 2.0, 5.0, 30.0])
@pytest.mark.parametrize("name", ["checker_table", "vote_table"])
def test_never_overspends_and_every_row_gets_a_first_sample(request, name, per_query):
    table = request.getfixturevalue(name)
    objective = "coverage" if name == "checker_table" else "accuracy"
    rows, cum = rows_from_table(table, "tokens")
    budget = per_query * cum[:, 1].sum()
    order = np.argsort(table.split_hash(0), kind="stable")
    run = sequential_draws(rows, cum, table.n_available, budget, order, SequentialConfig(objective=objective))
    spent = cum[np.arange(len(run.drawn)), run.drawn].sum()
    assert spent <= budget + 1e-6
    if per_query >= 1.0:
        assert (run.drawn >= 1).all()
    if 2.0 <= per_query <= 5.0:  # the budget is used, not left over (rich ones may leave settled rows alone)
        assert spent >= 0.9 * budget


def test_a_row_alone_gets_the_priorities_it_gets_in_the_table(checker_table):
    """Live rows price themselves from their own samples: the same function on a one-row slice."""
    rows, _ = rows_from_table(checker_table, "tokens")
    model = RowModel(True, fit_prior(np.array([0, 3, 1, 0]), np.array([8, 8, 8, 8])), 400.0)
    cfg = SequentialConfig(objective="coverage")
    whole = row_priority(rows, cfg, model)
    for i in (0, 17, 400):
        alone = row_priority(_take(rows, np.array([i])), cfg, model)
        np.testing.assert_allclose(alone[0], whole[i])


def test_prior_finds_the_hopeless_share():
    rng = np.random.default_rng(0)
    p = np.where(rng.random(4000) < 0.3, 0.0, rng.uniform(0.3, 0.9, 4000))
    n = np.full(4000, 12)
    s = rng.binomial(n, p)
    prior = fit_prior(s, n)
    w = np.asarray(prior.weights[0])
    assert 0.25 <= w[GRID < 0.03].sum() <= 0.35
    # After many failures a row is judged hopeless; after a success it is not.
    p_fail = prior.next_verifies(None, np.zeros((1, 1)), np.array([[12.0]]))[0, 0]
    p_ok = prior.next_verifies(None, np.ones((1, 1)), np.array([[3.0]]))[0, 0]
    assert p_fail < 0.05 < 0.4 < p_ok


def test_price_splits_equal_rows_and_spend_falls_with_price():
    pri = np.tile(np.linspace(1.0, 0.1, 10), (50, 1)) * (1 + 1e-6 * np.arange(50))[:, None]
    cum = np.tile(np.arange(11.0), (50, 1))
    cap, avail = np.full(50, 10), np.full(50, 10)
    spends = [cum[np.arange(50), draws_at_price(pri, lam, cap, avail)].mean() for lam in (0.0, 0.3, 0.6, 2.0)]
    assert spends == sorted(spends, reverse=True) and spends[-1] == 1.0 and spends[0] == 10.0
    lam = solve_price(pri, cum, cap, avail, 4.5)
    assert cum[np.arange(50), draws_at_price(pri, lam, cap, avail)].mean() <= 4.5


def test_beats_round_robin_until_verified_on_a_checker_table(checker_table):
    """On the synthetic mix with a checker, the prior's give-up beats sampling every unsolved row alike."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from replay_policies import round_robin

    q = checker_table.shape[0]
    order = np.argsort(checker_table.split_hash(0), kind="stable")
    ver = np.cumsum(checker_table.verifier_score >= 1.0, axis=1)
    ar = np.arange(q)
    for per_query in (2.0, 4.0):
        budget = per_query * q
        rr = round_robin(checker_table, budget, "samples", order, 1, lambda n: (n > 0) & (ver[ar, np.maximum(n - 1, 0)] >= 1))
        rr_score = checker_table.scores("coverage")[ar, rr].mean()
        a = replay(checker_table, budget, "samples", "coverage", "adaptive", calibration_fraction=0.0)
        assert a.spent <= budget and a.score >= rr_score - 0.003, (per_query, a.score, rr_score)


def test_cost_shrink_follows_how_much_a_rows_costs_say_about_its_next():
    from tierwise.pipelines.plan.sequential import fit_cost_shrink

    rng = np.random.default_rng(0)
    iid = rng.lognormal(6.0, 0.5, (400, 4))  # every sample's cost drawn afresh: a row's past says nothing
    per_row = rng.lognormal(6.0, 0.8, (400, 1)) * rng.lognormal(0.0, 0.05, (400, 4))  # rows keep their length
    drawn = np.full(400, 4)
    assert fit_cost_shrink(iid, drawn) > 10.0
    assert fit_cost_shrink(per_row, drawn) < 0.5
    assert fit_cost_shrink(iid, np.ones(400, np.int64)) == 2.0  # one sample a row: the default


def test_prior_uses_hint_bins_only_when_the_hint_predicts_verdicts():
    from tierwise.pipelines.plan.sequential import fit_prior

    rng = np.random.default_rng(1)
    hint = rng.random(800)
    drawn = np.full(800, 3)
    informative = rng.binomial(3, np.where(hint < 0.5, 0.9, 0.1))
    assert len(fit_prior(informative, drawn, hint).hint_edges) >= 1
    noise = rng.binomial(3, np.where(rng.random(800) < 0.5, 0.9, 0.1))  # same mix, hint unrelated
    assert fit_prior(noise, drawn, hint).hint_edges == ()
