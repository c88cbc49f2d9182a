"""A samples table: its schema, its loading and validation, and its dense [queries, samples] layout.

A samples table holds many recorded samples per query (``tierwise sample`` writes one from a run;
any recorded samples in this schema will do). ``build_table`` lays it out as the arrays a replay
draws from, in ``sample_idx`` order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import polars as pl

from tierwise.pipelines.data.errors import InputError
from tierwise.pipelines.plan.objectives import OBJECTIVES
from tierwise.pipelines.plan.stopping import PrefixVotes, prefix_votes
from tierwise.pipelines.tiers.answers import verifier_weights

REQUIRED_COLUMNS = {"query_id": "string", "sample_idx": "integer", "answer": "string", "correct": "boolean",
                    "output_tokens": "integer"}
OPTIONAL_COLUMNS = {"prompt_tokens": "integer", "mean_logprob": "float", "verifier_score": "float",
                    "difficulty_hint": "float", "judge_tokens": "integer"}
BUDGET_UNITS = ("samples", "tokens")  # what a replay budget counts
DEFAULT_YIELD_CAP = 4  # verified_yield: verified samples kept per query
ROW_FEATURE_PREFIX = "feature_"  # per-query float columns: difficulty signals known before sampling


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
            binary file (e.g. from ``tierwise.pipelines.data.io.filesystem``, for configured object stores).

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
        (sharpened scores as weights, ``tierwise.pipelines.tiers.answers.verifier_weights``, as live selection does)."""
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
        from tierwise.pipelines.plan.calibration import stable_hash01

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
