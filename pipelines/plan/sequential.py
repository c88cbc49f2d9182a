"""The label-free sequential policy: after every sample a row asks whether one more pays.

Each row samples one at a time. After its k-th sample it computes, from its own samples only, the
*priority* of drawing another: the expected gain in its objective per unit of expected cost. A single
price ``lam`` per unit of cost, set for the whole job by a pacer from the budget left, decides: the row
goes on while its priority is at least the price (and it is under the cap), else it stops. Budget
therefore flows to undecided rows and away from settled and hopeless ones, and the price rises or falls
with the budget, so no rule is tuned to one data set and nothing needs labels.

Gain, by objective (all label-free):
    accuracy (a vote): the Adaptive-Consistency posterior (arXiv 2305.11860) that the leading answer is
        not yet the mode, ``1 - P(leader is the mode)``, discounted by the leader's share of the votes
        (rows whose samples keep disagreeing are likely hopeless, and one vote moves them little).
        With verifier scores the votes are weighted as live selection weights them.
    coverage with a checker: the posterior probability that the next sample verifies, given that none
        has so far: a Beta prior on the row's solve rate (fitted from the checker's verdicts of the rows
        seen first, by ``difficulty_hint`` when the table has it) updated by the row's failures. A row
        stops at its first verified sample.
    verified_yield: the same posterior, per verified sample still wanted (``yield_cap``).
    coverage without a checker: the Good-Turing estimate of the chance that the next sample gives an
        answer not seen yet (singletons over samples), the only way more samples can add coverage.

Pacing: the first rows (the *slice*) sample until settled or a depth cap; their trajectories say how
much any price would spend per row, so each later part of rows gets the price at which the expected
spend fits the budget left over the rows left, re-solved before every part as real costs come in.
Every row gets its first sample before any row gets extra ones beyond what the budget leaves for them.

``sequential_draws`` drives this over a recorded table (replay); ``tierwise.pipelines.tiers.sequential_tier`` drives
the same ``row_priority`` live, row by row. Arrays are [rows, samples] in generation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from tierwise.pipelines.plan import answer_urn as urn
from tierwise.pipelines.plan.objectives import OBJECTIVES
from tierwise.pipelines.plan.stopping import mode_probability, prefix_votes
from tierwise.pipelines.tiers.answers import verifier_weights


@dataclass(frozen=True)
class SequentialConfig:
    """Knobs of the sequential policy (defaults hold across data sets; none is fitted to one).

    Attributes:
        objective: ``accuracy``, ``coverage`` or ``verified_yield``.
        verifier_pass: A sample whose verifier score reaches this counts as verified (default: a full
            pass, as a checker gives it; soft scores below it only weight votes).
        yield_cap: verified_yield: verified samples worth keeping per row.
        max_samples: Most samples any row draws.
        slice_fraction, slice_min_rows, slice_max_rows: How many rows, in processing order, form the
            slice whose trajectories the pacer models spend from.
        slice_depth: The slice samples up to this many times the budget per row (in samples).
        slice_share: Most of the budget above every row's first sample that the slice may take.
        part_rows: Rows per part (the price is re-solved before each part).
    """

    objective: str = "accuracy"
    verifier_pass: float = 1.0
    yield_cap: int = 4
    max_samples: int = 64
    slice_fraction: float = 0.03
    slice_min_rows: int = 16
    slice_max_rows: int = 2000
    slice_depth: float = 1.0
    slice_share: float = 0.25
    part_rows: int = 256

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.yield_cap < 1 or self.max_samples < 1 or self.part_rows < 1:
            raise ValueError("yield_cap, max_samples and part_rows must be >= 1")


GRID = np.linspace(0.0, 1.0, 51)  # solve rates the prior puts mass on (0: hopeless, 1: always right)


@dataclass(frozen=True)
class SolvePrior:
    """A prior on each row's chance that a sample verifies, learned without gold from checker verdicts:
    a histogram over ``GRID`` per ``difficulty_hint`` bin (one bin without a hint), fitted by EM
    (a nonparametric empirical-Bayes prior: mass at 0 says how many rows are hopeless).

    Attributes:
        weights: [bins, len(GRID)] prior mass per bin.
        hint_edges: Bin edges of ``difficulty_hint`` (empty: one bin).
    """

    weights: tuple[tuple[float, ...], ...] = (tuple(np.full(len(GRID), 1.0 / len(GRID))),)
    hint_edges: tuple[float, ...] = ()

    def row_weights(self, hint: np.ndarray | None, rows: int) -> np.ndarray:
        """[rows, len(GRID)] prior mass per row."""
        return self._options()[self._option(hint, rows)]

    def _options(self) -> np.ndarray:
        """[bins + 1, len(GRID)] the prior of each hint bin, then the one of rows without a hint."""
        w = np.asarray(self.weights)
        return np.vstack([w, w.mean(axis=0)[None, :]])

    def _option(self, hint: np.ndarray | None, rows: int) -> np.ndarray:
        """[rows] which of ``_options`` each row's prior is."""
        bins = len(self.weights)
        if hint is None or not self.hint_edges:
            return np.full(rows, 0 if bins == 1 else bins)
        b = np.searchsorted(np.asarray(self.hint_edges), np.nan_to_num(hint, nan=np.inf), side="right")
        return np.where(np.isfinite(hint), np.minimum(b, bins - 1), bins)

    def next_verifies(self, hint: np.ndarray | None, s: np.ndarray, f: np.ndarray) -> np.ndarray:
        """P(the next sample verifies) after s verified and f failed samples ([rows, k] arrays): the
        posterior mean, tabulated once per (prior, s, f) and looked up."""
        s, f = np.asarray(s, np.int64), np.asarray(f, np.int64)
        logp, log1p = np.log(np.maximum(GRID, 1e-12)), np.log(np.maximum(1 - GRID, 1e-12))
        ks, kf = np.arange(int(s.max(initial=0)) + 1), np.arange(int(f.max(initial=0)) + 1)
        ll = (np.log(np.maximum(self._options(), 1e-300))[:, None, None, :]
              + ks[None, :, None, None] * logp + kf[None, None, :, None] * log1p)
        post = np.exp(ll - ll.max(axis=-1, keepdims=True))
        table = (post * GRID).sum(axis=-1) / post.sum(axis=-1)  # [options, s, f]
        return table[self._option(hint, s.shape[0])[:, None], s, f]

    def to_dict(self) -> dict:
        return {"weights": [list(w) for w in self.weights], "hint_edges": list(self.hint_edges)}

    @classmethod
    def from_dict(cls, d: dict) -> SolvePrior:
        return cls(tuple(tuple(float(x) for x in w) for w in d["weights"]), tuple(d.get("hint_edges", ())))


