"""The adaptive (tierwise) replay policy: pilot, calibrate, bucket, allocate, stop early.

1. Pilot: every query draws ``pilot_samples`` samples. Their agreement, parse rate, length, mean
   log-prob and verifier score, plus ``difficulty_hint``, are its cheap difficulty signals.
2. Calibrate: calibration-split queries (in seeded-hash order, up to ``calibration_share`` of the
   budget) draw every recorded sample. On them, gold may be read: a logistic model maps the signals to
   success (so the hint's unknown scale is learned), quantiles of predicted difficulty form buckets,
   and each bucket gets a curve: mean score vs mean extra cost for every option (an early-stop
   threshold on P(leader is the mode), and a sample cap), fitted by its least concave majorant.
3. Allocate: the shared allocator (``pipelines.allocation``) picks options per bucket for the rest
   of the budget; buckets with a flat curve (already certain, or hopeless) get no more samples.
   The budget is paced: re-allocated before each chunk of queries from what was actually spent.
4. Leftover after every bucket reaches its measured peak extends contested queries in buckets that
   showed headroom (see ``_extend_contested``), since small calibration sets miss small late gains.

Gold (``correct``) is read only on calibration rows (and by the report, after all decisions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.allocation import BucketOptions, Option, allocate
from pipelines.calibration import BucketCalibration, assign_buckets, fit_curve, fit_difficulty_model, quantile_edges
from pipelines.stopping import first_stop

if TYPE_CHECKING:
    from pipelines.replay import ReplayTable


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the adaptive (tierwise) policy.

    Attributes:
        pilot_samples: Samples every query gets first; their agreement, log-probs, verifier scores and
            lengths (plus ``difficulty_hint``) estimate its difficulty.
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
        verifier_quantiles: For coverage with a verifier: stop thresholds at these quantiles of scores.
        pacing_rounds: The remaining budget is re-allocated before each of this many query chunks,
            from the costs actually spent so far.
    """

    pilot_samples: int = 2
    n_buckets: int = 5
    min_bucket_queries: int = 60
    calibration_share: float = 0.15
    max_calibration_queries: int = 2000
    min_calibration_queries: int = 40
    stop_thresholds: tuple[float, ...] = (0.8, 0.95, 0.99, float("inf"))
    n_caps: int = 8
    verifier_quantiles: tuple[float, ...] = (0.5, 0.75, 0.9, 0.97)
    pacing_rounds: int = 8


