"""The gold-calibrated planner's kernel: pilot signals, stop rules and per-bucket curves learned on a
calibration slice with gold, used by the live adaptive plan (``tierwise.pipelines.plan.adaptive.plan_from_calibration``).

Replay's adaptive policy is the label-free sequential policy (``tierwise.pipelines.plan.sequential``); this module no
longer has a replay driver of its own. Stop rules: Adaptive-Consistency's P(leader is the mode) >=
threshold (verifier score for coverage with a verifier; for verified_yield, the verified samples so far
over ``yield_cap``), optionally with a give-up check (``give_up_levels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tierwise.pipelines.plan.allocation import Option
from tierwise.pipelines.plan.calibration import (
    BucketCalibration,
    DifficultyModel,
    assign_buckets,
    fit_curve,
    fit_difficulty_model,
    quantile_edges,
)
from tierwise.pipelines.plan.stopping import first_stop
from tierwise.pipelines.replay.table import ReplayTable


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the adaptive (tierwise) policy.

    Attributes:
        pilot_samples: Samples every query gets first; their agreement, log-probs, verifier scores and
            lengths (plus ``difficulty_hint``) estimate its difficulty. None: ``pilot_size`` decides.
        n_buckets: Most difficulty buckets (quantiles of predicted success on calibration queries).
        min_bucket_queries: Fewest calibration queries per bucket (fewer buckets when short): curves
            from fewer queries are too noisy to allocate by.
        calibration_share: Most of the budget deep calibration (all recorded samples of calibration
            queries) may take.
        max_calibration_queries: Most deep-calibrated queries; past a few thousand, curves are precise
            enough and more calibration only costs.
        min_calibration_queries: Below this many deep-calibrated queries, fall back to uniform.
        stop_thresholds: Early-stop thresholds on P(leader is the mode) offered to the allocator
            (``inf`` = never stop early); the allocator picks (threshold, cap) per bucket.
        n_caps: About this many sample caps, geometrically spaced from the pilot to all samples: a
            coarse grid keeps the curve's maximum over options from fitting calibration noise.
        calibration_orders: Replays of each calibration query's samples in different orders (the
            first as recorded). Samples of a query are i.i.d., so every order is an equally likely
            history; averaging over orders removes most of one history's noise from the curves, and
            costs no samples (a live calibration run holds all of them too).
        give_up_at: Per-query "hopeless" checks offered to the allocator: after g samples, stop if the
            leading answer has at most g/4 votes (samples keep disagreeing), or (coverage with a verifier)
            if the best verifier score so far is below a give-up level. Each combines with every stop
            threshold; "never give up" is always offered.
        verifier_quantiles: For coverage with a verifier: stop thresholds at these quantiles of scores.
        give_up_quantiles: For coverage with a verifier: give-up levels at these quantiles of the scores
            below the strictest finite stop threshold (samples that do not verify). A query whose best
            step score stays low after g samples rarely verifies later.
        pacing_rounds: The remaining budget is re-allocated before each of this many query chunks,
            from the costs actually spent so far.
        estimators: The difficulty signals the model combines (``feature_names``): ``pilot`` (the
            pilot samples' agreement, parse rate, length, log-prob, verifier score), ``features``
            (``log_prompt_tokens`` and the ``feature_*`` columns), ``column`` (``difficulty_hint``).
        yield_cap: For verified_yield: verified samples worth keeping per query (c); the score is
            min(correct, c) / c and a query stops once c samples pass the verifier.
        verifier_pass: For verified_yield: the verifier score at which a sample counts as verified (the
            stop signal; ``adaptive.label_calibration`` labels calibration samples at the same level).
        gate_min_rows: The live plan's features-only gate (``adaptive.fit_gate``): rows predicted below
            the level where at least this many calibration rows never got a sample right skip the pilot.
            None: no gate. Needs a free estimator (``features`` or ``column``).
    """

    pilot_samples: int | None = None
    n_buckets: int = 5
    min_bucket_queries: int = 30
    calibration_share: float = 0.15
    max_calibration_queries: int = 2000
    min_calibration_queries: int = 40
    stop_thresholds: tuple[float, ...] = (0.8, 0.95, 0.99, float("inf"))
    n_caps: int = 8
    calibration_orders: int = 8
    give_up_at: tuple[int, ...] = (4, 8)
    verifier_quantiles: tuple[float, ...] = (0.5, 0.75, 0.9, 0.97)
    give_up_quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)
    pacing_rounds: int = 8
    estimators: tuple[str, ...] = ("pilot",)  # the spec's default too (policy.difficulty.estimators)
    yield_cap: int = 4
    verifier_pass: float = 0.5
    gate_min_rows: int | None = 8

    def __post_init__(self) -> None:
        if self.yield_cap < 1:
            raise ValueError(f"AdaptiveConfig.yield_cap must be >= 1, got {self.yield_cap}")


