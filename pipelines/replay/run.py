"""Replay recorded samples through a sampling policy: what would budget B have bought?

A samples table holds many recorded samples per query. A policy "draws" a query's samples in
``sample_idx`` order and pays for each (``output_tokens`` and the ``judge_tokens`` an LLM judge spent
on it, plus ``prompt_tokens`` once per query that draws anything, for budget unit ``tokens``; 1 per
sample for unit ``samples``). The budget covers the
whole table, calibration queries included, and no policy ever spends more than it.

Policies never see ``correct`` except on the calibration split (a seeded hash of ``query_id``), which
they may use exactly as a live calibration run uses gold. Scores are reported on the other queries,
for every policy alike. Everything is columnar: arrays are [queries, samples] and there is no Python
loop over rows (only over buckets, thresholds and pacing rounds), so a million queries replay in
seconds. The adaptive policy itself lives in ``tierwise.pipelines.plan.sequential`` (label-free: it never reads
``correct``).

Objectives:
    accuracy: the selected answer is correct (majority vote over drawn samples; verifier-weighted
        vote when ``verifier_score`` exists; ties go to the answer seen first).
    coverage: some drawn sample is correct (a checker would find it). The policy cannot see
        ``correct`` to stop, so it stops when a drawn sample's verifier score clears a threshold when
        ``verifier_score`` exists, else when the samples agree (the Adaptive-Consistency signal).
    verified_yield: the number of correct drawn samples, capped at ``yield_cap`` per query and divided
        by it (score in [0, 1]): keep up to c verified traces per prompt (synthetic reasoning traces).
        The policy stops once c drawn samples pass the verifier (``verifier_score >= verifier_pass``),
        so it needs ``verifier_score``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from tierwise.pipelines.plan.objectives import OBJECTIVES
from tierwise.pipelines.plan.rules import AdaptiveConfig
from tierwise.pipelines.replay.table import BUDGET_UNITS, DEFAULT_YIELD_CAP, ReplayTable, build_table, load_samples

log = logging.getLogger(__name__)

POLICIES = ("adaptive", "uniform")


@dataclass
class ReplayResult:
    """What a policy bought at a budget. ``to_dict`` gives the JSON fields.

    Attributes:
        score: Mean score over scored (non-calibration) queries, in [0, 1].
        spent: Total cost over all queries, in ``budget_unit``; never above ``budget``.
        mean_samples_per_query: Mean samples drawn per query, over all queries.
        details: Policy specifics (uniform: n; adaptive: pilot, calibration, price, per-bucket table).
        decisions: Per query: query_id, n_drawn, selected (index of the sample whose answer is
            selected, -1 for none), calibration (bool).
        calibration: Per-bucket curves and choices (adaptive only), for ``calibration.plot_curves``.
    """

    policy: str
    objective: str
    budget: float
    budget_unit: str
    spent: float
    queries: int
    queries_scored: int
    score: float
    mean_samples_per_query: float
    details: dict = field(default_factory=dict)
    decisions: pl.DataFrame | None = field(default=None, repr=False)
    calibration: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        keys = ("policy", "objective", "budget", "budget_unit", "spent", "queries", "queries_scored", "score",
                "mean_samples_per_query")
        return {**{k: getattr(self, k) for k in keys}, **self.details}


def uniform_draws(table: ReplayTable, budget: float, unit: str, order: np.ndarray) -> tuple[np.ndarray, int]:
    """Samples per query for the uniform policy: the largest common n the budget pays for everywhere,
    then n + 1 for queries in ``order`` while the leftover lasts (so both policies can use the budget).

    Returns:
        ([Q] samples drawn, n).
    """
    cost = table.cumcost(unit)
    totals = cost.sum(axis=0)
    n = int(np.searchsorted(totals, budget * (1 + 1e-12), side="right") - 1)
    drawn = np.full(len(cost), max(n, 0), dtype=np.int64)
    if 0 <= n < cost.shape[1] - 1:
        step = (cost[:, n + 1] - cost[:, n])[order]
        fits = np.cumsum(step) <= budget - totals[n]
        drawn[order[: int(np.argmin(fits)) if not fits.all() else len(order)]] += 1
    return np.minimum(drawn, table.n_available), n


def _finish(table: ReplayTable, policy: str, objective: str, budget: float, unit: str, drawn: np.ndarray,
            calib: np.ndarray, details: dict, calibration: list | None = None,
            yield_cap: int = DEFAULT_YIELD_CAP) -> ReplayResult:
    cost = table.cumcost(unit)
    rows = np.arange(len(drawn))
    spent = float(cost[rows, drawn].sum())
    if spent > budget * (1 + 1e-9) + 1e-6:
        raise AssertionError(f"policy {policy} overspent: {spent} > {budget}")
    scored = ~calib
    hit = table.scores(objective, yield_cap)[rows, drawn]
    lead = table.votes().leader
    selected = np.where(drawn > 0, lead[rows, np.maximum(drawn - 1, 0)], -1)
    if objective == "verified_yield":
        details = {"yield_cap": yield_cap, **details}
    decisions = pl.DataFrame({"query_id": table.query_ids, "n_drawn": drawn, "selected": selected,
                              "calibration": calib})
    return ReplayResult(
        policy=policy, objective=objective, budget=float(budget), budget_unit=unit, spent=spent,
        queries=len(drawn), queries_scored=int(scored.sum()),
        score=float(hit[scored].mean()) if scored.any() else float("nan"),
        mean_samples_per_query=float(drawn.mean()) if len(drawn) else 0.0,
        details=details, decisions=decisions, calibration=calibration or [])


def replay(samples: pl.DataFrame | ReplayTable | str, budget: float, budget_unit: str = "samples",
           objective: str = "accuracy", policy: str = "adaptive", calibration_fraction: float = 0.2, seed: int = 0,
           config: AdaptiveConfig | None = None, progress: Callable[[str], None] | None = None,
           yield_cap: int | None = None, verifier_pass: float = 1.0) -> ReplayResult:
    """Replay a policy over recorded samples at a total budget.

    Args:
        samples: A validated frame, a prepared ``ReplayTable`` (reuse it across budgets), or a path.
        budget: Total budget for the whole table, in ``budget_unit`` (calibration spend included).
        budget_unit: ``samples`` or ``tokens``.
        objective: ``accuracy``, ``coverage`` or ``verified_yield`` (see module docstring).
        policy: ``uniform`` or ``adaptive``.
        calibration_fraction: Share of queries (by seeded hash) whose gold calibration may use; they
            are excluded from the score for every policy.
        seed: Seeds the calibration split and the processing order.
        config: ``AdaptiveConfig`` for the adaptive policy (defaults when None).
        progress: Called with short status lines.
        yield_cap: verified_yield's c (verified samples worth keeping per query); None: ``config``'s
            (default 4). Ignored by the other objectives.
        verifier_pass: The verifier score at which a sample counts as verified (default 1.0, a full pass
            as a checker gives it; a soft verifier's own decision level otherwise).

    Returns:
        ReplayResult.

    Raises:
        ValueError: Unknown unit, objective or policy, a negative budget, ``yield_cap`` < 1 or unlike
            ``config.yield_cap``, or verified_yield with the adaptive policy on a table without
            verifier scores.
        SamplesSchemaError: Invalid samples.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if objective not in OBJECTIVES or budget_unit not in BUDGET_UNITS or not budget >= 0:
        raise ValueError(f"need objective in {OBJECTIVES}, budget_unit in {BUDGET_UNITS}, budget >= 0")
    cfg = config or AdaptiveConfig()
    if yield_cap is not None and config is not None and yield_cap != config.yield_cap:
        raise ValueError(f"yield_cap {yield_cap} differs from config.yield_cap {config.yield_cap}; give one")
    if yield_cap is not None and yield_cap != cfg.yield_cap:
        cfg = replace(cfg, yield_cap=yield_cap)  # raises for yield_cap < 1
    say = progress or log.info
    table = prepare(samples, say)
    h = table.split_hash(seed)
    calib = h < calibration_fraction
    order = np.argsort(h, kind="stable")
    if policy == "uniform":
        drawn, n = uniform_draws(table, budget, budget_unit, order)
        return _finish(table, policy, objective, budget, budget_unit, drawn, calib, {"uniform_n": n},
                       yield_cap=cfg.yield_cap)
    from tierwise.pipelines.plan.sequential import SequentialConfig, rows_from_table, sequential_draws

    if objective == "verified_yield" and table.verifier_score is None:
        raise ValueError("verified_yield needs verifier scores (a verifier_score column) for the adaptive policy")
    rows, cum = rows_from_table(table, budget_unit)
    seq = SequentialConfig(objective=objective, yield_cap=cfg.yield_cap, verifier_pass=verifier_pass)
    run = sequential_draws(rows, cum, table.n_available, budget, order, seq)
    return _finish(table, policy, objective, budget, budget_unit, run.drawn, calib, run.details(), [],
                   cfg.yield_cap)


def prepare(samples: pl.DataFrame | ReplayTable | str | os.PathLike,
            progress: Callable[[str], None] | None = None) -> ReplayTable:
    """Load (if a path) and lay out samples once; pass the result to ``replay`` for many budgets."""
    if isinstance(samples, ReplayTable):
        return samples
    say = progress or log.info
    if isinstance(samples, str | os.PathLike):
        say(f"reading {samples}")
        samples = load_samples(samples)
    say(f"laying out {len(samples):,} samples")
    return build_table(samples)


def replay_curve(samples: pl.DataFrame | ReplayTable | str, budgets: Sequence[float], budget_unit: str = "samples",
                 objective: str = "accuracy", policies: Sequence[str] = POLICIES, calibration_fraction: float = 0.2,
                 seed: int = 0, progress: Callable[[str], None] | None = None,
                 yield_cap: int | None = None, verifier_pass: float = 1.0) -> list[ReplayResult]:
    """Replay every policy at every budget (the table is laid out once). Results by budget, then policy;
    ``yield_cap`` as ``replay``."""
    table = prepare(samples, progress)
    out = []
    for b in budgets:
        for p in policies:
            out.append(replay(table, b, budget_unit, objective, p, calibration_fraction, seed, progress=progress,
                              yield_cap=yield_cap, verifier_pass=verifier_pass))
            if progress:
                progress(f"budget {b:g} {p}: score {out[-1].score:.4f} spent {out[-1].spent:g}")
    return out
