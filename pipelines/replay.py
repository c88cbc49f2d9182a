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
seconds. The adaptive policy itself lives in ``pipelines.sequential`` (label-free: it never reads
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO

import numpy as np
import polars as pl

from pipelines.answers import verifier_weights
from pipelines.errors import InputError
from pipelines.replay_adaptive import AdaptiveConfig
from pipelines.stopping import PrefixVotes, prefix_votes

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = {"query_id": "string", "sample_idx": "integer", "answer": "string", "correct": "boolean",
                    "output_tokens": "integer"}
OPTIONAL_COLUMNS = {"prompt_tokens": "integer", "mean_logprob": "float", "verifier_score": "float",
                    "difficulty_hint": "float", "judge_tokens": "integer"}
ROW_FEATURE_PREFIX = "feature_"  # per-query float columns: difficulty signals known before sampling
BUDGET_UNITS = ("samples", "tokens")
OBJECTIVES = ("accuracy", "coverage", "verified_yield")
DEFAULT_YIELD_CAP = 4  # verified_yield: verified samples kept per query
POLICIES = ("adaptive", "uniform")


class SamplesSchemaError(InputError, ValueError):
    """The samples table lacks required columns, has wrong types, or has invalid values."""


def _kind(dtype: pl.DataType) -> str:
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum | pl.Categorical):
        return "string"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    return "null" if dtype == pl.Null else str(dtype)