def pilot_size(cfg: AdaptiveConfig, objective: str, verifier: bool) -> int:
    """Pilot samples per query: ``cfg.pilot_samples`` if set; else 1 when the verifier drives stopping
    (``verifier_driven``: a sample that verifies settles a coverage query, so a second pilot sample would
    be paid by every query the first one settled, and one verifier score already says much), else 2
    (agreement needs two)."""
    if cfg.pilot_samples is not None:
        return cfg.pilot_samples
    return 1 if verifier_driven(objective, verifier) else 2


PILOT_SIGNALS = ("agreement", "parsed", "log_tokens", "mean_logprob", "verifier_score")
PROMPT_FEATURE = "log_prompt_tokens"


def pilot_features(table: ReplayTable, pilot: int, p_n: np.ndarray,
                    names: list[str] | tuple[str, ...] | None = None) -> tuple[np.ndarray, list[str]]:
    """[Q, k] difficulty signals visible after the pilot samples (never reads ``correct``).

    The estimators (issue: pilot, features, column): ``PILOT_SIGNALS`` from the pilot samples;
    ``log_prompt_tokens`` and the table's ``feature_*`` columns (prompt features, user columns);
    ``difficulty_hint`` (a difficulty column the user already has). ``names`` picks and orders the
    columns (a plan's ``feature_names``); None: every signal the table has (see ``feature_names``).
    """
    rows = np.arange(table.shape[0])
    denom = np.maximum(p_n, 1)

    def pilot_mean(x: np.ndarray) -> np.ndarray:
        part = x[:, :pilot]
        known = ~np.isnan(part)
        n = known.sum(axis=1)
        return np.where(n > 0, np.where(known, part, 0).sum(axis=1) / np.maximum(n, 1), np.nan)

    cols = {"agreement": lambda: table.votes().top[rows, np.maximum(p_n - 1, 0)] / denom,
            "parsed": lambda: table.valid[:, :pilot].sum(axis=1) / denom,
            "log_tokens": lambda: np.log1p(table.output_tokens[:, :pilot].sum(axis=1) / denom)}
    if table.mean_logprob is not None:
        cols["mean_logprob"] = lambda: pilot_mean(table.mean_logprob)
    if table.verifier_score is not None:
        cols["verifier_score"] = lambda: pilot_mean(table.verifier_score)
    if table.prompt_tokens is not None:
        cols[PROMPT_FEATURE] = lambda: np.log1p(table.prompt_tokens)
    if table.difficulty_hint is not None:
        cols["difficulty_hint"] = lambda: table.difficulty_hint
    for name, values in table.row_features.items():
        cols[name] = lambda v=values: v
    names = list(cols) if names is None else list(names)
    missing = [n for n in names if n not in cols]
    if missing:
        raise ValueError(f"difficulty features {missing} are not in this table (it has {list(cols)})")
    return np.column_stack([cols[n]() for n in names] or [np.zeros(len(rows))])[:, :len(names)].astype(
        np.float64), names


def feature_names(table: ReplayTable, pilot: int, cfg: AdaptiveConfig) -> list[str]:
    """The signals a difficulty model reads: the table's, less the pilot signals without the
    ``pilot`` estimator and less ``log_prompt_tokens`` without ``features`` (``cfg.estimators``)."""
    names = pilot_features(table, pilot, np.minimum(pilot, table.n_available))[1]
    est = cfg.estimators
    return [n for n in names if not ((n in PILOT_SIGNALS and "pilot" not in est)
                                     or (n == "difficulty_hint" and "column" not in est)
                                     or ((n == PROMPT_FEATURE or n.startswith("feature_")) and "features" not in est))]


