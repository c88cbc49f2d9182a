"""Budget allocation across difficulty buckets: one allocator for live runs and replay.

Each bucket holds ``n_rows`` rows and a few options (a tier, a sample cap, ...) with an expected cost and
an expected score per row. We maximize total expected score subject to total expected cost <= budget,
letting a bucket split its rows between two adjacent options (the LP relaxation of the multiple-choice
knapsack, rounded down to whole rows). The solution is the classic convex-hull greedy: only options on
a bucket's upper concave hull can be optimal, and hull segments are bought in decreasing order of
marginal score per unit cost. The ratio of the segment where the budget runs out is the Lagrangian price;
a row given that price would pick ``argmax(score - price * cost)``.

The objective (accuracy, coverage, verified yield) only changes what ``score`` means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-12


class InfeasibleBudgetError(ValueError):
    """The budget cannot pay for the cheapest option of every row."""


@dataclass(frozen=True)
class Option:
    """One way to serve a row.

    Attributes:
        name: Label, unique within its bucket (e.g. ``"skip"``, ``"vote@8"``).
        cost: Expected cost per row, in budget units (tokens, samples, dollars), >= 0.
        score: Expected score per row (e.g. probability the answer is correct).
    """

    name: str
    cost: float
    score: float


@dataclass(frozen=True)
class BucketOptions:
    """A bucket of rows and the options available to each of its rows."""

    bucket_id: int | str
    n_rows: int
    options: tuple[Option, ...]


@dataclass
class BucketAllocation:
    """Rows per option chosen for one bucket (at most two adjacent hull options are used)."""

    bucket_id: int | str
    counts: dict[str, int]
    cost: float
    score: float


@dataclass
class Allocation:
    """Allocator output.

    Attributes:
        buckets: Per-bucket row counts per option, in input order.
        budget: Budget given, in budget units.
        cost: Total expected cost of the chosen options (<= budget).
        score: Total expected score of the chosen options.
        price: Marginal score per unit cost at which the budget binds (0 when it does not bind).
        lp_score: Optimum of the fractional relaxation, an upper bound on any allocation's score.
    """

    buckets: list[BucketAllocation]
    budget: float
    cost: float
    score: float
    price: float
    lp_score: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "budget": self.budget, "cost": self.cost, "score": self.score, "price": self.price,
            "lp_score": self.lp_score,
            "buckets": [{"bucket_id": b.bucket_id, "counts": b.counts, "cost": b.cost, "score": b.score}
                        for b in self.buckets],
        }


def upper_concave_hull(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the upper concave hull (least concave majorant) of points.

    Vertices come in increasing cost; for equal costs only the best score is kept; collinear points
    are dropped. The hull rises to the best score and may fall after it.

    Args:
        cost: [n] x coordinates.
        score: [n] y coordinates.

    Returns:
        int array of vertex indices into the inputs.
    """
    cost = np.asarray(cost, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    order = np.lexsort((-score, cost))
    hull: list[int] = []
    last_x = None
    for i in order:
        if last_x is not None and cost[i] == last_x:
            continue
        last_x = cost[i]
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (score[i] - score[a]) - (score[b] - score[a]) * (cost[i] - cost[a])
            if cross >= -_EPS * max(1.0, abs(cost[i] - cost[a])):
                hull.pop()
            else:
                break
        hull.append(int(i))
    return np.array(hull, dtype=np.int64)


def _rising_hull(options: tuple[Option, ...]) -> list[int]:
    """Hull vertices from the cheapest option up to the best score (strictly rising in both)."""
    c = np.array([o.cost for o in options])
    s = np.array([o.score for o in options])
    hull = upper_concave_hull(c, s)
    peak = int(np.argmax(s[hull]))  # first maximum: the cheapest option reaching the best score
    return [int(i) for i in hull[: peak + 1]]


@dataclass(frozen=True)
class _Segment:
    """One hull segment of a bucket: moving a row from hull vertex ``index`` to the next one."""

    ratio: float  # marginal score per unit cost (inf for a free gain)
    bucket: int
    index: int
    dcost: float  # cost per row of the move
    dscore: float  # score per row of the move


@dataclass
class _Greedy:
    """Where the greedy left each bucket: all rows at hull vertex ``level``, ``moved`` rows one further."""

    level: list[int]
    moved: list[int]
    price: float = 0.0
    split_done: bool = False


def allocate(buckets: list[BucketOptions], budget: float) -> Allocation:
    """Maximize total expected score subject to total expected cost <= budget.

    Args:
        buckets: Buckets with their options; a zero-cost "skip" option lets the budget go to zero.
        budget: Total budget, in the options' cost units.

    Returns:
        Allocation with whole-row counts. Its score is within one row's marginal gain of ``lp_score``.

    Raises:
        InfeasibleBudgetError: The budget is below the cost of every row's cheapest option.
        ValueError: A bucket has no options, negative rows or a negative cost.
    """
    hulls = [_checked_rising_hull(b) for b in buckets]
    left = _budget_above_cheapest(buckets, hulls, budget)
    greedy = _buy_segments(buckets, _sorted_segments(buckets, hulls), left)
    out = [_bucket_allocation(b, hull, greedy.level[bi], greedy.moved[bi])
           for bi, (b, hull) in enumerate(zip(buckets, hulls))]
    total_cost, total_score = 0.0, 0.0
    for ba in out:
        total_cost += ba.cost
        total_score += ba.score
    lp_score = _lp_score(buckets, hulls, budget) if greedy.split_done else total_score
    return Allocation(out, budget, total_cost, total_score, greedy.price, lp_score)


def _checked_rising_hull(b: BucketOptions) -> list[int]:
    """The bucket's rising hull, after checking it has options, rows >= 0 and costs >= 0."""
    if not b.options or b.n_rows < 0 or any(o.cost < 0 for o in b.options):
        raise ValueError(f"bucket {b.bucket_id!r}: needs options with cost >= 0 and n_rows >= 0")
    return _rising_hull(b.options)


def _budget_above_cheapest(buckets: list[BucketOptions], hulls: list[list[int]], budget: float) -> float:
    """Budget left once every row takes its cheapest option; raises when that does not fit."""
    base_cost = 0.0
    for b, hull in zip(buckets, hulls):
        base_cost += b.n_rows * b.options[hull[0]].cost
    left = budget - base_cost
    if left < -_EPS * max(1.0, abs(budget)):
        raise InfeasibleBudgetError(f"budget {budget} < {base_cost}, the cost of the cheapest option of every row")
    return max(left, 0.0)


def _sorted_segments(buckets: list[BucketOptions], hulls: list[list[int]]) -> list[_Segment]:
    """All hull segments, best marginal ratio first (ties: bucket order, then along the hull)."""
    segments = []
    for bi, (b, hull) in enumerate(zip(buckets, hulls)):
        for si in range(len(hull) - 1):
            o0, o1 = b.options[hull[si]], b.options[hull[si + 1]]
            dc, ds = o1.cost - o0.cost, o1.score - o0.score
            segments.append(_Segment(ds / dc if dc > 0 else math.inf, bi, si, dc, ds))
    segments.sort(key=lambda t: (-t.ratio, t.bucket, t.index))
    return segments


def _buy_segments(buckets: list[BucketOptions], segments: list[_Segment], left: float) -> _Greedy:
    """Buy segments in order while the budget lasts; a segment that does not fit moves what rows it can.

    A bucket whose segment did not fit is blocked: its later segments are skipped. The ratio of the
    first segment that does not fit is the LP's marginal price.
    """
    greedy = _Greedy(level=[0] * len(buckets), moved=[0] * len(buckets))
    blocked = [False] * len(buckets)
    for seg in segments:
        bi = seg.bucket
        n = buckets[bi].n_rows
        if blocked[bi] or greedy.level[bi] != seg.index or n == 0:
            continue
        if n * seg.dcost <= left + _EPS * max(1.0, left):
            left = max(left - n * seg.dcost, 0.0)
            greedy.level[bi] += 1
            continue
        m = _rows_that_fit(n, seg.dcost, left)
        if not greedy.split_done:
            greedy.split_done, greedy.price = True, seg.ratio
        greedy.moved[bi], blocked[bi] = m, True
        left = max(left - m * seg.dcost, 0.0)
    return greedy


def _rows_that_fit(n: int, dcost: float, left: float) -> int:
    """Most rows (<= n) whose move at ``dcost`` each fits in ``left``."""
    m = min(n, int(math.floor(left / dcost + _EPS)))
    while m > 0 and m * dcost > left + _EPS * max(1.0, left):
        m -= 1
    return m


def _bucket_allocation(b: BucketOptions, hull: list[int], level: int, moved: int) -> BucketAllocation:
    """Row counts, cost and score of a bucket with its rows at hull vertex ``level``, ``moved`` one further."""
    lo = b.options[hull[level]]
    counts = {lo.name: b.n_rows - moved}
    if moved:
        counts[b.options[hull[level + 1]].name] = moved
    by_name = {o.name: o for o in b.options}
    cost = sum(by_name[k].cost * v for k, v in counts.items())
    score = sum(by_name[k].score * v for k, v in counts.items())
    return BucketAllocation(b.bucket_id, counts, cost, score)


def _lp_score(buckets: list[BucketOptions], hulls: list[list[int]], budget: float) -> float:
    """Fractional optimum via the Lagrangian dual: min over prices of price*B + sum max(score - price*cost)."""
    prices = {0.0}
    for b, hull in zip(buckets, hulls):
        for a, c in zip(hull, hull[1:]):
            dc = b.options[c].cost - b.options[a].cost
            if dc > 0:
                prices.add((b.options[c].score - b.options[a].score) / dc)
    best = math.inf
    for p in prices:
        val = p * budget + sum(b.n_rows * max(o.score - p * o.cost for o in b.options) for b in buckets)
        best = min(best, val)
    return best