def _check_schema(schema: Mapping[str, pl.DataType]) -> list[str]:
    """Validate column names and types; return the columns replay reads."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    wrong = []
    for name, want in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}.items():
        if name not in schema:
            continue
        got = _kind(schema[name])
        ok = got == want or (want == "float" and got == "integer") or (name == "answer" and got == "null")
        if not ok:
            wrong.append(f"{name} (expected {want}, got {schema[name]})")
    if missing or wrong:
        parts = ([f"missing required columns: {', '.join(missing)}"] if missing else []) + (
            [f"wrong types: {'; '.join(wrong)}"] if wrong else [])
        raise SamplesSchemaError("samples table: " + "; ".join(parts))
    features = [c for c in schema if c.startswith(ROW_FEATURE_PREFIX)]
    bad = [f"{c} (expected float, got {schema[c]})" for c in features if _kind(schema[c]) not in ("float", "integer")]
    if bad:
        raise SamplesSchemaError("samples table: wrong types: " + "; ".join(bad))
    return [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in schema] + features


def validate_samples(samples: pl.DataFrame) -> pl.DataFrame:
    """Check a samples frame and cast it to canonical types (only the columns replay uses).

    Raises:
        SamplesSchemaError: Missing/mistyped columns, nulls in query_id/sample_idx/correct/output_tokens,
            negative token counts, or a repeated (query_id, sample_idx).
    """
    cols = _check_schema(samples.schema)
    df = samples.select(cols)
    nulls = [c for c in ("query_id", "sample_idx", "correct", "output_tokens") if df[c].null_count()]
    if nulls:
        raise SamplesSchemaError(f"samples table: nulls in required columns: {', '.join(nulls)}")
    casts = {"query_id": pl.String, "sample_idx": pl.Int64, "answer": pl.String, "correct": pl.Boolean,
             "output_tokens": pl.Int64, "prompt_tokens": pl.Int64, "mean_logprob": pl.Float32,
             "verifier_score": pl.Float32, "difficulty_hint": pl.Float64, "judge_tokens": pl.Int64}
    df = df.with_columns(pl.col(c).cast(casts.get(c, pl.Float64)) for c in cols)
    bad = [c for c in ("output_tokens", "prompt_tokens", "judge_tokens") if c in cols and (df[c].fill_null(0) < 0).any()]
    if bad:
        raise SamplesSchemaError(f"samples table: negative token counts in: {', '.join(bad)}")
    return df


def load_samples(source: str | os.PathLike | IO[bytes]) -> pl.DataFrame:
    """Read and validate a samples Parquet file, only the columns replay uses.

    Args:
        source: A local path, a URI polars reads natively (s3:// with ambient credentials), or an open
            binary file (e.g. from ``pipelines.io.filesystem``, for configured object stores).

    Raises:
        SamplesSchemaError: See ``validate_samples``.
        FileNotFoundError: No such file.
    """
    src = str(source) if isinstance(source, str | os.PathLike) else source
    schema = pl.read_parquet_schema(src)
    if not isinstance(src, str):
        src.seek(0)
    return validate_samples(pl.read_parquet(src, columns=_check_schema(schema)))


@dataclass
class ReplayTable:
    """A samples table as dense [queries, samples] arrays in generation order (see ``build_table``).

    Attributes:
        query_ids: [Q] query ids.
        codes: [Q, S] int64 answer codes (equal answers, equal codes).
        valid: [Q, S] bool, sample exists and its answer parsed.
        n_available: [Q] samples recorded per query.
        correct: [Q, S] bool gold; policies only read it on calibration rows.
        output_tokens: [Q, S] float64 (0 where no sample).
        prompt_tokens: [Q] float64 or None.
        judge_tokens: [Q, S] float64 (0 where no sample) or None: what judging each sample cost.
        mean_logprob, verifier_score: [Q, S] float32 (NaN unknown) or None.
        difficulty_hint: [Q] float64 (NaN unknown) or None.
        row_features: name -> [Q] float64 (NaN unknown): the ``feature_*`` columns, per query.
    """

    query_ids: pl.Series
    codes: np.ndarray
    valid: np.ndarray
    n_available: np.ndarray
    correct: np.ndarray
    output_tokens: np.ndarray
    prompt_tokens: np.ndarray | None = None
    judge_tokens: np.ndarray | None = None
    mean_logprob: np.ndarray | None = None
    verifier_score: np.ndarray | None = None
    difficulty_hint: np.ndarray | None = None
    row_features: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def votes(self) -> PrefixVotes:
        """Vote state after each prefix; the leader is verifier-weighted when verifier scores exist
        (sharpened scores as weights, ``pipelines.answers.verifier_weights``, as live selection does)."""
        if "votes" not in self._cache:
            w = None if self.verifier_score is None else verifier_weights(self.verifier_score)
            self._cache["votes"] = prefix_votes(self.codes, self.valid, w)
        return self._cache["votes"]

    def cumcost(self, unit: str) -> np.ndarray:
        """[Q, S + 1] float64 cost of drawing the first k samples (column k), in ``unit``."""
        if unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, got {unit!r}")
        key = ("cumcost", unit)
        if key not in self._cache:
            q, s = self.shape
            out = np.zeros((q, s + 1))
            if unit == "samples":
                out[:, 1:] = np.minimum(np.arange(1, s + 1)[None, :], self.n_available[:, None])
            else:
                per_sample = self.output_tokens if self.judge_tokens is None else self.output_tokens + self.judge_tokens
                np.cumsum(per_sample, axis=1, out=out[:, 1:])
                if self.prompt_tokens is not None:
                    out[:, 1:] += np.where(self.n_available > 0, self.prompt_tokens, 0.0)[:, None]
            self._cache[key] = out
        return self._cache[key]

    def scores(self, objective: str, yield_cap: int = DEFAULT_YIELD_CAP) -> np.ndarray:
        """[Q, S + 1] the query's score after drawing k samples (column k): bool for accuracy and
        coverage (scored correct?); float64 ``min(correct among the first k, yield_cap) / yield_cap``
        for verified_yield (``yield_cap`` is read only there).

        Raises:
            ValueError: Unknown objective, or ``yield_cap < 1`` for verified_yield.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "verified_yield":
            if yield_cap < 1:
                raise ValueError(f"yield_cap must be >= 1, got {yield_cap}")
            key = ("scores", objective, int(yield_cap))
            if key not in self._cache:
                out = np.zeros((self.shape[0], self.shape[1] + 1))
                np.cumsum(self.correct, axis=1, out=out[:, 1:])
                self._cache[key] = np.minimum(out, yield_cap) / yield_cap
            return self._cache[key]
        key = ("scores", objective)
        if key not in self._cache:
            q, s = self.shape
            out = np.zeros((q, s + 1), dtype=bool)
            if objective == "accuracy":
                lead = self.votes().leader.astype(np.int64)
                out[:, 1:] = np.take_along_axis(self.correct, np.maximum(lead, 0), axis=1) & (lead >= 0)
            else:
                out[:, 1:] = np.logical_or.accumulate(self.correct, axis=1)
            self._cache[key] = out
        return self._cache[key]

    def split_hash(self, seed: int) -> np.ndarray:
        """[Q] seeded hash in [0, 1): calibration split (below the fraction) and processing order."""
        from pipelines.calibration import stable_hash01

        key = ("hash", seed)
        if key not in self._cache:
            self._cache[key] = stable_hash01(self.query_ids, seed)
        return self._cache[key]


def _group_rows(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row order that groups samples by query in ``sample_idx`` order, and "same query as the row
    before" flags in that order. Rows recorded grouped and in order (the usual case) are not moved;
    otherwise only a 64-bit hash of query_id is sorted (sorting the strings is ~10x slower at 16M rows).
    A second independent hash must be constant within each group, so a collision cannot merge queries.
    """
    h1 = df["query_id"].hash(seed=0x7197).to_numpy()
    idx = df["sample_idx"].to_numpy()
    n = len(df)
    perm = np.arange(n)
    starts = np.flatnonzero(np.r_[True, h1[1:] != h1[:-1]]) if n else np.zeros(0, np.int64)
    in_order = np.r_[True, idx[1:] > idx[:-1]] if n else np.zeros(0, bool)
    run_keys = np.sort(h1[starts])
    if (run_keys[1:] == run_keys[:-1]).any() or not in_order[np.r_[True, h1[1:] == h1[:-1]]].all():
        by_idx = np.argsort(idx, kind="stable")  # two stable sorts beat np.lexsort ~5x here
        perm = by_idx[np.argsort(h1[by_idx], kind="stable")]
    hs = h1[perm]
    same_q = np.r_[False, hs[1:] == hs[:-1]] if n else np.zeros(0, bool)
    h2 = df["query_id"].hash(seed=0x51AB).to_numpy()[perm]
    if (same_q & np.r_[False, h2[1:] != h2[:-1]]).any():
        raise SamplesSchemaError("samples table: query_id hash collision; rename a query id")  # ~never
    return perm, same_q


def build_table(samples: pl.DataFrame) -> ReplayTable:
    """Validate a samples frame and lay it out as dense [queries, samples] arrays.

    Raises:
        SamplesSchemaError: See ``validate_samples``.
    """
    df = validate_samples(samples)
    perm, same_q = _group_rows(df)
    dup = same_q & np.r_[False, df["sample_idx"].to_numpy()[perm][1:] == df["sample_idx"].to_numpy()[perm][:-1]]
    if dup.any():
        example = df["query_id"][int(perm[np.argmax(dup)])]
        raise SamplesSchemaError(f"samples table: repeated (query_id, sample_idx), e.g. {example!r}")
    new = ~same_q
    starts = np.flatnonzero(new)
    qi = np.cumsum(new) - 1
    pos = np.arange(len(df)) - starts[qi]
    q, s = len(starts), int(pos.max()) + 1 if len(df) else 0
    flat = qi * s + pos

    def dense(values: np.ndarray, fill, dtype) -> np.ndarray:
        out = np.full(q * s, fill, dtype=dtype)
        out[flat] = values[perm]
        return out.reshape(q, s)

    answer = df["answer"]
    codes = dense(answer.hash(seed=0x5EED).to_numpy().view(np.int64), 0, np.int64)
    valid = dense(answer.is_not_null().to_numpy(), False, bool)
    first = perm[starts]  # row of each query's first sample, for per-query columns
    has = set(df.columns)
    return ReplayTable(
        query_ids=df["query_id"].gather(first),
        codes=codes,
        valid=valid,
        n_available=np.diff(np.append(starts, len(df))).astype(np.int64),
        correct=dense(df["correct"].to_numpy(), False, bool),
        output_tokens=dense(df["output_tokens"].to_numpy(), 0.0, np.float64),
        prompt_tokens=np.nan_to_num(df["prompt_tokens"].to_numpy()[first].astype(np.float64))
        if "prompt_tokens" in has else None,
        judge_tokens=dense(df["judge_tokens"].fill_null(0).to_numpy(), 0.0, np.float64) if "judge_tokens" in has else None,
        mean_logprob=dense(df["mean_logprob"].to_numpy(), np.nan, np.float32) if "mean_logprob" in has else None,
        verifier_score=dense(df["verifier_score"].to_numpy(), np.nan, np.float32) if "verifier_score" in has else None,
        difficulty_hint=df["difficulty_hint"].to_numpy()[first].astype(np.float64) if "difficulty_hint" in has else None,
        row_features={c: df[c].to_numpy()[first].astype(np.float64) for c in df.columns
                      if c.startswith(ROW_FEATURE_PREFIX)},
    )


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
    from pipelines.sequential import SequentialConfig, rows_from_table, sequential_draws

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