def _pilot_features(table: ReplayTable, pilot: int, p_n: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[Q, k] difficulty signals visible after the pilot samples (never reads ``correct``)."""
    rows = np.arange(table.shape[0])
    denom = np.maximum(p_n, 1)

    def pilot_mean(x: np.ndarray) -> np.ndarray:
        part = x[:, :pilot]
        known = ~np.isnan(part)
        n = known.sum(axis=1)
        return np.where(n > 0, np.where(known, part, 0).sum(axis=1) / np.maximum(n, 1), np.nan)

    cols = {"agreement": table.votes().top[rows, np.maximum(p_n - 1, 0)] / denom,
            "parsed": table.valid[:, :pilot].sum(axis=1) / denom,
            "log_tokens": np.log1p(table.output_tokens[:, :pilot].sum(axis=1) / denom)}
    if table.mean_logprob is not None:
        cols["mean_logprob"] = pilot_mean(table.mean_logprob)
    if table.verifier_score is not None:
        cols["verifier_score"] = pilot_mean(table.verifier_score)
    if table.difficulty_hint is not None:
        cols["difficulty_hint"] = table.difficulty_hint
    return np.column_stack(list(cols.values())).astype(np.float64), list(cols)


def _stop_signal(table: ReplayTable, objective: str, cfg: AdaptiveConfig) -> tuple[np.ndarray, tuple[float, ...]]:
    """[Q, S] signal after each prefix and the thresholds offered (see module docstring)."""
    if objective == "coverage" and table.verifier_score is not None:
        v = table.verifier_score
        signal = np.maximum.accumulate(np.where(np.isnan(v), -np.inf, v), axis=1)
        return signal, (*np.nanquantile(v, cfg.verifier_quantiles).tolist(), float("inf"))
    return table.votes().mode_probability(), cfg.stop_thresholds


def _caps(pilot: int, width: int, cfg: AdaptiveConfig) -> np.ndarray:
    return np.unique(np.round(np.geomspace(max(pilot, 1), max(width, 1), cfg.n_caps)).astype(np.int64))


def _grid(n_thresholds: int, caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Option grid: (threshold index, cap) for every pair."""
    return np.repeat(np.arange(n_thresholds), len(caps)), np.tile(caps, n_thresholds)


def _bucket_curves(table: ReplayTable, unit: str, objective: str, cfg: AdaptiveConfig, deep: np.ndarray,
                   deep_rows: np.ndarray, difficulty: np.ndarray, stops: np.ndarray, thresholds: tuple[float, ...],
                   pilot: int, p_n: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Buckets by difficulty quantiles of calibration queries, and each bucket's fitted curve.

    A bucket's curve is measured on the ``min_bucket_queries`` (or more) calibration queries nearest
    its difficulty, so buckets can be finer than the calibration set would allow with disjoint bins.

    Returns:
        ([Q] bucket ids, per-bucket ``BucketCalibration``, per-bucket allocator options).
    """
    q, s = table.shape
    n_av, cost, score_tab = table.n_available, table.cumcost(unit), table.scores(objective)
    window = max(cfg.min_bucket_queries, len(deep_rows) // max(cfg.n_buckets, 1))
    edges = quantile_edges(difficulty[deep_rows], min(cfg.n_buckets, max(1, 2 * len(deep_rows) // window)))
    bucket = assign_buckets(difficulty, edges)
    by_difficulty = deep_rows[np.argsort(difficulty[deep_rows], kind="stable")]
    rank_bucket = bucket[by_difficulty]
    caps = _caps(pilot, s, cfg)
    grid_t, grid_c = _grid(len(thresholds), caps)
    labels = [f"stop>={thresholds[t]:.3g},cap={c}" for t, c in zip(grid_t, grid_c)]
    curves, options = [], []
    for b in range(len(edges) + 1):
        members = np.flatnonzero(rank_bucket == b)
        mid = (members[0] + members[-1]) // 2 if members.size else 0
        lo = int(np.clip(mid - window // 2, 0, max(len(by_difficulty) - window, 0)))
        r = by_difficulty[lo : lo + window]
        n = np.minimum(np.minimum(stops[:, r][:, :, None], caps[None, None, :]), n_av[r][None, :, None])
        x = (cost[r[None, :, None], n] - cost[r, p_n[r]][None, :, None]).mean(axis=1).ravel()
        y = score_tab[r[None, :, None], n].mean(axis=1).ravel()  # calibration rows only
        curve = fit_curve(x, y, labels)
        curves.append(BucketCalibration(b, len(r), int((bucket[~deep] == b).sum()), curve))
        options.append(tuple(Option(str(i), x[i], y[i]) for i in curve.hull))
    return bucket, curves, options


def adaptive_draws(table: ReplayTable, budget: float, unit: str, objective: str, calib: np.ndarray,
                   order: np.ndarray, cfg: AdaptiveConfig, say: Callable[[str], None]) -> tuple[np.ndarray, dict, list]:
    """Samples per query for the adaptive policy (pilot, calibrate, bucket, allocate, stop early).

    Gold (``table.correct``) is read only on calibration rows, and by the per-bucket report after
    every decision is made.

    Returns:
        ([Q] samples drawn, details for the JSON report, per-bucket ``BucketCalibration`` list).
    """
    q, s = table.shape
    rows, n_av, cost = np.arange(q), table.n_available, table.cumcost(unit)
    pilot = min(cfg.pilot_samples, s)
    while pilot > 0 and cost[rows, np.minimum(pilot, n_av)].sum() > budget:
        pilot -= 1
    p_n = np.minimum(pilot, n_av)
    remaining = budget - cost[rows, p_n].sum()
    extra_full = cost[rows, n_av] - cost[rows, p_n]
    cal_order = order[calib[order]]
    fits = np.cumsum(extra_full[cal_order]) <= min(remaining, cfg.calibration_share * budget)
    deep_rows = cal_order[: int(np.argmin(fits)) if not fits.all() else len(cal_order)][: cfg.max_calibration_queries]
    if pilot == 0 or len(deep_rows) < cfg.min_calibration_queries:
        say(f"adaptive: budget too small to calibrate ({len(deep_rows)} queries); falling back to uniform")
        from pipelines.replay import uniform_draws

        drawn, n = uniform_draws(table, budget, unit, order)
        return drawn, {"fallback": "uniform", "uniform_n": n}, []
    remaining -= extra_full[deep_rows].sum()
    deep = np.zeros(q, dtype=bool)
    deep[deep_rows] = True

    feats, names = _pilot_features(table, pilot, p_n)
    success = table.correct[deep_rows].sum(axis=1) / np.maximum(n_av[deep_rows], 1)  # calibration rows only
    model = fit_difficulty_model(feats[deep_rows], success, names)
    difficulty = 1.0 - model.predict(feats)
    signal, thresholds = _stop_signal(table, objective, cfg)
    stops = np.stack([first_stop(signal, t, pilot, n_av) for t in thresholds]).astype(np.int64)  # [T, Q]
    bucket, curves, options = _bucket_curves(table, unit, objective, cfg, deep, deep_rows, difficulty, stops,
                                             thresholds, pilot, p_n)
    n_b = len(curves)
    say(f"adaptive: pilot {pilot}, {len(deep_rows):,} calibration queries, {n_b} buckets")
    grid_t, grid_c = _grid(len(thresholds), _caps(pilot, s, cfg))
    score_tab = table.scores(objective)

    drawn = p_n.copy()
    drawn[deep_rows] = n_av[deep_rows]
    rest = order[~deep[order]]
    price, done = None, 0
    for chunk in np.array_split(rest, max(1, cfg.pacing_rounds)):
        if not chunk.size:
            continue
        left = np.bincount(bucket[rest[done:]], minlength=n_b)
        alloc = allocate([BucketOptions(b, int(left[b]), options[b]) for b in range(n_b)], max(remaining, 0.0))
        price = alloc.price if price is None else price
        choice = np.empty(len(chunk), dtype=np.int64)  # index into the (threshold, cap) grid
        cb = bucket[chunk]
        for b in range(n_b):
            sel = np.flatnonzero(cb == b)
            if not sel.size:
                continue
            # The bucket's rows in this chunk take the allocated mix, costliest option first.
            picks = sorted((int(k), v) for k, v in alloc.buckets[b].counts.items() if v)
            picks.sort(key=lambda kv: -curves[b].curve.compute[kv[0]])
            bounds = np.round(np.cumsum([v for _, v in picks]) / left[b] * sel.size)
            which = np.minimum(np.searchsorted(bounds, np.arange(sel.size), side="right"), len(picks) - 1)
            choice[sel] = np.array([k for k, _ in picks])[which]
            chosen = curves[b].chosen
            for k, v in zip(*np.unique(choice[sel], return_counts=True)):
                label = curves[b].curve.labels[k]
                chosen[label] = chosen.get(label, 0) + int(v)
        n = np.clip(np.minimum(stops[grid_t[choice], chunk], grid_c[choice]), p_n[chunk], n_av[chunk])
        extra = cost[chunk, n] - cost[chunk, p_n[chunk]]
        cum = np.cumsum(extra)
        over = np.flatnonzero(cum > remaining + 1e-9 * max(1.0, abs(remaining)))
        if over.size:  # the ledger refuses what the budget cannot pay: cut the first overrun, skip the rest
            i, qi = over[0], chunk[over[0]]
            avail = remaining - (cum[i - 1] if i else 0.0)
            steps = cost[qi, p_n[qi] : n[i] + 1] - cost[qi, p_n[qi]]
            n[i] = p_n[qi] + int(np.searchsorted(steps, avail, side="right")) - 1
            n[i + 1 :] = p_n[chunk[i + 1 :]]
            extra = cost[chunk, n] - cost[chunk, p_n[chunk]]
        drawn[chunk] = n
        remaining -= extra.sum()
        done += len(chunk)
    remaining -= _extend_contested(drawn, rest, bucket, options, stops, signal, thresholds, cost, remaining)

    # Report only (after every decision): realized score per bucket on scored rows.
    hit = score_tab[rows, drawn]
    per_bucket = []
    for b, bc in enumerate(curves):
        m, scored = bucket == b, (bucket == b) & ~calib
        per_bucket.append({"bucket": b, "queries": int(m.sum()), "calibration_queries": bc.n_calibration_rows,
                           "chosen": bc.chosen, "mean_samples": float(drawn[m].mean()) if m.any() else 0.0,
                           "score": float(hit[scored].mean()) if scored.any() else None})
    details = {"pilot_samples": pilot, "calibration_queries_deep": int(len(deep_rows)), "n_buckets": n_b,
               "price": price, "unspent": float(max(remaining, 0.0)), "difficulty_model": model.to_dict(),
               "buckets": per_bucket}
    return drawn, details, curves



def _extend_contested(drawn: np.ndarray, rest: np.ndarray, bucket: np.ndarray, options: list, stops: np.ndarray,
                      signal: np.ndarray, thresholds: tuple[float, ...], cost: np.ndarray, budget: float) -> float:
    """Spend what the allocator left (every bucket at its measured peak) instead of returning it.

    Calibration on few queries cannot see small late gains, so leftover budget extends queries still
    contested (stop signal below the strictest finite threshold) up to that threshold: buckets by
    decreasing measured gain per unit cost (peak vs skip), most contested queries first; buckets whose
    curve never rose get nothing. Updates ``drawn`` in place; returns the cost added.
    """
    finite = [i for i, t in enumerate(thresholds) if np.isfinite(t)]
    if budget <= 0 or not finite or not rest.size:
        return 0.0
    strict = stops[max(finite, key=lambda i: thresholds[i])]
    rate = np.zeros(len(options))
    for b, opts in enumerate(options):
        lo, hi = min(opts, key=lambda o: o.cost), max(opts, key=lambda o: o.score)
        rate[b] = (hi.score - lo.score) / hi.cost if hi.cost > lo.cost else 0.0
    cand = rest[rate[bucket[rest]] > 0]
    target = np.maximum(drawn[cand], strict[cand])
    add = cost[cand, target] - cost[cand, drawn[cand]]
    keep = add > 0
    cand, target, add = cand[keep], target[keep], add[keep]
    by = np.lexsort((signal[cand, np.maximum(drawn[cand] - 1, 0)], -rate[bucket[cand]]))
    fits = np.cumsum(add[by]) <= budget
    take = by[: int(np.argmin(fits)) if not fits.all() else len(by)]
    drawn[cand[take]] = target[take]
    return float(add[take].sum())
