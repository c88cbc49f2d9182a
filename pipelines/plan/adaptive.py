"""The adaptive plan: learned from a calibration slice, fitted to the budget left.

``plan_from_calibration`` learns an ``AdaptivePlan`` from a calibration slice (rows run at K samples) with
replay's adaptive machinery (``tierwise.pipelines.plan.rules``: pilot features, difficulty model, buckets,
per-bucket curves over stop rule x cap, samples replayed in several orders), then ``allocate``s the
remaining budget over the remaining rows, assumed to fall in buckets as the (random) slice does.

Live rows run the plan as ``tierwise.pipelines.tiers.adaptive_tiers.AdaptiveTier`` (a row program); ``plan_draws`` drives
the same plan columnar over a recorded table; tests check both agree.

Three savings: ``CalibrationTier`` stops calibration rows at a verified sample (the
curves of every rule the plan then offers stay exact); ``RowGate`` lets rows whose features alone say
"hopeless" skip the pilot; ``_spend_slack`` spends budget the allocator leaves past every bucket's peak.

Two ways a live row differs from a replayed query, both priced into the plan's curves: it samples in
rounds of ``round_size`` after the pilot, so it draws up to the end of the round in which its rule fires
(``round_draws``); and in tokens, each round re-sends the prompt (``round_cumcost``), or each sample does
when samples stop at a failed step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from tierwise.pipelines.plan.allocation import Allocation, BucketOptions, Option, allocate
from tierwise.pipelines.plan.calibration import (
    BucketCalibration,
    CurveFit,
    DifficultyModel,
    assign_buckets,
    fit_difficulty_model,
    plot_curves,
    stable_hash01,
)
from tierwise.pipelines.plan.objectives import OBJECTIVES
from tierwise.pipelines.plan.rules import (
    PILOT_SIGNALS,
    AdaptiveConfig,
    calibrate_buckets,
    feature_names,
    give_up_levels,
    pilot_features,
    pilot_size,
    round_cumcost,
    round_draws,
    rule_grid,
    rule_label,
    rule_specs,
    rule_stops,
    sample_caps,
    stop_signal,
    stop_signal_and_thresholds,
    verifier_driven,
)
from tierwise.pipelines.plan.rungs import MEASURE_SCHEMA, RUNGS, majority_answers, rung_options
from tierwise.pipelines.plan.stopping import first_stop
from tierwise.pipelines.replay.table import BUDGET_UNITS, ReplayTable, build_table

STOP_REASONS = ("agreed", "verified", "yield_reached", "gave_up", "cap", "no_headroom", "no_samples", "gated",
                "confident")
VERIFIED = 1.0  # a verifier's top score: calibration rows stop at a sample that reaches it (CalibrationTier)
_ALLOC_RESOLUTION = 100_000  # rows the allocator splits bucket shares into (finer split probabilities)


def tier_name(cap: int, pilot: int, weighted: bool) -> str:
    """``skip`` when the cap is the pilot (no samples beyond it), else ``best_of_n`` (verifier-weighted
    vote) or ``vote``. Never ``single``: the pilot samples at temperature, it is not a greedy pass."""
    return "skip" if cap <= pilot else ("best_of_n" if weighted else "vote")


@dataclass(frozen=True)
class StopRule:
    """One row's sampling rule after the pilot.

    Attributes:
        threshold: Stop once the signal (P(leader is the mode), the best verifier score for coverage
            with a verifier, or for verified_yield the verified samples over ``yield_cap``) reaches
            this; ``inf`` never stops early.
        give_up: After this many samples, stop if the leader has at most ``give_up // 4`` votes (or, with
            ``give_up_below``, if the best verifier score so far is below it); None: never.
        cap: Most samples in all, the pilot included.
        tier: What the row's ``tier`` column says (see ``tier_name``).
        give_up_below: The give-up level on the best verifier score (with a verifier); None:
            the vote check (``replay_adaptive.give_up_cut``).
        rung: A ladder rung (``think``, ``search``; see ``tierwise.pipelines.plan.rungs``) the row runs after its pilot
            instead of sampling more; ``tier`` names it and ``cap`` is the pilot. None: a stop rule.
    """

    threshold: float
    give_up: int | None
    cap: int
    tier: str
    give_up_below: float | None = None
    rung: str | None = None

    @property
    def label(self) -> str:
        if self.rung is not None:
            return self.rung
        return f"{rule_label(self.threshold, self.give_up, self.give_up_below)},cap={self.cap}"

    def to_dict(self) -> dict:
        return {"threshold": self.threshold if math.isfinite(self.threshold) else None, "give_up": self.give_up,
                "cap": self.cap, "tier": self.tier, "give_up_below": self.give_up_below} | (
                    {"rung": self.rung} if self.rung is not None else {})

    @classmethod
    def from_dict(cls, d: dict) -> StopRule:
        below = d.get("give_up_below")
        return cls(math.inf if d["threshold"] is None else float(d["threshold"]), d["give_up"], int(d["cap"]), d["tier"],
                   None if below is None else float(below), d.get("rung"))


@dataclass(frozen=True)
class BucketPlan:
    """A difficulty bucket's rule. When the allocator splits the bucket between two options, the rows
    whose ``stable_hash01(row_id, plan.seed)`` is below ``alt_share`` take ``alt_rule`` (the richer one):
    deterministic per row, so a resumed run decides alike, and the expected spend matches the LP split.

    Attributes:
        calibration_rows: Calibration rows predicted into the bucket (averaged over sample orders).
        share: Their share of all calibration rows: the expected share of remaining rows.
        expected_cost: Per row beyond the pilot, in plan units, both rules mixed by ``alt_share``.
        expected_score: Per row (the objective after the row's draws), mixed alike.
    """

    bucket: int
    calibration_rows: float
    share: float
    rule: StopRule
    expected_cost: float
    expected_score: float
    alt_rule: StopRule | None = None
    alt_share: float = 0.0

    @property
    def tier(self) -> str:
        """The tier most of the bucket's rows run."""
        return self.alt_rule.tier if self.alt_rule is not None and self.alt_share > 0.5 else self.rule.tier

    def to_dict(self) -> dict:
        return {"bucket": self.bucket, "calibration_rows": self.calibration_rows, "share": self.share,
                "rule": self.rule.to_dict(), "alt_rule": self.alt_rule and self.alt_rule.to_dict(),
                "alt_share": self.alt_share, "expected_cost": self.expected_cost,
                "expected_score": self.expected_score, "tier": self.tier}

    @classmethod
    def from_dict(cls, d: dict) -> BucketPlan:
        return cls(int(d["bucket"]), float(d["calibration_rows"]), float(d["share"]), StopRule.from_dict(d["rule"]),
                   float(d["expected_cost"]), float(d["expected_score"]),
                   StopRule.from_dict(d["alt_rule"]) if d.get("alt_rule") else None, float(d.get("alt_share", 0.0)))


# eq=False: the difficulty model holds numpy arrays; compare plans by ``to_dict()``.
@dataclass(frozen=True, eq=False)
class AdaptivePlan:
    """Everything a replica needs to run the adaptive tier; small, picklable, JSON via ``to_dict``.

    Attributes:
        pilot: Samples of round 0, whose features place the row in a bucket.
        round_size: Samples per later round.
        objective / unit: What the curves score (accuracy, coverage, verified_yield) and count (tokens,
            samples).
        feature_names: Pilot features the model reads, in order (``replay_adaptive.pilot_features``).
        model: Maps pilot features to expected success; difficulty = 1 - success.
        edges: Inner bucket edges on difficulty (``calibration.assign_buckets``).
        buckets: Per bucket, its rule(s) and expectations.
        weighted: Calibration had verifier scores: the leader is verifier-weighted (``best_of_n``).
        pilot_cost: Expected cost of a row's pilot, in ``unit``.
        labels: Where calibration's ``correct`` came from: gold, verifier, majority (see ``label_calibration``).
        seed: Seeds the per-row hash that splits a bucket between its two rules.
        yield_cap / verifier_pass: verified_yield's c, and the score at which a sample verifies (a row
            stops once c samples reach it); the other objectives ignore them.
        gate: Rows whose features alone (no sample) predict no headroom skip the pilot (``RowGate``);
            None: every row gets a pilot.
    """

    pilot: int
    round_size: int
    objective: str
    unit: str
    feature_names: tuple[str, ...]
    model: DifficultyModel
    edges: tuple[float, ...]
    buckets: tuple[BucketPlan, ...]
    weighted: bool
    pilot_cost: float
    labels: str = "gold"
    seed: int = 0
    yield_cap: int = 4
    verifier_pass: float = 0.5
    gate: RowGate | None = None

    @property
    def signal(self) -> str:
        """The stop signal: ``verified_count`` (verified_yield: samples that verified, over
        ``yield_cap``), ``verifier`` (best score so far) or ``mode_probability``."""
        if self.objective == "verified_yield":
            return "verified_count"
        return "verifier" if verifier_driven(self.objective, self.weighted) else "mode_probability"

    @property
    def reads_verifier(self) -> bool:
        """Live rows need their verifier scores whenever calibration had them (``weighted``): for the
        weighted vote and the verifier-driven stop signals, whichever difficulty features the plan reads."""
        return self.weighted

    @property
    def expected_cost_per_row(self) -> float:
        """Per row the gate lets through: pilot plus the bucket-share-weighted extra, in ``unit``."""
        return self.pilot_cost + sum(b.share * b.expected_cost for b in self.buckets)

    def gated(self, table: ReplayTable) -> tuple[np.ndarray, np.ndarray]:
        """([rows] bool: rows the gate skips (no sample at all), [rows] their features-only difficulty),
        from features known before any sample."""
        if self.gate is None:
            return np.zeros(table.shape[0], dtype=bool), np.full(table.shape[0], np.nan)
        success = self.gate.model.predict(
            pilot_features(table, 0, np.zeros(table.shape[0], np.int64), self.gate.model.names)[0])
        return success <= self.gate.below, 1.0 - success

    def classify(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([rows] difficulty, [rows] bucket) from [rows, len(feature_names)] pilot features."""
        difficulty = 1.0 - self.model.predict(features)
        return difficulty, assign_buckets(difficulty, np.asarray(self.edges, dtype=np.float64))

    def takes_alt(self, row_ids: pl.Series | list[str], bucket: np.ndarray) -> np.ndarray:
        """[rows] bool: the row runs its bucket's ``alt_rule``."""
        share = np.array([b.alt_share if b.alt_rule is not None else 0.0 for b in self.buckets])
        return stable_hash01(row_ids, self.seed) < share[np.asarray(bucket)]

    def to_dict(self) -> dict:
        return {"pilot": self.pilot, "round_size": self.round_size, "objective": self.objective, "unit": self.unit,
                "feature_names": list(self.feature_names), "model": self.model.to_dict(), "edges": list(self.edges),
                "buckets": [b.to_dict() for b in self.buckets], "weighted": self.weighted,
                "pilot_cost": self.pilot_cost, "labels": self.labels, "seed": self.seed,
                "yield_cap": self.yield_cap, "verifier_pass": self.verifier_pass,
                "gate": self.gate and self.gate.to_dict(),
                "expected_cost_per_row": self.expected_cost_per_row}

    @classmethod
    def from_dict(cls, d: dict) -> AdaptivePlan:
        model = DifficultyModel.from_dict(d["model"])
        return cls(int(d["pilot"]), int(d["round_size"]), d["objective"], d["unit"], tuple(d["feature_names"]),
                   model, tuple(float(e) for e in d["edges"]), tuple(BucketPlan.from_dict(b) for b in d["buckets"]),
                   bool(d["weighted"]), float(d["pilot_cost"]), d.get("labels", "gold"), int(d.get("seed", 0)),
                   int(d.get("yield_cap", 4)), float(d.get("verifier_pass", 0.5)),
                   RowGate.from_dict(d["gate"]) if d.get("gate") else None)


# eq=False: the model holds numpy arrays.
@dataclass(frozen=True, eq=False)
class RowGate:
    """Rows whose features alone say they have no headroom skip the pilot: they draw nothing, cost
    nothing, and are written with ``tier = skip``, ``stop_reason = gated`` and no answer.

    A features-only model (prompt length, ``feature_*`` columns, ``difficulty_hint``: known before any
    sample) predicts each row's success; a row is gated when the prediction is at most ``below``, the
    level under which every calibration row failed every one of its samples (``fit_gate``), and its
    features lie in the region those rows span (``low``..``high`` per feature, open on the side away
    from every solved row): a smooth model fit on a few dozen rows must not gate combinations of
    features calibration never measured. The pilot of such a row buys nothing the plan would use.

    Attributes:
        model: The features-only model.
        below: Gate rows whose predicted success is at most this.
        low / high: Per feature, the region the gated calibration rows span (-inf / inf: open).
        calibration_rows: Calibration rows under the level (all of them without a correct sample).
        share: Their share of the calibration rows: the expected share of gated rows.
    """

    model: DifficultyModel
    below: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    calibration_rows: int
    share: float

    def skips(self, features: np.ndarray) -> np.ndarray:
        """[rows] bool from [rows, len(model.names)] features (a row with an unknown feature is not gated)."""
        x = np.asarray(features, dtype=np.float64)
        inside = ((x >= np.asarray(self.low)) & (x <= np.asarray(self.high))).all(axis=1)
        return inside & (self.model.predict(x) <= self.below)

    def to_dict(self) -> dict:
        def finite(v: tuple[float, ...]) -> list:
            return [x if math.isfinite(x) else None for x in v]

        return {"model": self.model.to_dict(), "below": self.below, "low": finite(self.low),
                "high": finite(self.high), "calibration_rows": self.calibration_rows, "share": self.share}

    @classmethod
    def from_dict(cls, d: dict) -> RowGate:
        return cls(DifficultyModel.from_dict(d["model"]), float(d["below"]),
                   tuple(-math.inf if x is None else float(x) for x in d["low"]),
                   tuple(math.inf if x is None else float(x) for x in d["high"]),
                   int(d["calibration_rows"]), float(d["share"]))


def fit_gate(table: ReplayTable, names: list[str] | tuple[str, ...], min_rows: int | None) -> RowGate | None:
    """The features-only gate learned on calibration rows (``RowGate``), or None.

    Fits success (share of correct samples, weighted by samples) on the features known before any
    sample, orders calibration rows by predicted success, and sets the gate's level just below the
    lowest prediction of any row with a correct sample; the region the gated rows span (per feature)
    must hold no solved row, else the least hopeless-looking of them leave the gate. Only that measured,
    all-failing region is gated, and only when it holds at least ``min_rows`` calibration rows.

    Args:
        table: Calibration rows (``correct`` filled, see ``label_calibration``).
        names: The plan's difficulty features; the gate reads those that need no sample.
        min_rows: Fewest calibration rows under the level; None: no gate.
    """
    free = [n for n in names if n not in PILOT_SIGNALS]
    q = table.shape[0]
    if min_rows is None or not free or q == 0:
        return None
    feats = pilot_features(table, 0, np.zeros(q, np.int64), free)[0]
    hits, n_av = table.correct.sum(axis=1), table.n_available
    model = fit_difficulty_model(feats, hits / np.maximum(n_av, 1), free, weights=n_av)
    pred = model.predict(feats)
    solved = hits > 0
    if solved.all():
        return None
    lowest_solved = pred[solved].min() if solved.any() else np.inf
    candidates = np.flatnonzero(pred < lowest_solved)
    candidates = candidates[np.argsort(pred[candidates], kind="stable")]
    # The region the gated rows span must hold no solved row: where it does, the model's ordering alone
    # would decide, so the least hopeless-looking rows leave the gate until it holds none.
    for m in range(len(candidates), max(min_rows, 1) - 1, -1):
        under = candidates[:m]
        low, high = np.nanmin(feats[under], axis=0), np.nanmax(feats[under], axis=0)
        if solved.any():  # open the region on a feature's side away from every solved row
            s_low, s_high = np.nanmin(feats[solved], axis=0), np.nanmax(feats[solved], axis=0)
            high = np.where(s_high < low, np.inf, high)
            low = np.where(s_low > high, -np.inf, low)
        gate = RowGate(model, float(pred[under].max()), tuple(low.tolist()), tuple(high.tolist()), 0, 0.0)
        inside = ((feats >= low) & (feats <= high)).all(axis=1)
        gated = gate.skips(feats)  # the level and the region: what live rows will see
        if not (inside & solved).any() and gated.sum() >= max(min_rows, 1):
            return replace(gate, calibration_rows=int(gated.sum()), share=float(gated.mean()))
    return None


def label_calibration(samples: pl.DataFrame, verifier_pass: float = 0.5) -> tuple[pl.DataFrame, str]:
    """Fill ``correct`` of calibration samples from the best evidence available.

    Gold where ``correct`` is known (``output_to_samples`` with a gold column); else a verifier pass
    (``verifier_score >= verifier_pass``) when scores exist; else agreement with the row's K-sample
    majority answer (the high-budget answer; ties go to the answer seen first, as ``answers.vote``).
    With majority labels, curves measure how fast a policy reaches the answer K samples would give.

    Returns:
        (samples with a non-null ``correct``, source: gold, verifier, majority, or gold+<fallback>).
    """
    has_gold = "correct" in samples.columns and samples["correct"].null_count() < len(samples)
    if has_gold and samples["correct"].null_count() == 0:
        return samples.with_columns(pl.col("correct").cast(pl.Boolean)), "gold"
    if "verifier_score" in samples.columns and samples["verifier_score"].null_count() < len(samples):
        fallback, source = (pl.col("verifier_score") >= verifier_pass).fill_null(False), "verifier"
    else:
        majority = majority_answers(samples).rename({"majority": "_majority"})
        samples = samples.join(majority, on="query_id", how="left")
        fallback, source = (pl.col("answer") == pl.col("_majority")).fill_null(False), "majority"
    correct = pl.coalesce(pl.col("correct").cast(pl.Boolean), fallback) if has_gold else fallback
    out = samples.with_columns(correct=correct)
    return out.drop("_majority") if "_majority" in out.columns else out, f"gold+{source}" if has_gold else source


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is for and how it may spend (the arguments of ``plan_from_calibration``)."""

    rows_remaining: int
    budget_remaining: float
    unit: str
    objective: str
    price: float | None = None
    round_size: int = 2
    seed: int = 0
    rungs: pl.DataFrame | None = None
    sampling: bool = True
    prompt_per_sample: bool = False
    max_cap: int | None = None


def plan_from_calibration(samples: pl.DataFrame, *, rows_remaining: int, budget_remaining: float, unit: str,
                          objective: str, config: AdaptiveConfig | None = None, price: float | None = None,
                          round_size: int = 2, seed: int = 0, verifier_pass: float | None = None,
                          model: DifficultyModel | None = None, rungs: pl.DataFrame | None = None,
                          sampling: bool = True, prompt_per_sample: bool = False,
                          max_cap: int | None = None) -> tuple[AdaptivePlan, dict]:
    """Learn an ``AdaptivePlan`` from calibration samples and fit it to the remaining budget.

    Args:
        samples: The calibration slice in the replay schema (``samples.output_to_samples``); ``correct``
            may be null (see ``label_calibration``). Row features (``difficulty_hint``, ``feature_*``)
            enter the model when ``config.estimators`` asks for them; live rows must then carry them
            (``RowState.features``).
        rows_remaining: Rows the plan will run on.
        budget_remaining: Budget for them, pilots included, in ``unit`` (calibration already paid).
        unit: ``tokens`` or ``samples``; ``tokens`` charges the prompt once per round, as replicas pay.
        objective: ``accuracy``, ``coverage`` or ``verified_yield`` (needs verifier scores; c is
            ``config.yield_cap``).
        config: Pilot size, buckets, stop thresholds, caps, orders, give-up points, difficulty estimators,
            verified_yield's cap (``AdaptiveConfig``; default: the pilot's signals only).
        price: Score per unit of cost below which extra compute is not bought even if the budget allows
            (each bucket stops at its ``CurveFit.knee(price)``). None: the budget alone decides.
        round_size: Samples per round after the pilot.
        seed: Seeds the per-row split of a bucket between two rules.
        verifier_pass: Verifier score that counts as correct when labelling without gold, and as verified
            in verified_yield's stop signal. None: ``config.verifier_pass`` (0.5).
        model: A difficulty model saved by an earlier run (the ``learned`` estimator, see
            ``load_difficulty_model``); None: fit one on this calibration.
        rungs: Ladder rungs measured on calibration rows (``rungs.rung_measures``: ``query_id, rung, cost,
            score``, cost in ``unit``): each bucket gets one more option per rung (``rungs.rung_options``);
            rows of a bucket planned for a rung run it after the pilot. None: stop rules only.
        sampling: Offer the sampling options (stop rule x cap) beyond the pilot; False leaves each bucket
            the pilot alone and the ``rungs``.
        prompt_per_sample: Every sample pays the prompt (samples that stop at a failed step are requests of
            their own), not every round.
        max_cap: Most samples a row may draw when budget is left past every bucket's measured peak
            (``_extend_cap``): the buckets with headroom then sample past the calibration's K, up to this.
            None: never past K.

    Returns:
        (plan, report): the report is JSON-ready (per bucket: calibration rows, curve points per option,
        knee, chosen operating point; the budget math; warnings) and feeds ``plot_plan``.

    Raises:
        ValueError: Unknown unit/objective, negative rows or budget, round_size < 1, no samples,
            verified_yield without verifier scores.
        SamplesSchemaError: Samples not in the replay schema.
    """
    req = PlanRequest(rows_remaining, budget_remaining, unit, objective, price, round_size, seed, rungs, sampling,
                      prompt_per_sample, max_cap)
    return plan_for_request(samples, req, config, verifier_pass, model)


def plan_for_request(samples: pl.DataFrame, req: PlanRequest, config: AdaptiveConfig | None = None,
                     verifier_pass: float | None = None,
                     model: DifficultyModel | None = None) -> tuple[AdaptivePlan, dict]:
    """``plan_from_calibration`` with its budget and options as one ``PlanRequest``: label, pilot and gate,
    calibrate buckets, bucket options, allocate, spend slack, report."""
    _check_request(req)
    cfg = _plan_config(config, verifier_pass)
    table, labels, warnings = _calibration_table(samples, req.objective, cfg)
    pilot = _pilot_and_gate(table, req, cfg, warnings)
    buckets, rules = _calibrate(table, pilot, req, cfg, model)
    options, measured = _bucket_options(buckets, rules, table, pilot, req, cfg)
    per_row = max(pilot.extra_budget, 0.0) / pilot.rows_run if pilot.rows_run else 0.0
    alloc, units = _allocate_shares(options, buckets.counts, per_row)
    plans = _bucket_plans(options, alloc, units, buckets, rules)
    slack = per_row - sum(b.share * b.expected_cost for b in plans)
    if req.price is None and alloc.price == 0 and slack > 0:
        plans = _spend_leftover(plans, buckets.curves, rules, slack, req.max_cap,
                                lambda: _unsolved_sample_cost(table, pilot.rows, pilot.cumcost))
    plan = AdaptivePlan(pilot.size, req.round_size, req.objective, req.unit, tuple(pilot.names), buckets.model,
                        tuple(float(e) for e in buckets.edges), tuple(plans), rules.weighted, pilot.cost, labels,
                        req.seed, cfg.yield_cap, cfg.verifier_pass, pilot.gate)
    report = _plan_report(plan, req, cfg, table, pilot, buckets, labels, warnings) | {
        "budget": _budget_report(plan, req, pilot, alloc.price),
        "buckets": _bucket_reports(plans, buckets, measured, req.price, pilot.rows_run), "warnings": warnings}
    return plan, report


def _check_request(req: PlanRequest) -> None:
    if req.unit not in BUDGET_UNITS or req.objective not in OBJECTIVES:
        raise ValueError(f"need unit in {BUDGET_UNITS} and objective in {OBJECTIVES}, "
                         f"got {req.unit!r}, {req.objective!r}")
    if req.rows_remaining < 0 or not req.budget_remaining >= 0 or req.round_size < 1:
        raise ValueError("need rows_remaining >= 0, budget_remaining >= 0 and round_size >= 1")


def _plan_config(config: AdaptiveConfig | None, verifier_pass: float | None) -> AdaptiveConfig:
    """The config, default the pilot's signals only (live rows carry row features only when asked)."""
    cfg = config or AdaptiveConfig()
    if verifier_pass is not None and verifier_pass != cfg.verifier_pass:
        cfg = replace(cfg, verifier_pass=verifier_pass)
    return cfg


def _calibration_table(samples: pl.DataFrame, objective: str,
                       cfg: AdaptiveConfig) -> tuple[ReplayTable, str, list[str]]:
    """Label the calibration samples and build their table: (table, label source, warnings)."""
    labelled, labels = label_calibration(samples, cfg.verifier_pass)
    table = build_table(labelled)
    q, width = table.shape
    if q == 0 or width == 0:
        raise ValueError("plan_from_calibration: no calibration samples")
    if objective == "verified_yield" and table.verifier_score is None:
        raise ValueError("plan_from_calibration: objective verified_yield needs verifier scores in the "
                         "calibration samples (verifier_score; a job needs a `verifier`)")
    warnings = []
    if q < cfg.min_calibration_queries:
        warnings.append(f"only {q} calibration rows (< {cfg.min_calibration_queries}): curves are noisy")
    return table, labels, warnings


@dataclass
class _Pilot:
    """The pilot and the gate in front of it.

    Attributes:
        size: Pilot samples (shrunk while the budget cannot pay them for every row run).
        names: The difficulty features (chosen for the initial pilot size).
        gate: The features-only gate, or None.
        rows: Calibration rows the gate lets through.
        rows_run: Remaining rows expected through the gate.
        cumcost: [rows, samples + 1] cumulative cost of the calibration samples, as live rows pay.
        cost: Expected pilot cost per row run.
        extra_budget: Budget left past the pilots (negative: not every row gets a pilot).
    """

    size: int
    names: list[str]
    gate: RowGate | None
    rows: np.ndarray
    rows_run: float
    cumcost: np.ndarray
    cost: float
    extra_budget: float


def _pilot_and_gate(table: ReplayTable, req: PlanRequest, cfg: AdaptiveConfig, warnings: list[str]) -> _Pilot:
    """Gate the rows the features alone call hopeless, then fit the pilot to the budget."""
    q, width = table.shape
    n_av = table.n_available
    pilot = min(pilot_size(cfg, req.objective, table.verifier_score is not None), width)
    names = feature_names(table, pilot, cfg)
    gate = fit_gate(table, names, cfg.gate_min_rows)
    gated = gate.skips(pilot_features(table, 0, np.zeros(q, np.int64), gate.model.names)[0]) if gate \
        else np.zeros(q, dtype=bool)
    rows = np.flatnonzero(~gated)
    rows_run = req.rows_remaining * (1.0 - (gate.share if gate else 0.0))
    cumcost = round_cumcost(table, req.unit, 1, 1) if req.prompt_per_sample else table.cumcost(req.unit)

    def pilot_cost(p: int) -> float:
        return float(cumcost[rows, np.minimum(p, n_av[rows])].mean())

    while pilot > 1 and rows_run * pilot_cost(pilot) > req.budget_remaining:
        pilot -= 1  # as replay: a smaller pilot before rows go without one
    pilot_row = pilot_cost(pilot)
    extra_budget = req.budget_remaining - rows_run * pilot_row
    if extra_budget < 0:
        warnings.append("the budget cannot pay a pilot sample for every remaining row; the ledger will refuse some")
    return _Pilot(pilot, names, gate, rows, rows_run, cumcost, pilot_row, extra_budget)


@dataclass
class _Buckets:
    """What ``calibrate_buckets`` measured, with the buckets' calibration row counts.

    Attributes:
        counts: [buckets] calibration (row, order) pairs predicted into each bucket.
        copies: Sample orders each calibration row was replayed in.
    """

    model: DifficultyModel
    edges: np.ndarray
    curves: list[BucketCalibration]
    options: list[tuple]
    difficulty: np.ndarray
    cal: ReplayTable
    counts: np.ndarray
    copies: int


@dataclass
class _Rules:
    """The stop-rule grid: option ``name`` (a grid index) is rule ``specs[grid_t[i]]`` with cap ``grid_c[i]``."""

    specs: list
    grid_t: np.ndarray
    grid_c: np.ndarray
    pilot: int
    weighted: bool

    def rule(self, name: str) -> StopRule:
        """The rule of an allocator option: a stop rule of the grid, or a ladder rung after the pilot."""
        if name in RUNGS:
            return StopRule(math.inf, None, self.pilot, name, rung=name)
        (t, g, below), cap = self.specs[self.grid_t[int(name)]], int(self.grid_c[int(name)])
        return StopRule(float(t), g, cap, tier_name(cap, self.pilot, self.weighted), below)


def _thresholds(table: ReplayTable, objective: str, cfg: AdaptiveConfig) -> tuple[tuple, np.ndarray | None]:
    """The stop thresholds offered, and the rows that replay in their recorded order only (or None).

    Calibration stopped rows at a verified sample (``CalibrationTier``): every finite threshold (a verifier
    score, at most VERIFIED) stops them there too, so their curves are exact; "never stop early" would read
    samples that were not drawn, so it is not offered. Such rows' samples are not exchangeable (the last
    one verified), so they replay in their recorded order only.
    """
    thresholds = stop_signal_and_thresholds(table, objective, cfg)[1]
    if verifier_driven(objective, table.verifier_score is not None) and (table.n_available < table.shape[1]).any():
        thresholds = tuple(t for t in thresholds if math.isfinite(t)) or thresholds
        return thresholds, (np.nan_to_num(table.verifier_score, nan=-np.inf) >= VERIFIED).any(axis=1)
    return thresholds, None


def _calibrate(table: ReplayTable, pilot: _Pilot, req: PlanRequest, cfg: AdaptiveConfig,
               model: DifficultyModel | None) -> tuple[_Buckets, _Rules]:
    """Difficulty model, buckets and per-bucket curves over the stop-rule grid, from the pilot's rows."""
    width = table.shape[1]
    thresholds, keep_order = _thresholds(table, req.objective, cfg)
    levels = give_up_levels(table, req.objective, cfg, thresholds)
    model, edges, curves, options, difficulty, cal = calibrate_buckets(
        table, pilot.rows, pilot.size, req.unit, req.objective, cfg, thresholds, pilot.names, req.round_size, levels,
        model, keep_order, req.prompt_per_sample)
    counts = np.bincount(assign_buckets(difficulty, edges), minlength=len(curves)).astype(np.float64)
    copies = max(len(difficulty) // len(pilot.rows), 1)
    specs = rule_specs(thresholds, pilot.size, width, cfg.give_up_at, levels)
    grid_t, grid_c = rule_grid(len(specs), sample_caps(pilot.size, width, cfg))
    return (_Buckets(model, edges, curves, options, difficulty, cal, counts, copies),
            _Rules(specs, grid_t, grid_c, pilot.size, table.verifier_score is not None))


def _bucket_options(buckets: _Buckets, rules: _Rules, table: ReplayTable, pilot: _Pilot, req: PlanRequest,
                    cfg: AdaptiveConfig) -> tuple[list[tuple], list[dict]]:
    """Per bucket, the allocator's options (the stop rules the price and ``sampling`` allow, then the rungs),
    and the rungs' measured options (``rung_options``)."""
    options = buckets.options
    if req.price is not None:  # never buy past a bucket's knee at this price
        options = [tuple(o for o in opts if o.cost <= c.curve.compute[c.curve.knee(req.price)]) or opts
                   for opts, c in zip(options, buckets.curves)]
    if not req.sampling:  # the ladder has no sampling rung: the pilot alone (cap = pilot) stays
        options = [tuple(o for o in opts if rules.grid_c[int(o.name)] <= pilot.size) for opts in options]
    cal, difficulty = buckets.cal, buckets.difficulty
    pilot_score = cal.scores(req.objective, cfg.yield_cap)[
        np.arange(len(difficulty)), np.minimum(pilot.size, cal.n_available)].astype(np.float64)
    measured = rung_options(req.rungs if req.rungs is not None else pl.DataFrame(schema=MEASURE_SCHEMA),
                            table.query_ids.gather(pilot.rows), difficulty, buckets.edges, pilot_score=pilot_score,
                            reference=[min(opts, key=lambda o: o.cost).score for opts in options])
    options = [opts + tuple(o for o, _ in extra.values() if _rung_on_offer(o, opts, req.price))
               for opts, extra in zip(options, measured)]
    return options, measured


def _rung_on_offer(rung: Option, options: tuple, price: float | None) -> bool:
    """A rung is offered unless, at ``price``, it is dearer than every option and worth less than the best."""
    return (price is None or rung.cost <= _knee_cost(options)
            or rung.score - price * rung.cost >= max(p.score - price * p.cost for p in options))


def _allocate_shares(options: list[tuple], counts: np.ndarray, per_row: float) -> tuple[Allocation, np.ndarray]:
    """Allocate ``per_row`` over the buckets' shares, split finely (``_ALLOC_RESOLUTION`` rows in all):
    (allocation, [buckets] allocator rows per bucket)."""
    scale = max(1, math.ceil(_ALLOC_RESOLUTION / counts.sum()))
    units = (counts * scale).astype(np.int64)
    alloc = allocate([BucketOptions(b, int(units[b]), options[b]) for b in range(len(options))],
                     per_row * float(units.sum()))
    return alloc, units


def _bucket_plans(options: list[tuple], alloc: Allocation, units: np.ndarray, buckets: _Buckets,
                  rules: _Rules) -> list[BucketPlan]:
    """Each bucket's rule (and the richer rule of a split, with its share) from the allocation."""
    counts, plans = buckets.counts, []
    for b, (opts, ba) in enumerate(zip(options, alloc.buckets)):
        by_name = {o.name: o for o in opts}  # every bucket has rows, so the cheaper option keeps some
        used = sorted(((by_name[k], v / units[b]) for k, v in ba.counts.items() if v), key=lambda ow: ow[0].cost)
        alt = rules.rule(used[1][0].name) if len(used) > 1 else None
        plans.append(BucketPlan(b, float(counts[b] / buckets.copies), float(counts[b] / counts.sum()),
                                rules.rule(used[0][0].name), float(sum(o.cost * w for o, w in used)),
                                float(sum(o.score * w for o, w in used)), alt, float(used[1][1]) if alt else 0.0))
    return plans


def _spend_leftover(plans: list[BucketPlan], curves: list[BucketCalibration], rules: _Rules, slack: float,
                    max_cap: int | None, sample_cost: Callable[[], float]) -> list[BucketPlan]:
    """Budget past every bucket's peak: richer rules first (``_spend_slack``), then longer caps
    (``_extend_cap``, up to ``max_cap``; ``sample_cost()`` gives an unsolved row's cost per sample)."""
    richest = _richest_option(rules.specs, rules.grid_t, rules.grid_c)
    if richest is None:
        return plans
    plans, slack = _spend_slack(plans, curves, richest, rules.rule(richest), slack)
    if max_cap is not None and slack > 0:
        plans = _extend_cap(plans, curves, richest, rules.rule(richest), slack, max_cap, sample_cost())
    return plans


def _bucket_reports(plans: list[BucketPlan], buckets: _Buckets, measured: list[dict], price: float | None,
                    rows_run: float) -> list[dict]:
    """Per bucket: its curve, knee, peak and chosen operating point, and the rungs' measured points."""
    out = []
    for b, (bp, bc) in enumerate(zip(plans, buckets.curves)):
        out.append(_bucket_report(bp, bc.curve, price, rows_run, buckets.edges, bc.n_calibration_rows))
        if measured[b]:  # the rungs' measured points, beside the stop rules' curve
            out[-1]["rungs"] = [{"label": k, "cost": o.cost, "score": o.score, "rows": n}
                                for k, (o, n) in measured[b].items()]
    return out


def _budget_report(plan: AdaptivePlan, req: PlanRequest, pilot: _Pilot, alloc_price: float) -> dict:
    """The budget math: pilots, the extra budget, expected spend and score."""
    rows_run, pilot_row = pilot.rows_run, pilot.cost
    extra_spend = rows_run * sum(b.share * b.expected_cost for b in plan.buckets)
    return {"budget_remaining": req.budget_remaining, "rows_remaining": req.rows_remaining,
            "rows_gated": req.rows_remaining - rows_run, "pilot_cost_per_row": pilot_row,
            "pilot_total": rows_run * pilot_row, "extra_budget": max(pilot.extra_budget, 0.0),
            "expected_extra_total": extra_spend, "expected_total": rows_run * pilot_row + extra_spend,
            "expected_cost_per_row": plan.expected_cost_per_row, "price": alloc_price, "knee_price": req.price,
            "expected_score_per_row": sum(b.share * b.expected_score for b in plan.buckets)}


def _plan_report(plan: AdaptivePlan, req: PlanRequest, cfg: AdaptiveConfig, table: ReplayTable, pilot: _Pilot,
                 buckets: _Buckets, labels: str, warnings: list[str]) -> dict:
    """The report's head: what was planned, on what calibration, with which gate and signal."""
    q, width = table.shape
    gate, rungs = pilot.gate, req.rungs
    return {"unit": req.unit, "objective": req.objective, "labels": labels, "pilot": pilot.size,
            "round_size": req.round_size, "calibration_rows": q, "calibration_samples_per_row": width,
            "calibration_orders": buckets.copies,
            "gate": gate and {"below": gate.below, "calibration_rows": gate.calibration_rows,
                              "share": gate.share, "features": list(gate.model.names)},
            "signal": plan.signal, "weighted": plan.weighted,
            **({"rungs": sorted(set(rungs["rung"].to_list()))} if rungs is not None and rungs.height else {}),
            **({"yield_cap": cfg.yield_cap} if req.objective == "verified_yield" else {}),
            "feature_names": list(pilot.names)}


def _richest_option(specs: list, grid_t: np.ndarray, grid_c: np.ndarray) -> int | None:
    """Grid index of the richest rule that still stops on its signal: the strictest finite threshold,
    no give-up, the largest cap (None when no threshold is finite)."""
    finite = [t for t, _, _ in specs if math.isfinite(t)]
    if not finite:
        return None
    j = specs.index((max(finite), None, None))
    hit = np.flatnonzero((grid_t == j) & (grid_c == grid_c.max()))
    return int(hit[0]) if hit.size else None


def _spend_slack(plans: list[BucketPlan], curves: list[BucketCalibration], richest: int, rich_rule: StopRule,
                 slack: float) -> tuple[list[BucketPlan], float]:
    """Spend budget the allocator left over (every bucket at its measured peak) instead of returning it.

    A curve measured on a few dozen calibration rows per bucket cannot see the small gains of late
    samples, so its peak often sits below the largest cap with the same score: with ``slack`` (extra per
    remaining row) left, buckets whose curve rose move rows to the richest rule (``_richest_option``)
    while its measured score is no lower, buckets with the steepest measured rise first, via the
    per-row split (``alt_rule``/``alt_share``). As replay's ``_extend_contested``. Returns the plans and
    the slack still left.
    """
    out = list(plans)
    rate = {}
    for b, (bp, bc) in enumerate(zip(plans, curves)):
        cv = bc.curve
        c_r, s_r = float(cv.compute[richest]), float(cv.score[richest])
        rise = float(cv.score[cv.peak] - cv.score[int(np.argmin(cv.compute))])
        headroom = cv.score[cv.peak] < 1.0 - 1e-9  # some calibration rows were still not solved
        if bp.alt_rule is None and rise > 0 and headroom and c_r > bp.expected_cost and s_r >= bp.expected_score - 1e-12:
            rate[b] = rise / c_r
    for b in sorted(rate, key=lambda k: -rate[k]):
        bp, cv = out[b], curves[b].curve
        need = bp.share * (float(cv.compute[richest]) - bp.expected_cost)
        take = min(1.0, slack / need)
        if take <= 0:
            break
        cost, score = (1 - take) * bp.expected_cost + take * float(cv.compute[richest]), \
            (1 - take) * bp.expected_score + take * float(cv.score[richest])
        out[b] = replace(bp, rule=rich_rule, expected_cost=cost, expected_score=score) if take >= 1.0 else \
            replace(bp, alt_rule=rich_rule, alt_share=take, expected_cost=cost, expected_score=score)
        slack -= take * need
    return out, max(slack, 0.0)


def _extend_cap(plans: list[BucketPlan], curves: list[BucketCalibration], richest: int, rich_rule: StopRule,
                slack: float, max_cap: int, sample_cost: float) -> list[BucketPlan]:
    """Budget still left once every bucket with headroom runs the richest rule: raise that rule's cap past
    the calibration's K, as far as the slack pays, up to ``max_cap``.

    Rows that fail K samples still solve now and then (on the demo task about one in eight of the headroom
    rows unsolved at 12 samples is solved by 32), but no calibration measured past K, so the plan claims no
    score for it: it only spends budget that would otherwise go unspent. The buckets' rows unsolved at K
    (``1 - score`` at the richest rule) are the ones that draw past it, each sample at ``sample_cost``
    (an unsolved calibration row's mean cost per sample); rows that verify stop as before. Pacing re-plans
    from the actual spend, and the ledger stays the hard cap."""
    out = list(plans)
    unsolved = {b: 1.0 - float(curves[b].curve.score[richest]) for b, bp in enumerate(plans)
                if bp.rule == rich_rule and bp.alt_rule is None}
    unsolved = {b: u for b, u in unsolved.items() if u > 1e-9}
    per_sample = sum(plans[b].share * u * sample_cost for b, u in unsolved.items())
    extra = min(max_cap - rich_rule.cap, int(slack // per_sample)) if per_sample > 0 else 0
    if extra < 1:
        return out
    longer = replace(rich_rule, cap=rich_rule.cap + extra)
    for b, u in unsolved.items():
        out[b] = replace(out[b], rule=longer, expected_cost=out[b].expected_cost + u * extra * sample_cost)
    return out


def _unsolved_sample_cost(table: ReplayTable, rows: np.ndarray, cumcost: np.ndarray) -> float:
    """Mean cost per sample of the calibration rows (of ``rows``) no sample of which was right."""
    n = table.n_available[rows]
    lost = rows[~table.correct[rows].any(axis=1) & (n > 0)]
    if lost.size == 0:
        return 0.0
    return float((cumcost[lost, table.n_available[lost]] / table.n_available[lost]).mean())


def _bucket_report(bp: BucketPlan, curve: CurveFit, price: float | None, rows_remaining: int, edges: np.ndarray,
                   curve_rows: int) -> dict:
    labels = curve.labels or [str(i) for i in range(len(curve.compute))]

    def point(i: int) -> dict:
        return {"label": labels[i], "cost": float(curve.compute[i]), "score": float(curve.score[i])}

    chosen = {bp.rule.label: 1.0 - bp.alt_share} | ({bp.alt_rule.label: bp.alt_share} if bp.alt_rule else {})
    span = [float(edges[bp.bucket - 1]) if bp.bucket else None, float(edges[bp.bucket]) if bp.bucket < len(edges) else None]
    return {"bucket": bp.bucket, "difficulty_range": span, "calibration_rows": bp.calibration_rows,
            "curve_rows": curve_rows, "share": bp.share, "expected_rows": bp.share * rows_remaining,
            "points": [point(i) for i in range(len(curve.compute))], "hull": curve.hull.tolist(),
            "knee": point(curve.knee(price)), "peak": point(curve.peak), "chosen": chosen,
            "operating_point": {"cost": bp.expected_cost, "score": bp.expected_score, "tier": bp.tier}}


def _knee_cost(options: tuple) -> float:
    """The dearest of a bucket's (price-filtered) options: a rung no dearer stays on offer."""
    return max((o.cost for o in options), default=0.0)


def plot_plan(report: dict, path: str) -> None:
    """Write a PNG of score vs extra compute per bucket, with the chosen operating points starred; ladder
    rungs (think, search) are drawn as labelled diamonds beside their bucket's curve (the hull stays the
    stop rules')."""
    buckets = []
    for b in report["buckets"]:
        pts = b["points"] + b.get("rungs", [])
        curve = CurveFit(np.array([p["cost"] for p in pts]), np.array([p["score"] for p in pts]),
                         np.array(b["hull"], dtype=np.int64), [p["label"] for p in pts])
        chosen = {k: max(1, round(v * b["expected_rows"])) for k, v in b["chosen"].items() if v > 0}
        buckets.append(BucketCalibration(b["bucket"], round(b["calibration_rows"]), round(b["expected_rows"]),
                                         curve, chosen))
    plot_curves(buckets, path, x_label=f"extra {report['unit']} per row beyond the pilot",
                title=f"adaptive plan: {report['objective']} vs compute per bucket", marked=RUNGS)


def plan_draws(plan: AdaptivePlan, samples: pl.DataFrame | ReplayTable) -> pl.DataFrame:
    """Replay a plan over recorded samples, columnar: what each row would draw live.

    Rows whose recorded samples run out stop there. ``correct`` is never read (null is fine).

    Returns:
        query_id, difficulty, bucket, tier, n_drawn.
    """
    if isinstance(samples, ReplayTable):
        table = samples
    else:  # only the columns the plan was fit on: they decide features, the signal and the vote
        unused = [c for c in ("mean_logprob", "verifier_score") if c not in plan.feature_names
                  and not (c == "verifier_score" and plan.reads_verifier)]
        df = samples.drop(*unused, strict=False)
        table = build_table(df.with_columns(
            correct=pl.col("correct").fill_null(False) if "correct" in df.columns else pl.lit(False)))
    pilot, n_av = plan.pilot, table.n_available
    p_n = np.minimum(pilot, n_av)
    feats = pilot_features(table, pilot, p_n, plan.feature_names)[0]
    difficulty, bucket = plan.classify(feats)
    alt = plan.takes_alt(table.query_ids, bucket)
    signal = stop_signal(table, plan.objective, plan.yield_cap, plan.verifier_pass)
    drawn = p_n.astype(np.int64)
    tiers = np.empty(len(drawn), dtype=object)
    gated, gate_difficulty = plan.gated(table)
    for b, bp in enumerate(plan.buckets):
        for rule, mask in ((bp.rule, (bucket == b) & ~alt), (bp.alt_rule, (bucket == b) & alt)):
            if rule is None or not mask.any():
                continue
            n = rule_stops(table, first_stop(signal, rule.threshold, pilot, n_av).astype(np.int64), rule.give_up, pilot,
                           rule.give_up_below)
            n = np.minimum(round_draws(n, p_n, plan.round_size, n_av), rule.cap)
            drawn[mask] = np.clip(n, p_n, n_av)[mask]
            tiers[mask] = rule.tier
    drawn[gated], tiers[gated] = 0, "skip"
    return pl.DataFrame({"query_id": table.query_ids, "difficulty": np.where(gated, gate_difficulty, difficulty),
                         "bucket": pl.Series(np.where(gated, None, bucket).tolist(), dtype=pl.Int32),
                         "tier": pl.Series(tiers.tolist(), dtype=pl.String), "n_drawn": drawn})