def _em_histogram(s: np.ndarray, n: np.ndarray, start: np.ndarray, iters: int = 60) -> np.ndarray:
    """NPMLE of a solve-rate histogram on GRID from (verified, drawn) counts per row, by EM."""
    logp, log1p = np.log(np.maximum(GRID, 1e-12)), np.log(np.maximum(1 - GRID, 1e-12))
    lik = np.exp(s[:, None] * logp + (n - s)[:, None] * log1p)
    lik[:, 0] = np.where(s == 0, 1.0, 0.0)
    lik[:, -1] = np.where(s == n, 1.0, 0.0)
    return urn.mixture_weights(lik, start, iters)


def fit_prior(verified: np.ndarray, drawn: np.ndarray, hint: np.ndarray | None = None, bins: int = 8,
              min_bin_rows: int = 24) -> SolvePrior:
    """Learns a ``SolvePrior`` from rows' checker verdicts (no gold read). Rows may have stopped by any
    rule that looks only at their own verdicts so far (the likelihood ignores such stopping), so rows
    finished at any price all count.

    Args:
        verified: [rows] verified samples per row.
        drawn: [rows] samples each row drew.
        hint: [rows] ``difficulty_hint`` or None: bins of it (quantiles) get their own histogram.
        bins, min_bin_rows: Most hint bins, and fewest rows a bin may hold.
    """
    ok = drawn > 0
    s, n = verified[ok].astype(np.float64), drawn[ok].astype(np.float64)
    flat = np.full(len(GRID), 1.0 / len(GRID))
    if not ok.any():
        return SolvePrior()
    overall = _em_histogram(s, n, flat)
    if hint is None or np.isfinite(hint[ok]).sum() < 2 * min_bin_rows:
        return SolvePrior((tuple(overall),))
    h = hint[ok]
    fin = np.isfinite(h)
    most = int(min(bins, fin.sum() // min_bin_rows))
    toll = 0.5 * math.log(max(fin.sum(), 2))  # nats an extra bin must earn held out (a chance gain earns less)
    n_bins = max((k for k in (1, 2, 4, 8, 16) if k <= most),
                 key=lambda k: _heldout_loglik(s[fin], n[fin], h[fin], k) - toll * (k - 1))
    if n_bins == 1:
        return SolvePrior((tuple(overall),))
    edges, weights = _binned_histograms(s[fin], n[fin], h[fin], n_bins, overall)
    return SolvePrior(weights, edges)


def _binned_histograms(s: np.ndarray, n: np.ndarray, h: np.ndarray, n_bins: int,
                       start: np.ndarray) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """Hint quantile bins' edges and each bin's solve-rate histogram (EM from ``start``)."""
    edges = np.unique(np.quantile(h, np.linspace(0, 1, n_bins + 1)[1:-1]))
    b = np.searchsorted(edges, h, side="right")
    weights = tuple(tuple(_em_histogram(s[b == i], n[b == i], start)) for i in range(len(edges) + 1))
    return tuple(float(e) for e in edges), weights


def _heldout_loglik(s: np.ndarray, n: np.ndarray, h: np.ndarray, n_bins: int) -> float:
    """Two-fold held-out log-likelihood of rows' verdicts under ``n_bins`` hint bins: how many bins the
    hint's signal supports (more bins fit noise once each holds few rows)."""
    logp, log1p = np.log(np.maximum(GRID, 1e-12)), np.log(np.maximum(1 - GRID, 1e-12))
    fold = np.arange(len(s)) % 2
    total = 0.0
    for f in (0, 1):
        tr, te = fold != f, fold == f
        overall = _em_histogram(s[tr], n[tr], np.full(len(GRID), 1.0 / len(GRID)))
        if n_bins == 1:
            edges, weights = (), (tuple(overall),)
        else:
            edges, weights = _binned_histograms(s[tr], n[tr], h[tr], n_bins, overall)
        w = np.asarray(weights)[np.searchsorted(np.asarray(edges), h[te], side="right")]
        ll = s[te, None] * logp + (n[te] - s[te])[:, None] * log1p
        total += float(np.log(np.maximum((np.exp(ll) * w).sum(axis=1), 1e-300)).sum())
    return total


def verdict_counts(rows: RowSamples, drawn: np.ndarray, cfg: SequentialConfig) -> np.ndarray:
    """[rows] verified samples among each row's first ``drawn``."""
    k = np.arange(rows.codes.shape[1])[None, :] < drawn[:, None]
    return ((np.nan_to_num(rows.verifier_score, nan=0.0) >= cfg.verifier_pass) & k).sum(axis=1)


DEFAULT_COST_SHRINK = 2.0  # samples' weight of the mean cost against a row's own before any is fitted


@dataclass(frozen=True)
class RowModel:
    """What a row needs, beside its own samples, to price its next sample; learned from the slice.

    Attributes:
        checker: Verifier verdicts settle rows (a sample at ``verifier_pass`` verifies): coverage and
            verified_yield with verifier scores, and accuracy when the slice saw samples verify.
        prior: The solve-rate prior for checker rows (None: flat).
        mean_cost: Mean cost of a sample over the slice: a row's expected next cost shrinks to it.
        answer_prior: Coverage without a checker: the answer urn's prior over ``tierwise.pipelines.plan.answer_urn.URN_THETA``.
        cost_shrink: How many samples' worth of weight ``mean_cost`` has against a row's own costs
            (``fit_cost_shrink``: large when costs vary within rows as much as between them).
    """

    checker: bool = False
    prior: SolvePrior | None = None
    mean_cost: float = 1.0
    answer_prior: tuple[float, ...] | None = None
    cost_shrink: float = DEFAULT_COST_SHRINK

    def to_dict(self) -> dict:
        return {"checker": self.checker, "mean_cost": self.mean_cost, "cost_shrink": self.cost_shrink,
                "prior": None if self.prior is None else self.prior.to_dict(),
                "answer_prior": None if self.answer_prior is None else list(self.answer_prior)}

    @classmethod
    def from_dict(cls, d: dict) -> RowModel:
        ap = d.get("answer_prior")
        return cls(bool(d["checker"]), None if d.get("prior") is None else SolvePrior.from_dict(d["prior"]),
                   float(d["mean_cost"]), None if ap is None else tuple(float(x) for x in ap),
                   float(d.get("cost_shrink", DEFAULT_COST_SHRINK)))


def fit_cost_shrink(cost: np.ndarray, drawn: np.ndarray, default: float = DEFAULT_COST_SHRINK,
                    most: float = 1e6) -> float:
    """The weight, in samples, of the mean cost against a row's own costs so far: the within-row over
    the between-row variance of sample costs (one-way random effects; rows with two or more samples).
    Costs that say nothing about a row's next one get a weight near ``most``; ``default`` without data."""
    n = np.minimum(drawn, cost.shape[1])
    keep = n >= 2
    if keep.sum() < 2:
        return default
    c, n = cost[keep], n[keep]
    k = np.arange(c.shape[1])[None, :] < n[:, None]
    means = np.where(k, c, 0.0).sum(axis=1) / n
    within = float((np.where(k, c - means[:, None], 0.0) ** 2).sum() / (n - 1).sum())
    between = float(means.var()) - within * float(np.mean(1.0 / n))
    if between <= 0:
        return most
    return float(np.clip(within / between, 0.0, most))


@dataclass
class RowSamples:
    """Rows' samples so far as [rows, samples] arrays (a recorded table, or one live row).

    Attributes:
        codes, valid: answer codes (equal answers, equal codes) and parsed flags.
        cost: [rows, samples] cost of each sample in the budget's unit (0 where none).
        verifier_score: [rows, samples] float (NaN unknown) or None.
        hint: [rows] ``difficulty_hint`` or None.
        row_ids: [rows] strings for the tie-break jitter.
    """

    codes: np.ndarray
    valid: np.ndarray
    cost: np.ndarray
    row_ids: list[str]
    verifier_score: np.ndarray | None = None
    hint: np.ndarray | None = None
    _votes: object = field(default=None, repr=False)


def _jitter(row_ids: list[str]) -> np.ndarray:
    """[rows] deterministic factor in [1, 1 + 1e-6): breaks ties between equal priorities by row id,
    identically live and in replay, so the price can split a crowd of equal rows."""
    from tierwise.pipelines.plan.calibration import stable_hash01

    return 1.0 + 1e-6 * stable_hash01(row_ids, seed=0x7E1)


def row_priority(rows: RowSamples, cfg: SequentialConfig, model: RowModel) -> np.ndarray:
    """[rows, samples] priority of drawing sample k + 2 after the first k + 1 (column k): expected gain
    per unit of expected cost; -inf where the row is settled (verified, or its yield met)."""
    width = rows.codes.shape[1]
    k1 = np.arange(1, width + 1, dtype=np.float64)[None, :]
    if model.checker and rows.verifier_score is not None:
        ver = np.nan_to_num(rows.verifier_score, nan=0.0) >= cfg.verifier_pass
        s = np.cumsum(ver, axis=1).astype(np.float64)
        need = cfg.yield_cap if cfg.objective == "verified_yield" else 1
        gain = (model.prior or SolvePrior()).next_verifies(rows.hint, s, k1 - s) / need
        gain = np.where(s >= need, -np.inf, gain)
    elif cfg.objective == "coverage" and model.answer_prior is not None:
        gain = _novelty_gain(rows, np.asarray(model.answer_prior))
    else:
        gain = _vote_gain(rows)
    w = model.cost_shrink
    mean_cost = (np.cumsum(rows.cost, axis=1) + w * model.mean_cost) / (k1 + w)
    return gain / np.maximum(mean_cost, 1e-9) * _jitter(rows.row_ids)[:, None]


def _novelty_gain(rows: RowSamples, answer_prior: np.ndarray) -> np.ndarray:
    """Coverage without a checker: the chance that the next sample covers the row, label-free: the
    posterior chance that it is a new answer (only a new answer can add coverage) and the right one
    (``tierwise.pipelines.plan.answer_urn.next_new`` with ``right``), times the chance that none of the row's answers
    so far is right (``tierwise.pipelines.plan.answer_urn.uncovered``)."""
    width = rows.codes.shape[1]
    new = urn.novelty(rows.codes, rows.valid, np.full(len(rows.row_ids), width))
    return urn.next_new(new, answer_prior, right=True) * urn.uncovered(rows.codes, rows.valid)


def _vote_gain(rows: RowSamples) -> np.ndarray:
    """Adaptive-Consistency's doubt that the leader is the mode, times the leader's share (rows whose
    samples keep disagreeing are likely hopeless, and one vote moves them little)."""
    k1 = np.arange(1, rows.codes.shape[1] + 1, dtype=np.float64)[None, :]
    if rows._votes is None:
        w = None if rows.verifier_score is None else verifier_weights(rows.verifier_score)
        rows._votes = prefix_votes(rows.codes, rows.valid, w)
    v = rows._votes
    top, second = v.top.astype(np.int64), v.second.astype(np.int64)
    gain = (1.0 - mode_probability(top, second)) * (top + 1.0) / (k1 + 2.0)
    return np.where(top > 0, gain, 1.0)  # no parsed answer yet: everything to gain


def draws_at_price(priority: np.ndarray, lam: float, cap: np.ndarray | int, n_available: np.ndarray) -> np.ndarray:
    """[rows] samples drawn when each row goes on while its priority >= ``lam``, up to ``cap``.

    Every row draws at least one sample (when it has one)."""
    rows, width = priority.shape
    limit = np.minimum(np.minimum(cap, n_available), width)
    stop = priority < lam
    stop &= np.arange(width)[None, :] < (limit[:, None] - 1)
    first = stop.argmax(axis=1) + 1
    return np.where(stop.any(axis=1), first, limit).astype(np.int64)


def solve_price(priority: np.ndarray, cumcost: np.ndarray, cap: np.ndarray, n_available: np.ndarray,
                per_row: float) -> float:
    """The lowest price at which the reference rows' mean spend is at most ``per_row``.

    Args:
        priority: [R, S] reference rows' priorities (their whole trajectories up to ``cap``).
        cumcost: [R, S + 1] their cumulative costs.
        cap: [R] how deep each reference trajectory is known.
        per_row: Budget per row.

    Returns:
        The price (``inf``: only first samples fit).
    """
    ar = np.arange(len(priority))

    def spend(lam: float) -> float:
        return float(cumcost[ar, draws_at_price(priority, lam, cap, n_available)].mean())

    if len(priority) == 0 or spend(0.0) <= per_row:
        return 0.0
    if spend(math.inf) > per_row:
        return math.inf
    finite = priority[np.isfinite(priority) & (priority > 0)]
    cands = np.unique(finite)  # spend falls stepwise as the price passes each priority: search them all
    lo, hi = 0, len(cands)  # spend(cands[i]) falls as i grows; find the first i that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if spend(float(cands[mid])) <= per_row:
            hi = mid
        else:
            lo = mid + 1
    return float(cands[lo]) if lo < len(cands) else math.inf


@dataclass
class SequentialRun:
    """What ``sequential_draws`` decided: samples per row, the price per part, the slice."""

    drawn: np.ndarray
    prices: list[float]
    slice_rows: int
    slice_depth: int
    model: RowModel | None
    stop_reason: np.ndarray  # per row: "settled", "price", "cap", "budget"

    def details(self) -> dict:
        return plan_details(self.prices, self.slice_rows, self.slice_depth, self.model) | {
            "stops": {r: int((self.stop_reason == r).sum()) for r in ("settled", "price", "cap", "budget")}}


def plan_details(prices: list[float], slice_rows: int, slice_depth: int, model: RowModel | None) -> dict:
    """What a report says of a sequential run's plan: the slice, the parts and their price range."""
    fin = [p for p in prices if math.isfinite(p)]
    return {"slice_rows": slice_rows, "slice_depth": slice_depth, "checker": bool(model and model.checker),
            "parts": len(prices), "price_min": min(fin) if fin else None, "price_max": max(fin) if fin else None}


def slice_plan(rows: int, pilot_cost: float, mean_cost: float, budget: float, cfg: SequentialConfig,
               max_width: int) -> tuple[int, int]:
    """(slice rows, slice depth) for a job: as many rows as the config asks, as deep as the budget per
    row (times ``slice_depth``) says, within ``slice_share`` of the budget above every row's first sample.
    (0, 1) when that buys no second sample."""
    surplus = budget - pilot_cost
    per_row = budget / max(rows, 1) / max(mean_cost, 1e-9)
    n_s = int(min(rows, cfg.slice_max_rows, max(cfg.slice_min_rows, round(cfg.slice_fraction * rows))))
    depth = int(min(cfg.max_samples, max_width, max(2, math.ceil(cfg.slice_depth * per_row) + 1)))
    afford = cfg.slice_share * surplus / max(mean_cost, 1e-9)  # extra samples the slice may take
    while n_s > 0 and n_s * (depth - 1) > afford:
        if depth > 2:
            depth = max(2, int(afford // n_s) + 1)
        else:
            n_s = int(afford // (depth - 1))
    if n_s >= 8:
        return n_s, depth
    return (min(rows, 8), 2) if surplus >= 8 * mean_cost else (0, 1)


def pacing_rows(rows: int, cfg: SequentialConfig) -> int:
    """Rows per part for pacing: about 32 re-plans in a job, 16 to ``part_rows`` rows a part."""
    return int(min(cfg.part_rows, max(16, math.ceil(rows / 32))))


def learn_model(slice_rows: RowSamples, drawn: np.ndarray, cfg: SequentialConfig) -> RowModel:
    """The ``RowModel`` from the slice's samples (their verdicts and costs; no gold)."""
    k = np.arange(slice_rows.codes.shape[1])[None, :] < drawn[:, None]
    mean_cost = float(slice_rows.cost[k].mean()) if k.any() else 1.0
    shrink = fit_cost_shrink(slice_rows.cost, drawn)
    if slice_rows.verifier_score is None:
        return RowModel(False, None, mean_cost, answer_model(slice_rows, drawn, cfg), shrink)
    ver = verdict_counts(slice_rows, drawn, cfg)
    checker = cfg.objective != "accuracy" or bool(ver.any())
    prior = fit_prior(ver, drawn, slice_rows.hint) if checker else None
    return RowModel(checker, prior, mean_cost, cost_shrink=shrink)


def answer_model(rows: RowSamples, drawn: np.ndarray, cfg: SequentialConfig) -> tuple[float, ...] | None:
    """The answer prior coverage without a checker prices novelty with (None for other objectives)."""
    if cfg.objective != "coverage":
        return None
    return tuple(urn.fit_prior(urn.novelty(rows.codes, rows.valid, drawn), drawn))


def slice_model(has_verifier: bool) -> RowModel:
    """The model the slice itself runs with (before anything is learned): checker verdicts settle rows
    whenever the rows carry verifier scores, and the price is 0, so only settling stops them."""
    return RowModel(has_verifier, None, 1.0)


@dataclass
class Reference:
    """Trajectories the pacer prices from: priorities, cumulative costs, and how deep each is known."""

    priority: np.ndarray
    cumcost: np.ndarray
    known: np.ndarray

    def price(self, per_row: float) -> float:
        return solve_price(self.priority, self.cumcost, self.known, self.known, per_row)

    def spend(self, price: float) -> float:
        """Mean spend per row at ``price``."""
        if len(self.priority) == 0:
            return 0.0
        n = draws_at_price(self.priority, price, self.known, self.known)
        return float(self.cumcost[np.arange(len(n)), n].mean())


def _sample_hints(hint: np.ndarray | None, most: int = 1024) -> np.ndarray | None:
    """A fixed-seed sample of at most ``most`` finished rows' hints: the rows the reference simulates."""
    if hint is None or len(hint) <= most:
        return hint
    return hint[np.sort(np.random.default_rng(0).choice(len(hint), most, replace=False))]


def simulated_reference(model: RowModel, hints: np.ndarray | None, cfg: SequentialConfig, width: int,
                        copies: int = 16, seed: int = 0) -> Reference:
    """Checker rows' trajectories drawn from the learned prior (solve rates per hint, verdicts
    Bernoulli, costs at the mean), as deep as ``width``: the slice's own trajectories stop at its depth,
    but a checker row's future is what the prior says it is."""
    rng = np.random.default_rng(seed)
    h = None if hints is None else np.repeat(hints, copies)
    m = (len(hints) if hints is not None else 64) * copies
    w = (model.prior or SolvePrior()).row_weights(h, m)
    cdf = np.cumsum(w, axis=1)
    p = GRID[np.minimum((cdf < rng.random((m, 1)) * cdf[:, -1:]).sum(axis=1), len(GRID) - 1)]
    ver = rng.random((m, width)) < p[:, None]
    rows = RowSamples(np.zeros((m, width), np.int64), np.ones((m, width), bool), np.full((m, width), model.mean_cost),
                      [f"sim{i}" for i in range(m)], ver.astype(np.float32) * max(cfg.verifier_pass, 1.0), h)
    cum = np.concatenate([np.zeros((m, 1)), np.cumsum(rows.cost, axis=1)], axis=1)
    return Reference(row_priority(rows, cfg, model), cum, np.full(m, width))


def urn_reference(rows: RowSamples, drawn: np.ndarray, cfg: SequentialConfig, model: RowModel, width: int,
                  seed: int = 0, max_rows: int = 4096) -> Reference:
    """Vote rows' trajectories to ``width``: each finished row's own samples, continued by the answer urn
    (``tierwise.pipelines.plan.answer_urn.continue_rows``, its urn drawn from the row's posterior under the prior fitted
    on all of them). Rows stopped at any price so contribute their whole future, and the slice need not
    be deep."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(drawn > 0)
    if len(keep) > max_rows:
        keep = np.sort(rng.choice(keep, max_rows, replace=False))
    r, n = _take(rows, keep), drawn[keep]
    pad = max(width - r.codes.shape[1], 0)

    def widen(a, fill=0):
        return np.pad(a, ((0, 0), (0, pad)), constant_values=fill)[:, :width]

    prior = urn.fit_prior(urn.novelty(r.codes, r.valid, n), n)
    ver = None if r.verifier_score is None else widen(r.verifier_score, np.nan)
    codes, valid, cost, ver = urn.continue_rows(widen(r.codes), widen(r.valid, False), widen(r.cost), n, prior,
                                                rng, ver)
    sim_rows = RowSamples(codes, valid, cost, r.row_ids, ver, r.hint)
    return Reference(row_priority(sim_rows, cfg, model), _cumcost(sim_rows), np.full(len(n), width))


@dataclass(frozen=True)
class PartPlan:
    """What one part's rows run with: sample while ``row_priority >= price`` and under ``cap``.

    Attributes:
        phase: ``slice`` (price 0, to the slice's depth) or ``main`` (priced).
        expected: The pacer's expected spend of the part (the budget's unit).
    """

    phase: str
    price: float
    cap: int
    model: RowModel
    expected: float


class Pacer:
    """The job-level half of the sequential policy, driven part by part by a live job
    (``tierwise.jobs.sequential_driver``) and by replay (``sequential_draws``) in the same order of calls:
    ``plan(key, rows)`` before a part is sent, ``observe(key, samples, drawn, spent)`` once it is done.

    The slice's parts come first and one at a time (each planned from the costs the slice has measured so
    far, the first from ``cost_guess``); the slice ends once it holds ``slice_plan``'s rows, and its samples
    train the ``RowModel`` (checker prior, mean cost) and the reference trajectories. Every later part gets
    the price at which the reference's expected spend per row fits the budget left over the rows left; the
    budget left is the budget less what finished parts spent and what parts in flight are expected to.

    Args:
        rows: Rows the job has left to run.
        budget: The budget they may spend.
        cost_guess: Expected cost of one sample before any is measured.
        has_verifier: Rows carry verifier scores.
    """

    def __init__(self, rows: int, budget: float, cfg: SequentialConfig, cost_guess: float, has_verifier: bool):
        self.cfg, self.budget, self.rows = cfg, float(budget), rows
        self.width = cfg.max_samples  # (replay: rows run out of recorded samples before, as live rows never do)
        self.cost_guess, self.has_verifier = float(cost_guess), has_verifier
        self.rows_sent, self.spent = 0, 0.0
        self.in_flight: dict = {}  # key -> PartPlan
        self.slice: list[tuple[RowSamples, np.ndarray]] = []
        self.finished: list[tuple[RowSamples, np.ndarray]] = []
        self.model: RowModel | None = None
        self.ref: Reference | None = None
        self._ref_rows = 0  # finished rows the reference was last fit on
        self._raw: dict = {}  # key -> a priced part's spend as the reference expects it
        self._spent_main = self._expected_main = 0.0
        self.prices: list[float] = []
        self.slice_rows, self.depth = 0, 1
        self._slice_target()

    # ------------------------------------------------------------------ the slice
    def _first_cost(self) -> float:
        firsts = [r.cost[:, 0][d > 0] for r, d in self.slice]
        firsts = np.concatenate(firsts) if firsts else np.zeros(0)
        return float(firsts.mean()) if firsts.size else self.cost_guess

    def _slice_target(self) -> None:
        c = self._first_cost()
        self.slice_target, self.depth = slice_plan(self.rows, self.rows * c, c, self.budget, self.cfg, self.width)
        if self.slice_target == 0 and not self.slice:  # from a guess alone: a first part measures the costs
            self.slice_target, self.depth = 1, 2

    @property
    def in_slice(self) -> bool:
        """The next part is a slice part (sent alone: the slice's depth follows its measured costs)."""
        return self.model is None and self.slice_target > 0 and self.rows_sent < self.slice_target

    def _end_slice(self) -> None:
        """Learns the row model and the reference trajectories from the slice's samples."""
        if not self.slice:
            self.model, self.ref = RowModel(), None
            return
        rows, drawn = concat_rows([r for r, _ in self.slice]), np.concatenate([d for _, d in self.slice])
        self.model = learn_model(rows, drawn, self.cfg)
        self._ref_rows = 0
        self._reference()  # sets self.ref

    # ------------------------------------------------------------------ per part
    def plan(self, key, n_rows: int) -> PartPlan:
        """The plan of the next part (``key``, ``n_rows`` rows), counted as in flight."""
        if self.in_slice:
            self._slice_target()
            plan = PartPlan("slice", 0.0, self.depth, slice_model(self.has_verifier),
                            n_rows * self.depth * self._first_cost())
        else:
            if self.model is None:
                self._end_slice()
            plan = self._priced(n_rows)
            if plan.phase == "main" and math.isfinite(plan.price):
                self._raw[key] = plan.expected / self._bias()  # the reference's own expectation
        self.prices.append(plan.price)
        self.in_flight[key] = plan
        self.rows_sent += n_rows
        return plan

    def _priced(self, n_rows: int) -> PartPlan:
        if self.ref is None:  # no slice (the budget buys no second samples): first samples only
            return PartPlan("main", math.inf, 1, self.model, n_rows * self._first_cost())
        ref = self._reference()
        left = self.budget - self.spent - sum(p.expected for p in self.in_flight.values())
        rows_left = max(self.rows - self.rows_sent, n_rows)
        bias = self._bias()  # the reference's spend, corrected by what finished parts spent against it
        price = ref.price(max(left, 0.0) / rows_left / bias)
        return PartPlan("main", price, self.width, self.model, n_rows * ref.spend(price) * bias)

    def _bias(self) -> float:
        """Finished priced parts' spend over their expected spend (1 before any; within [1/2, 2])."""
        if self._expected_main <= 0:
            return 1.0
        return float(np.clip(self._spent_main / self._expected_main, 0.5, 2.0))

    def _reference(self) -> Reference:
        """The reference trajectories, refit from the rows finished so far once they grew by a tenth:
        checker rows simulated from the refit solve prior, vote rows continued by the answer urn."""
        n = sum(len(d) for _, d in self.finished)
        if self._ref_rows and n <= 1.1 * self._ref_rows:
            return self.ref
        done = concat_rows([r for r, _ in self.finished])
        drawn = np.concatenate([d for _, d in self.finished])
        if self.model.checker:
            self.model = replace(self.model, prior=fit_prior(verdict_counts(done, drawn, self.cfg), drawn, done.hint))
            self.ref = simulated_reference(self.model, _sample_hints(done.hint), self.cfg, self.width)
        else:
            if self.model.answer_prior is not None:
                self.model = replace(self.model, answer_prior=answer_model(done, drawn, self.cfg))
            self.ref = urn_reference(done, drawn, self.cfg, self.model, self.width)
        self._ref_rows = n
        return self.ref

    def observe(self, key, rows: RowSamples, drawn: np.ndarray, spent: float) -> None:
        """A part is done: its rows' samples (``drawn`` each) and what it spent."""
        plan = self.in_flight.pop(key)
        self.spent += spent
        if plan.phase == "main" and math.isfinite(plan.price):
            self._spent_main += spent
            self._expected_main += self._raw.pop(key)
        self.finished.append((rows, np.asarray(drawn)))
        if plan.phase == "slice":
            self.slice.append((rows, np.asarray(drawn)))
            self._slice_target()  # from the costs measured so far

    def absorb(self, rows: RowSamples, drawn: np.ndarray) -> None:
        """Rows an earlier attempt finished (a resumed job): they train the model as the slice's rows
        do, and no slice is run."""
        self.slice.append((rows, np.asarray(drawn)))
        self.finished.append((rows, np.asarray(drawn)))
        self.slice_target = 0

    def details(self) -> dict:
        return plan_details(self.prices, sum(len(d) for _, d in self.slice), self.depth, self.model)


def concat_rows(parts: list[RowSamples]) -> RowSamples | None:
    """Rows of several parts as one ``RowSamples`` (narrower ones padded: no sample, cost 0)."""
    if not parts:
        return None
    width = max(r.codes.shape[1] for r in parts)

    def pad(a, fill):
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    ver = None if any(r.verifier_score is None for r in parts) else \
        np.concatenate([pad(r.verifier_score, np.nan) for r in parts])
    hint = None if any(r.hint is None for r in parts) else np.concatenate([r.hint for r in parts])
    return RowSamples(np.concatenate([pad(r.codes, -1) for r in parts]),
                      np.concatenate([pad(r.valid, False) for r in parts]),
                      np.concatenate([pad(r.cost, 0.0) for r in parts]),
                      [i for r in parts for i in r.row_ids], ver, hint)


def _cumcost(rows: RowSamples) -> np.ndarray:
    return np.concatenate([np.zeros((len(rows.row_ids), 1)), np.cumsum(rows.cost, axis=1)], axis=1)


def run_part(rows: RowSamples, plan: PartPlan, cfg: SequentialConfig, n_available: np.ndarray) -> np.ndarray:
    """[rows] samples each row of a part draws under ``plan`` (what live rows decide one sample at a time)."""
    return draws_at_price(row_priority(rows, cfg, plan.model), plan.price, plan.cap, n_available)


def sequential_draws(rows: RowSamples, cumcost: np.ndarray, n_available: np.ndarray, budget: float,
                     order: np.ndarray, cfg: SequentialConfig, parts: list[np.ndarray] | None = None,
                     events: list[tuple[str, int]] | None = None, in_flight: int = 1,
                     cost_guess: float | None = None) -> SequentialRun:
    """Replays the sequential policy over recorded rows, parts sent and finished as a job sends them:
    the ``Pacer`` plans each part, ``run_part`` decides its rows, the ledger's refusals trim them.

    Args:
        rows: The recorded samples.
        cumcost: [rows, samples + 1] cumulative cost of the first k samples, in the budget's unit.
        n_available: [rows] samples recorded per row.
        budget: Total budget; never exceeded.
        order: Processing order (a permutation of row indices); cut into parts of ``pacing_rows``
            unless ``parts`` gives them (row indices per part, in sending order).
        events: A live job's sequence of ``("send", part)`` / ``("done", part)`` (part: index into
            ``parts``) to replay exactly; else each part is done once ``in_flight`` later ones are sent
            (slice parts one at a time, as live).
        cost_guess: The pacer's cost of a sample before any is measured (live: the job's guess; default:
            the mean first sample's cost, as measured).

    Returns:
        SequentialRun.
    """
    q = rows.codes.shape[0]
    first = cumcost[:, 1]
    if budget < first.sum():
        return _first_samples_only(first, order, n_available, budget)
    if parts is None:
        step = pacing_rows(q, cfg)
        parts = [order[i:i + step] for i in range(0, q, step)]
    guess = float(first.mean()) if cost_guess is None else cost_guess
    pacer = Pacer(q, budget, cfg, guess, rows.verifier_score is not None)
    replay = _PartReplay.start(rows, cumcost, n_available, budget, cfg, parts, pacer)
    if events is None:
        events = _pool_events(len(parts), pacer, in_flight, replay.send, replay.done)
    for kind, i in events:
        (replay.send if kind == "send" else replay.done)(i)
    return replay.result()


def _first_samples_only(first: np.ndarray, order: np.ndarray, n_available: np.ndarray,
                        budget: float) -> SequentialRun:
    """Not even one sample each fits: first samples in order while they fit, no pricing."""
    q = len(first)
    drawn = np.zeros(q, dtype=np.int64)
    fits = np.cumsum(first[order]) <= budget
    drawn[order[fits]] = np.minimum(1, n_available[order[fits]])
    return SequentialRun(drawn, [math.inf], 0, 1, None, np.full(q, "budget", dtype=object))


@dataclass
class _PartReplay:
    """The replayed job: parts sent (planned, decided, trimmed by the ledger) and done (observed)."""

    rows: RowSamples
    cumcost: np.ndarray
    n_available: np.ndarray
    budget: float
    cfg: SequentialConfig
    parts: list[np.ndarray]
    pacer: Pacer
    drawn: np.ndarray  # [rows] samples drawn
    lam: np.ndarray  # [rows] the price its part ran at
    cap: np.ndarray  # [rows] its part's sample cap
    pri: np.ndarray  # [rows, samples] its priorities under its part's model
    later_first: np.ndarray  # per position in sending order: first samples' cost of the rows after it
    offset: np.ndarray  # per part: its first position in sending order
    spent: float = 0.0

    @classmethod
    def start(cls, rows: RowSamples, cumcost: np.ndarray, n_available: np.ndarray, budget: float,
              cfg: SequentialConfig, parts: list[np.ndarray], pacer: Pacer) -> _PartReplay:
        q, width = rows.codes.shape
        first = cumcost[:, 1]
        later_first = np.concatenate([np.cumsum(first[np.concatenate(parts)][::-1])[::-1][1:], [0.0]])
        return cls(rows, cumcost, n_available, budget, cfg, parts, pacer,
                   drawn=np.zeros(q, dtype=np.int64), lam=np.full(q, math.inf), cap=np.full(q, 1),
                   pri=np.full((q, width), -np.inf), later_first=later_first,
                   offset=np.cumsum([0] + [len(p) for p in parts]))

    def send(self, i: int) -> None:
        """Part ``i`` is sent: planned by the pacer, its rows decided, the ledger's refusals applied."""
        idx = self.parts[i]
        plan = self.pacer.plan(i, len(idx))
        part_rows = _take(self.rows, idx)
        n = run_part(part_rows, plan, self.cfg, self.n_available[idx])
        # The ledger's refusals: first samples of the rows still to come are not spent here.
        n = _fit_budget(n, self.cumcost[idx], self.budget - self.spent - self.later_first[self.offset[i + 1] - 1])
        self.drawn[idx], self.lam[idx], self.cap[idx] = n, plan.price, plan.cap
        self.pri[idx] = row_priority(part_rows, self.cfg, plan.model)
        self.spent += float(self.cumcost[idx, n].sum())

    def done(self, i: int) -> None:
        """Part ``i`` is done: the pacer observes its rows and what they spent."""
        idx = self.parts[i]
        self.pacer.observe(i, _take(self.rows, idx), self.drawn[idx], float(self.cumcost[idx, self.drawn[idx]].sum()))

    def result(self) -> SequentialRun:
        width = self.rows.codes.shape[1]
        limit = np.minimum(np.minimum(self.cap, self.n_available), width)
        reason = stop_reasons(self.pri, self.drawn, self.lam, self.cap, limit)
        pacer = self.pacer
        return SequentialRun(self.drawn, pacer.prices, pacer.details()["slice_rows"], pacer.depth, pacer.model, reason)


def _pool_events(n_parts: int, pacer: Pacer, in_flight: int, send, done) -> list:
    """Runs the parts as a pool sends them (calling ``send`` / ``done``; returns no further events):
    in order, at most ``in_flight`` at a time; a slice part, and the first priced part, wait until every
    part in flight is done (the slice's parts go one at a time and end before any price is set)."""
    flying: list[int] = []
    for i in range(n_parts):
        while flying and (pacer.in_slice or pacer.model is None or len(flying) >= in_flight):
            done(flying.pop(0))
        send(i)
        flying.append(i)
    for i in flying:
        done(i)
    return []


def _take(rows: RowSamples, idx: np.ndarray) -> RowSamples:
    def t(a):
        return None if a is None else a[idx]

    return RowSamples(rows.codes[idx], rows.valid[idx], rows.cost[idx], [rows.row_ids[i] for i in idx],
                      t(rows.verifier_score), t(rows.hint))


def _fit_budget(n: np.ndarray, cumcost: np.ndarray, allowed: float) -> np.ndarray:
    """Trims rows' draws, last rows first, to what ``allowed`` pays (rows keep their first sample while
    the first samples fit): the ledger's refusals, in replay."""
    ar = np.arange(len(n))
    cost = cumcost[ar, n]
    if cost.sum() <= allowed:
        return n
    one = np.minimum(n, 1)
    floor = cumcost[ar, one]
    # Rows keep their draws in order while the total (the rest at one sample) fits.
    keep = np.cumsum(cost) + (floor.sum() - np.cumsum(floor)) <= allowed
    out = np.where(keep, n, one)
    if cumcost[ar, out].sum() > allowed:  # not even first samples fit for all: last ones get none
        fits = np.cumsum(cumcost[ar, out]) <= allowed
        out = np.where(fits, out, 0)
    return out


def stop_reasons(pri: np.ndarray, drawn: np.ndarray, lam: np.ndarray, cap: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Why each row stopped, as live rows say it: ``settled`` (verified / yield met), ``cap`` (the plan's
    cap, or no more recorded samples: ``limit``), ``price`` (its priority fell below the price), or
    ``budget`` (the ledger refused more)."""
    last = pri[np.arange(len(drawn)), np.maximum(drawn - 1, 0)]
    out = np.full(len(drawn), "budget", dtype=object)
    out[drawn >= limit] = "cap"
    out[(drawn < cap) & (last < lam)] = "price"
    out[(drawn > 0) & np.isneginf(last)] = "settled"
    out[drawn == 0] = "budget"
    return out


def rows_from_table(table, unit: str) -> tuple[RowSamples, np.ndarray]:
    """A recorded ``ReplayTable`` as ``RowSamples`` (per-sample costs in ``unit``) and its cumulative costs."""
    cum = table.cumcost(unit)
    return RowSamples(codes=table.codes, valid=table.valid, cost=np.diff(cum, axis=1),
                      row_ids=table.query_ids.to_list(), verifier_score=table.verifier_score,
                      hint=table.difficulty_hint), cum