def verifier_driven(objective: str, has_verifier: bool) -> bool:
    """Whether rows stop on the verifier (best score so far) rather than on agreement.

    Coverage with a verifier is rejection sampling. Accuracy with a verifier selects by a
    sharpened verifier-weighted vote (``tierwise.pipelines.tiers.answers.verifier_weights``), so a verified
    sample decides the answer: there, too, the verifier says when to stop. verified_yield counts
    verified samples (its signal is ``stop_signal``'s verified count, not the best score).
    """
    return has_verifier and objective in ("coverage", "accuracy", "verified_yield")


def _need_verifier(table: ReplayTable, objective: str) -> None:
    if objective == "verified_yield" and table.verifier_score is None:
        raise ValueError("objective verified_yield needs verifier scores (a verifier_score column; live: a "
                         "`verifier` in the job spec): it stops a row once yield_cap samples verify")


def stop_signal(table: ReplayTable, objective: str, yield_cap: int = 4, verifier_pass: float = 0.5) -> np.ndarray:
    """[Q, S] stop signal after each prefix, policy-visible (never ``correct``): for verified_yield,
    min(samples so far with ``verifier_score >= verifier_pass``, ``yield_cap``) / ``yield_cap`` (1.0 once
    c samples verified); the best verifier score so far for coverage (or accuracy) with a verifier; else
    Adaptive-Consistency's P(leader is the mode) (from unweighted vote counts).

    Raises:
        ValueError: verified_yield on a table without verifier scores.
    """
    if objective == "verified_yield":
        _need_verifier(table, objective)
        verified = np.cumsum(table.verifier_score >= verifier_pass, axis=1)  # NaN (unscored) never passes
        return np.minimum(verified, yield_cap) / yield_cap
    if verifier_driven(objective, table.verifier_score is not None):
        v = table.verifier_score
        return np.maximum.accumulate(np.where(np.isnan(v), -np.inf, v), axis=1)
    return table.votes().mode_probability()


