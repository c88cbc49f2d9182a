"""Synthetic samples tables for replay tests and benchmarks (no model needed).

Each query belongs to one of three populations, the shape that makes allocation matter:

* easy: a single sample is right with p ~ 0.97; one or two samples settle it.
* headroom: p ~ U(0.3, 0.6) and wrong answers spread over distractors, so a majority vote over more
  samples keeps improving.
* hopeless: p = 0 and wrong answers spread widely, so samples disagree and more of them never help.

Output tokens grow with difficulty, ``mean_logprob`` is higher for easier queries (and for correct
samples), ``difficulty_hint`` is a noisy external estimate on an arbitrary scale, and a few answers are
unparseable (null). Everything is generated columnar; 16M rows take a few seconds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

POPULATIONS = ("easy", "headroom", "hopeless")


def synthetic_samples(n_queries: int, n_samples: int, seed: int = 0, mix: tuple[float, float, float] = (0.5, 0.3, 0.2),
                      verifier: bool = False, hint: bool = True, null_rate: float = 0.02) -> pl.DataFrame:
    """A samples table with one row per (query, sample), in the replay schema.

    Args:
        n_queries: Number of queries.
        n_samples: Samples recorded per query.
        seed: RNG seed; the same seed gives the same table.
        mix: Shares of easy, headroom and hopeless queries.
        verifier: Add a ``verifier_score`` column (higher for correct samples, noisy).
        hint: Add a ``difficulty_hint`` column (higher = harder, scale 0..100).
        null_rate: Share of samples whose answer is unparseable (null).

    Returns:
        polars DataFrame with query_id, sample_idx, answer, correct, output_tokens, prompt_tokens,
        mean_logprob, population (for diagnostics; replay ignores it), and the optional columns.
    """
    rng = np.random.default_rng(seed)
    q, s = n_queries, n_samples
    pop = rng.choice(3, size=q, p=np.asarray(mix) / np.sum(mix))
    p = np.select([pop == 0, pop == 1], [rng.beta(30, 1, q), rng.uniform(0.3, 0.6, q)], 0.0)
    correct = rng.random((q, s)) < p[:, None]
    # Distractors: geometric weights over 8 (headroom, easy) or flat over 40 (hopeless).
    n_wrong = np.where(pop == 2, 40, 8)
    geo = rng.geometric(0.45, (q, s))
    flat = rng.integers(1, 41, (q, s))
    wrong = np.where(pop[:, None] == 2, flat, np.minimum(geo, n_wrong[:, None]))
    # The right answer's code is random per query, so answer strings carry no hint of correctness.
    right = rng.integers(0, 50, q)[:, None]
    code = (right + np.where(correct, 0, wrong)) % 50 + rng.integers(0, 10**6, q)[:, None] * 100
    null = rng.random((q, s)) < null_rate
    correct &= ~null
    base_tokens = np.array([180.0, 450.0, 700.0])[pop]
    tokens = np.maximum(8, rng.lognormal(np.log(base_tokens)[:, None], 0.35, (q, s))).astype(np.int32)
    logprob = np.minimum(0.0, -0.15 - 1.2 * (1 - p)[:, None] + 0.25 * correct + rng.normal(0, 0.35, (q, s))).astype(np.float32)
    frame = pl.DataFrame({
        "qi": np.repeat(np.arange(q, dtype=np.int64), s),
        "sample_idx": np.tile(np.arange(s, dtype=np.int32), q),
        "code": code.ravel(),
        "null": null.ravel(),
        "correct": correct.ravel(),
        "output_tokens": tokens.ravel(),
        "prompt_tokens": np.repeat(rng.integers(60, 400, q).astype(np.int32), s),
        "mean_logprob": logprob.ravel(),
        "population": np.repeat(np.array(POPULATIONS)[pop], s),
    })
    extra = {}
    if verifier:
        v = np.where(correct, rng.beta(5, 2, (q, s)), rng.beta(2, 5, (q, s))).astype(np.float32)
        extra["verifier_score"] = pl.Series(v.ravel())
    if hint:
        h = 100 * (1 - p) + rng.normal(0, 15, q)
        extra["difficulty_hint"] = pl.Series(np.repeat(h.astype(np.float32), s))
    return frame.with_columns(
        pl.format("q{}", pl.col("qi")).alias("query_id"),
        pl.when(pl.col("null")).then(None).otherwise(pl.col("code").cast(pl.String)).alias("answer"),
        **extra,
    ).select("query_id", "sample_idx", "answer", "correct", "output_tokens", "prompt_tokens", "mean_logprob",
             *extra.keys(), "population")
