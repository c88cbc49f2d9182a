"""Early-stopping rules: Adaptive-Consistency's Beta criterion and ESC windows."""

from collections import Counter
from math import lgamma

import numpy as np
import pytest

from tierwise.pipelines.plan.stopping import esc_stop, first_stop, mode_probability, prefix_votes


def _beta_tail(a: int, b: int) -> float:
    """P(X > 1/2), X ~ Beta(a, b), by numeric integration (independent of the closed form)."""
    x = np.linspace(0.5, 1.0, 200_001)[1:-1]
    logpdf = (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) + lgamma(a + b) - lgamma(a) - lgamma(b)
    return float(np.trapezoid(np.exp(logpdf), x))


def test_mode_probability_known_values():
    got = mode_probability(np.array([1, 2, 4, 3, 0]), np.array([0, 0, 0, 3, 0]))
    np.testing.assert_allclose(got, [0.75, 0.875, 0.96875, 0.5, 0.0])


@pytest.mark.parametrize("v1,v2", [(5, 2), (9, 4), (12, 11), (20, 3)])
def test_mode_probability_matches_beta_integral(v1, v2):
    assert mode_probability(np.array(v1), np.array(v2)) == pytest.approx(_beta_tail(v1 + 1, v2 + 1), abs=1e-5)


def test_mode_probability_large_counts_use_normal_approximation_continuously():
    exact = mode_probability(np.array([250]), np.array([200]))[0]  # n = 451: table
    approx = mode_probability(np.array([300]), np.array([250]))[0]  # n = 551: normal approximation
    assert 0.99 < exact < 1 and 0.98 < approx < 1


def test_mode_probability_small_counts():
    p = mode_probability(np.array([4, 3, 5, 7, 0]), np.array([0, 0, 1, 1, 0]))
    assert p[0] >= 0.95 > p[1]  # 4 of 4 agree: stop at 0.95; 3 of 3 do not
    assert p[2] == pytest.approx(0.9375) and p[3] >= 0.98 and p[4] == 0


def _reference_votes(codes, valid, weights):
    rows, width = codes.shape
    lead, top, second = (np.zeros((rows, width), int) for _ in range(3))
    for r in range(rows):
        for k in range(width):
            seen = [(i, codes[r, i]) for i in range(k + 1) if valid[r, i]]
            counts = Counter(c for _, c in seen)
            w = Counter()
            for i, c in seen:
                w[c] += 1.0 if weights is None else weights[r, i]
            ranked = sorted(counts.values(), reverse=True) + [0, 0]
            top[r, k], second[r, k] = ranked[0], ranked[1]
            if not seen:
                lead[r, k] = -1
                continue
            best = max(w.values())
            lead[r, k] = next(i for i, c in seen if w[c] == best)  # ties: the answer seen first
    return lead, top, second


@pytest.mark.parametrize("weighted", [False, True])
def test_prefix_votes_matches_reference(weighted):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, (40, 7))
    valid = rng.random((40, 7)) > 0.15
    weights = rng.random((40, 7)) if weighted else None
    pv = prefix_votes(codes, valid, weights)
    lead, top, second = _reference_votes(codes, valid, weights)
    np.testing.assert_array_equal(pv.top, top)
    np.testing.assert_array_equal(pv.second, second)
    np.testing.assert_array_equal(pv.leader, lead)


def test_first_stop_respects_minimum_and_availability():
    signal = np.array([[0.9, 0.99, 0.99], [0.1, 0.2, 0.3], [0.99, 0.5, 0.5]])
    got = first_stop(signal, 0.95, min_samples=1, n_available=np.array([3, 3, 3]))
    np.testing.assert_array_equal(got, [2, 3, 1])
    got = first_stop(signal, 0.95, min_samples=2, n_available=np.array([3, 2, 3]))
    np.testing.assert_array_equal(got, [2, 2, 3])
    assert (first_stop(signal, np.inf, 1, np.array([3, 3, 1])) == [3, 3, 1]).all()


def test_esc_stops_after_first_unanimous_window():
    codes = np.array([[1, 2, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5], [1, 2, 1, 2, 1, 2]])
    valid = np.ones_like(codes, dtype=bool)
    np.testing.assert_array_equal(esc_stop(codes, valid, 2, np.array([6, 6, 6])), [4, 2, 6])
    valid[1, 1] = False  # an unparseable answer breaks unanimity
    np.testing.assert_array_equal(esc_stop(codes, valid, 2, np.array([6, 6, 6])), [4, 4, 6])
    np.testing.assert_array_equal(esc_stop(codes, valid, 3, np.array([6, 6, 5])), [6, 6, 5])
    with pytest.raises(ValueError):
        esc_stop(codes, valid, 0, np.array([6, 6, 6]))