def stop_signal_and_thresholds(table: ReplayTable, objective: str, cfg: AdaptiveConfig,
                 thresholds: tuple[float, ...] | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """[Q, S] signal after each prefix (``stop_signal``), and the thresholds offered (given, or from
    ``cfg``; for coverage with a verifier, quantiles of all verifier scores, which are policy-visible;
    for verified_yield, 1.0 (``cfg.yield_cap`` samples verified) and never early)."""
    if objective == "verified_yield":
        return (stop_signal(table, objective, cfg.yield_cap, cfg.verifier_pass),
                thresholds or (1.0, float("inf")))
    if verifier_driven(objective, table.verifier_score is not None):
        v = table.verifier_score
        return stop_signal(table, objective), thresholds or tuple(dict.fromkeys(
            (*np.nanquantile(v, cfg.verifier_quantiles).tolist(), float("inf"))))  # distinct, in order
    return stop_signal(table, objective), thresholds or cfg.stop_thresholds


def give_up_levels(table: ReplayTable, objective: str, cfg: AdaptiveConfig,
                   thresholds: tuple[float, ...]) -> tuple[float | None, ...]:
    """Give-up checks offered at each give-up point: ``None`` is the vote check (the leader has at most
    g/4 votes); for coverage with a verifier, also levels on the best verifier score so far, at
    ``cfg.give_up_quantiles`` of the scores below the strictest finite threshold (policy-visible); for
    verified_yield, of the scores below ``cfg.verifier_pass`` (samples that do not verify)."""
    if objective == "verified_yield":
        _need_verifier(table, objective)
        v = table.verifier_score[table.verifier_score < cfg.verifier_pass]
        if not v.size or not cfg.give_up_quantiles:
            return (None,)
        return (None, *dict.fromkeys(np.quantile(v, cfg.give_up_quantiles).tolist()))
    finite = [t for t in thresholds if np.isfinite(t)]
    if not verifier_driven(objective, table.verifier_score is not None) or not finite or not cfg.give_up_quantiles:
        return (None,)
    v = table.verifier_score[table.verifier_score < max(finite)]  # NaN compares False: unknown scores drop out
    if not v.size:
        return (None,)
    return (None, *dict.fromkeys(np.quantile(v, cfg.give_up_quantiles).tolist()))


def rule_specs(thresholds: tuple[float, ...], pilot: int, width: int, give_up_at: tuple[int, ...],
               levels: tuple[float | None, ...] = (None,)) -> list[tuple[float, int | None, float | None]]:
    """Stop rules offered as (threshold, give-up point, give-up level): every threshold alone, then with
    each give-up check (``levels``, see ``give_up_levels``) at each give-up point the table can reach."""
    gs = [g for g in give_up_at if pilot <= g <= width]
    checks = [(None, None), *((g, lv) for g in gs for lv in levels)]
    return [(t, g, lv) for t in thresholds for g, lv in checks]


def rule_label(threshold: float, give_up: int | None, give_up_below: float | None = None) -> str:
    gu = "" if give_up is None else f",give_up@{give_up}" + ("" if give_up_below is None else f"<{give_up_below:.3g}")
    return f"stop>={threshold:.3g}" + gu


def give_up_cut(table: ReplayTable, give_up: int, below: float | None = None,
                signal: np.ndarray | None = None) -> np.ndarray:
    """[Q] where the give-up check stops each query: ``give_up`` if, after that many samples, the
    leading answer has at most ``give_up // 4`` votes (samples keep disagreeing), or, with ``below``,
    the best verifier score so far (``signal``, the coverage ``stop_signal``; computed when None) is
    below it; else ``n_available``. Queries that have not reached ``give_up`` samples (or have fewer
    available) are not cut."""
    n_av = table.n_available
    if give_up > table.shape[1] or give_up < 1:
        return n_av.astype(np.int64)
    if below is None:
        hopeless = table.votes().top[:, give_up - 1] <= give_up // 4
    else:
        signal = stop_signal(table, "coverage") if signal is None else signal
        hopeless = signal[:, give_up - 1] < below
    return np.where((n_av >= give_up) & hopeless, give_up, n_av)


def rule_stops(table: ReplayTable, by_threshold: np.ndarray, give_up: int | None, pilot: int,
               below: float | None = None, signal: np.ndarray | None = None) -> np.ndarray:
    """[Q] samples drawn under a stop rule, from ``first_stop`` of its threshold and its give-up check
    (``give_up_cut``; ``below`` and ``signal`` as there)."""
    if give_up is None:
        return by_threshold
    n_av = table.n_available
    return np.maximum(np.minimum(by_threshold, give_up_cut(table, give_up, below, signal)), np.minimum(pilot, n_av))


def _stop_rules(table: ReplayTable, signal: np.ndarray, thresholds: tuple[float, ...], pilot: int,
                cfg: AdaptiveConfig, levels: tuple[float | None, ...] = (None,)) -> tuple[np.ndarray, list[str], int]:
    """Samples drawn per query under each stop rule (a threshold, optionally a give-up check, ``levels``
    as ``rule_specs``).

    Returns:
        ([R, Q] samples drawn per rule, R labels, index of the strictest finite threshold without give-up).
    """
    n_av = table.n_available
    by_threshold = {t: first_stop(signal, t, pilot, n_av).astype(np.int64) for t in thresholds}
    specs = rule_specs(thresholds, pilot, table.shape[1], cfg.give_up_at, levels)
    best = stop_signal(table, "coverage") if any(lv is not None for lv in levels) else None
    stops = [rule_stops(table, by_threshold[t], g, pilot, lv, best) for t, g, lv in specs]
    labels = [rule_label(t, g, lv) for t, g, lv in specs]
    finite = [i for i, t in enumerate(thresholds) if np.isfinite(t)]
    strict = labels.index(rule_label(max(thresholds[i] for i in finite), None)) if finite else 0
    return np.stack(stops), labels, strict


def _reordered(table: ReplayTable, rows: np.ndarray, copies: int, seed: int = 0,
               keep_order: np.ndarray | None = None) -> ReplayTable:
    """``copies`` replays of each of ``rows`` with samples shuffled (copy 0 keeps the recorded order).

    ``keep_order`` ([table rows] bool) marks rows replayed in their recorded order in every copy: rows
    whose sampling stopped on what it saw (a verified sample) are not exchangeable histories.
    """
    r = np.tile(rows, max(copies, 1))
    n_av, width = table.n_available[r], table.shape[1]
    keys = np.random.default_rng(seed).random((len(r), width))
    keys[: len(rows)] = np.arange(width) / max(width, 1)
    if keep_order is not None:
        keys[keep_order[r]] = np.arange(width) / max(width, 1)
    keys[np.arange(width)[None, :] >= n_av[:, None]] = np.inf  # missing samples stay at the end
    perm = np.argsort(keys, axis=1, kind="stable")

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.take_along_axis(a[r], perm, axis=1)

    return ReplayTable(
        query_ids=table.query_ids.gather(r), codes=take(table.codes), valid=take(table.valid), n_available=n_av,
        correct=take(table.correct), output_tokens=take(table.output_tokens), judge_tokens=take(table.judge_tokens),
        prompt_tokens=None if table.prompt_tokens is None else table.prompt_tokens[r],
        mean_logprob=take(table.mean_logprob), verifier_score=take(table.verifier_score),
        difficulty_hint=None if table.difficulty_hint is None else table.difficulty_hint[r],
        row_features={k: v[r] for k, v in table.row_features.items()})


def sample_caps(pilot: int, width: int, cfg: AdaptiveConfig) -> np.ndarray:
    """About ``cfg.n_caps`` sample caps (pilot included), geometric from the pilot to all samples."""
    return np.unique(np.round(np.geomspace(max(pilot, 1), max(width, 1), cfg.n_caps)).astype(np.int64))


def rule_grid(n_rules: int, caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Option grid: (stop rule index, cap) for every pair."""
    return np.repeat(np.arange(n_rules), len(caps)), np.tile(caps, n_rules)


def _bucket_curves(cal: ReplayTable, n_queries: int, unit: str, objective: str, cfg: AdaptiveConfig,
                   difficulty: np.ndarray, stops: np.ndarray, rules: list[str],
                   pilot: int, cost: np.ndarray | None = None) -> tuple[np.ndarray, list, list]:
    """Bucket edges by difficulty quantiles of calibration queries, and each bucket's fitted curve.

    Args:
        cal: Calibration queries, each replayed in ``cfg.calibration_orders`` orders (copy-major).
        n_queries: Distinct calibration queries in ``cal``.
        difficulty, stops: Per row of ``cal``: predicted difficulty; [R, rows] samples drawn per stop rule.
        rules: R stop-rule labels.
        cost: [rows, S + 1] cost of drawing the first k samples; default ``cal.cumcost(unit)``.

    A bucket's curve is measured on the ``min_bucket_queries`` (or more) calibration queries nearest
    its difficulty, so buckets can be finer than disjoint bins of the calibration set would allow.

    Returns:
        (bucket edges, per-bucket ``BucketCalibration`` (n_rows left 0), per-bucket allocator options).
    """
    rows, width = cal.shape
    copies = max(rows // max(n_queries, 1), 1)
    n_av, p_n = cal.n_available, np.minimum(pilot, cal.n_available)
    cost = cal.cumcost(unit) if cost is None else cost
    score_tab = cal.scores(objective, cfg.yield_cap)
    window = max(cfg.min_bucket_queries, n_queries // max(cfg.n_buckets, 1))
    edges = quantile_edges(difficulty, min(cfg.n_buckets, max(1, 2 * n_queries // window)))
    by_difficulty = np.argsort(difficulty, kind="stable")
    rank_bucket = assign_buckets(difficulty, edges)[by_difficulty]
    window = min(window * copies, rows)
    caps = sample_caps(pilot, width, cfg)
    grid_t, grid_c = rule_grid(len(rules), caps)
    labels = [f"{rules[t]},cap={c}" for t, c in zip(grid_t, grid_c)]
    curves, options = [], []
    for b in range(len(edges) + 1):
        members = np.flatnonzero(rank_bucket == b)
        mid = (members[0] + members[-1]) // 2 if members.size else 0
        r = by_difficulty[int(np.clip(mid - window // 2, 0, rows - window)):][:window]
        n = np.minimum(np.minimum(stops[:, r][:, :, None], caps[None, None, :]), n_av[r][None, :, None])
        x = (cost[r[None, :, None], n] - cost[r, p_n[r]][None, :, None]).mean(axis=1).ravel()
        y = score_tab[r[None, :, None], n].mean(axis=1).ravel()  # calibration rows only
        curve = fit_curve(x, y, labels)
        curves.append(BucketCalibration(b, len(r) // copies, 0, curve))
        options.append(tuple(Option(str(i), x[i], y[i]) for i in curve.hull))
    return edges, curves, options


def round_draws(n: np.ndarray, pilot_n: np.ndarray, round_size: int, n_available: np.ndarray) -> np.ndarray:
    """Samples a live row draws when its stop point is ``n`` and it samples in rounds of ``round_size``
    after the pilot: the stop point rounded up to the end of its round (a row sees a round's samples
    only when the whole round returns), never past what exists. Apply the cap after this."""
    if round_size <= 1:
        return n
    extra = np.maximum(n - pilot_n, 0)
    return np.minimum(pilot_n + -(-extra // round_size) * round_size, n_available)


def round_cumcost(table: ReplayTable, unit: str, pilot: int, round_size: int) -> np.ndarray:
    """[Q, S + 1] cost of the first k samples as a live row pays it: in tokens, every round (the pilot,
    then one per ``round_size`` samples) sends the prompt again, so it pays ``prompt_tokens`` per round;
    in samples, 1 per sample as ``cumcost``."""
    base = table.cumcost(unit)
    if unit != "tokens" or table.prompt_tokens is None:
        return base
    k = np.arange(base.shape[1])
    later_rounds = -(-np.maximum(k - pilot, 0) // max(round_size, 1))  # rounds after the pilot
    return base + np.where(table.n_available > 0, table.prompt_tokens, 0.0)[:, None] * later_rounds[None, :]


def calibrate_buckets(table: ReplayTable, deep_rows: np.ndarray, pilot: int, unit: str, objective: str,
                      cfg: AdaptiveConfig, thresholds: tuple[float, ...], names: list[str],
                      round_size: int | None = None, levels: tuple[float | None, ...] = (None,),
                      model: DifficultyModel | None = None, keep_order: np.ndarray | None = None,
                      prompt_per_sample: bool = False) -> tuple:
    """Difficulty model, bucket edges and per-bucket curves from fully sampled calibration queries.

    Each of ``deep_rows`` is replayed in ``cfg.calibration_orders`` sample orders; the model maps pilot
    features to the share of correct samples; buckets are quantiles of predicted difficulty; each
    bucket's curve is measured over the (stop rule x cap) grid (see ``_bucket_curves``).

    Args:
        levels: Give-up checks offered (``give_up_levels``, from the whole table as ``thresholds``).
        model: A difficulty model learned earlier (the ``learned`` estimator); None: fit one here.
        keep_order: [table rows] bool: rows replayed in their recorded order only (see ``_reordered``).
        round_size: None for replay (a query stops at the exact sample its rule fires, the prompt is
            paid once). A live run samples in rounds: stop points are rounded up to the round's end
            (``round_draws``) and token costs pay the prompt once per round (``round_cumcost``), or once per
            sample with ``prompt_per_sample`` (samples that stop at a failed step are requests of their own).

    Returns:
        (model, bucket edges, per-bucket ``BucketCalibration``, per-bucket allocator options,
        [rows] predicted difficulty of the reordered calibration rows, the reordered table).
    """
    cal = _reordered(table, deep_rows, cfg.calibration_orders, keep_order=keep_order)
    p_n = np.minimum(pilot, cal.n_available)
    cal_feats = pilot_features(cal, pilot, p_n, names)[0]
    success = cal.correct.sum(axis=1) / np.maximum(cal.n_available, 1)  # calibration rows only
    if model is None:  # weighted by samples: the binomial likelihood, exact when calibration stopped rows early
        model = fit_difficulty_model(cal_feats, success, names, weights=cal.n_available)
    elif list(model.names) != list(names):
        raise ValueError(f"the learned difficulty model reads {list(model.names)}; this run has {list(names)}")
    cal_stops = _stop_rules(cal, stop_signal_and_thresholds(cal, objective, cfg, thresholds)[0], thresholds, pilot, cfg, levels)[0]
    cost = None
    if round_size is not None:
        cal_stops = round_draws(cal_stops, p_n[None, :], round_size, cal.n_available[None, :])
        cost = round_cumcost(cal, unit, 1, 1) if prompt_per_sample else round_cumcost(cal, unit, pilot, round_size)
    difficulty = 1.0 - model.predict(cal_feats)
    labels = [rule_label(*spec) for spec in rule_specs(thresholds, pilot, cal.shape[1], cfg.give_up_at, levels)]
    edges, curves, options = _bucket_curves(cal, len(deep_rows), unit, objective, cfg, difficulty, cal_stops,
                                            labels, pilot, cost)
    return model, edges, curves, options, difficulty, cal
