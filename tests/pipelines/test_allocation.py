"""The allocator: convex-hull greedy against exhaustive search, budget safety and limit cases."""

import itertools
import math

import numpy as np
import pytest

from tierwise.pipelines.plan.allocation import (
    Allocation,
    BucketAllocation,
    BucketOptions,
    InfeasibleBudgetError,
    Option,
    allocate,
    upper_concave_hull,
)

EPS = 1e-12  # the allocator's own tolerance


def allocate_exact(buckets: list[BucketOptions], budget: float, max_states: int = 2_000_000) -> Allocation:
    """Exact integral optimum by enumeration of rows per option in every bucket: the greedy's reference.

    Args:
        buckets: Small buckets (a few rows, a few options).
        budget: Total budget.
        max_states: Refuse instances whose enumeration would exceed this many combinations.

    Returns:
        Allocation (``price`` and ``lp_score`` are NaN). Raises InfeasibleBudgetError when nothing fits.
    """
    per_bucket = []
    for b in buckets:
        k = len(b.options)
        splits = [c for c in itertools.product(range(b.n_rows + 1), repeat=k) if sum(c) == b.n_rows]
        per_bucket.append([(sum(n * o.cost for n, o in zip(c, b.options)),
                            sum(n * o.score for n, o in zip(c, b.options)), c) for c in splits])
    if math.prod(len(p) for p in per_bucket) > max_states:
        raise ValueError("instance too large for exhaustive search")
    best = None
    for combo in itertools.product(*per_bucket):
        cost = sum(x[0] for x in combo)
        if cost > budget + EPS * max(1.0, budget):
            continue
        score = sum(x[1] for x in combo)
        if best is None or score > best[1] + EPS or (abs(score - best[1]) <= EPS and cost < best[0]):
            best = (cost, score, combo)
    if best is None:
        raise InfeasibleBudgetError(f"budget {budget} cannot pay the cheapest options")
    out = [BucketAllocation(b.bucket_id, {o.name: n for o, n in zip(b.options, x[2]) if n}, x[0], x[1])
           for b, x in zip(buckets, best[2])]
    return Allocation(out, budget, best[0], best[1], math.nan, math.nan)


def _random_instance(rng, n_buckets, max_rows, n_options):
    buckets = []
    for b in range(n_buckets):
        opts = [Option("skip", 0.0, float(rng.uniform(0, 0.3)))]
        for j in range(n_options - 1):
            opts.append(Option(f"o{j}", float(rng.integers(1, 6)), float(rng.uniform(0, 1))))
        buckets.append(BucketOptions(b, int(rng.integers(0, max_rows + 1)), tuple(opts)))
    return buckets


def _slack(buckets):
    """One row's largest possible gain: the most that rounding the LP split down to whole rows can lose."""
    return max((max(o.score for o in b.options) - min(o.score for o in b.options) for b in buckets), default=0.0)


def _per_bucket_optimum(buckets, budget):
    """Exhaustive search where every row of a bucket takes the same option."""
    best = -math.inf
    for combo in itertools.product(*(b.options for b in buckets)):
        cost = sum(o.cost * b.n_rows for o, b in zip(combo, buckets))
        if cost <= budget + 1e-9:
            best = max(best, sum(o.score * b.n_rows for o, b in zip(combo, buckets)))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_greedy_matches_exhaustive_search_within_split_slack(seed):
    rng = np.random.default_rng(seed)
    buckets = _random_instance(rng, int(rng.integers(1, 4)), 3, int(rng.integers(2, 4)))
    budget = float(rng.uniform(0, 1.2) * sum(b.n_rows * 5 for b in buckets))
    got = allocate(buckets, budget)
    exact = allocate_exact(buckets, budget)
    assert got.cost <= budget + 1e-9
    assert got.score <= exact.score + 1e-9  # exact is optimal over whole rows
    assert got.lp_score >= exact.score - 1e-9  # the LP relaxation bounds every integral plan
    assert got.score >= got.lp_score - _slack(buckets) - 1e-9
    assert got.score >= _per_bucket_optimum(buckets, budget) - _slack(buckets) - 1e-9
    for b, ba in zip(buckets, got.buckets):
        assert sum(ba.counts.values()) == b.n_rows
        assert len([v for v in ba.counts.values() if v]) <= 2


@pytest.mark.parametrize("seed", range(20))
def test_lp_optimum_reached_when_rows_divide_evenly(seed):
    # With one unit-cost step per bucket the LP optimum is integral, so greedy must be exact.
    rng = np.random.default_rng(100 + seed)
    buckets = [BucketOptions(b, 3, (Option("skip", 0, 0), Option("go", 1, float(rng.uniform(0.1, 1)))))
               for b in range(3)]
    budget = float(rng.integers(0, 10))
    got = allocate(buckets, budget)
    assert got.score == pytest.approx(allocate_exact(buckets, budget).score)
    assert got.score == pytest.approx(got.lp_score)


def test_never_exceeds_budget_on_larger_instances():
    rng = np.random.default_rng(7)
    for _ in range(50):
        buckets = _random_instance(rng, 8, 1000, 6)
        budget = float(rng.uniform(0, 1) * sum(b.n_rows * 5 for b in buckets))
        got = allocate(buckets, budget)
        assert got.cost <= budget * (1 + 1e-12)
        assert got.score <= got.lp_score + 1e-6


def test_zero_budget_skips_everything():
    buckets = _random_instance(np.random.default_rng(1), 3, 5, 4)
    got = allocate(buckets, 0.0)
    assert got.cost == 0 and all(ba.counts == {"skip": b.n_rows} for b, ba in zip(buckets, got.buckets))


def test_budget_beyond_need_buys_the_cheapest_best_option():
    opts = (Option("skip", 0, 0.1), Option("a", 2, 0.8), Option("b", 5, 0.8), Option("c", 9, 0.7))
    got = allocate([BucketOptions("x", 10, opts)], 1e9)
    assert got.buckets[0].counts == {"a": 10}
    assert got.cost == 20 and got.price == 0.0


def test_one_bucket_splits_between_adjacent_hull_options():
    opts = (Option("skip", 0, 0.0), Option("v2", 2, 0.6), Option("v4", 4, 0.8))
    got = allocate([BucketOptions(0, 10, opts)], 30.0)
    assert got.buckets[0].counts == {"v2": 5, "v4": 5}
    assert got.cost == 30 and got.price == pytest.approx(0.1)


def test_empty_input_and_empty_buckets():
    got = allocate([], 10.0)
    assert got.buckets == [] and got.cost == 0 and got.score == 0
    got = allocate([BucketOptions(0, 0, (Option("skip", 0, 0), Option("go", 1, 1)))], 10.0)
    assert got.cost == 0


def test_infeasible_without_a_free_option():
    with pytest.raises(InfeasibleBudgetError):
        allocate([BucketOptions(0, 3, (Option("cheap", 1, 0.5),))], 2.0)
    with pytest.raises(ValueError):
        allocate([BucketOptions(0, 3, ())], 2.0)


def test_price_is_consistent_with_per_row_choice():
    rng = np.random.default_rng(11)
    buckets = _random_instance(rng, 5, 50, 5)
    got = allocate(buckets, 200.0)
    for b, ba in zip(buckets, got.buckets):
        value = {o.name: o.score - got.price * o.cost for o in b.options}
        best = max(value.values())
        for name, rows in ba.counts.items():
            if rows:  # every used option is optimal at the price (the split bucket is indifferent)
                assert value[name] >= best - 1e-9


def test_upper_concave_hull_keeps_downturn_and_drops_interior_points():
    x = np.array([0, 1, 2, 3, 4, 2, 1])
    y = np.array([0, 0.5, 0.8, 0.9, 0.7, 0.1, 0.3])
    assert upper_concave_hull(x, y).tolist() == [0, 1, 2, 3, 4]
    assert upper_concave_hull(np.array([0, 1, 2]), np.array([0, 1, 2])).tolist() == [0, 2]  # collinear
