"""Turn a run's output into a samples table: one row per recorded sample.

The schema is what ``tierwise replay`` consumes, so any run recorded with enough
samples can be replayed under any policy and budget without a GPU.
"""

from __future__ import annotations

import polars as pl


def output_to_samples(output: pl.DataFrame, gold: pl.DataFrame | None = None) -> pl.DataFrame:
    """Explodes per-row sample lists into ``query_id, sample_idx, answer, correct,
    output_tokens, prompt_tokens, mean_logprob, verifier_score`` and, for a run judged
    by an LLM, ``judge_tokens``: the row's judge tokens shared out over its samples
    (exact total; a judge that answers once per row, ``agree``, is so spread too).

    Args:
        output: tierwise output rows (``status == "ok"`` rows contribute samples).
        gold: ``id, gold`` to grade answers with; ``correct`` is null without it.
    """
    ok = output.filter(pl.col("status") == "ok").with_columns(pl.col("sample_answers").list.len().alias("_k"))
    cols = [pl.col("sample_answers").alias("answer"), pl.col("sample_output_tokens").alias("output_tokens"),
            pl.col("sample_mean_logprobs").alias("mean_logprob")]
    has_scores = ok["verifier_scores"].is_not_null().any()
    if has_scores:
        cols.append(pl.col("verifier_scores").alias("verifier_score"))
    judged = "judge_tokens" in ok.columns and ok["judge_tokens"].is_not_null().any()
    frame = ok.select(
        pl.col("id").alias("query_id"),
        pl.int_ranges(0, pl.col("_k")).alias("sample_idx"),
        *cols,
        # A recording run sends each prompt once (one round of n samples).
        pl.col("prompt_tokens"),
        *([pl.col("judge_tokens").fill_null(0).alias("_judge"), pl.col("_k")] if judged else []),
    )
    frame = frame.explode(["sample_idx", "answer", "output_tokens", "mean_logprob"]
                          + (["verifier_score"] if has_scores else []))
    if judged:  # sample i of k gets judge // k, plus one while i < judge % k
        frame = frame.with_columns(
            judge_tokens=(pl.col("_judge") // pl.col("_k") + (pl.col("sample_idx") < pl.col("_judge") % pl.col("_k"))
                          .cast(pl.Int64)).cast(pl.Int64)).drop("_judge", "_k")
    if gold is not None:
        frame = frame.join(gold.select(pl.col("id").alias("query_id"), pl.col("gold").cast(pl.String)),
                           on="query_id", how="left")
        frame = frame.with_columns(correct=(pl.col("answer") == pl.col("gold")).fill_null(False)).drop("gold")
    else:
        frame = frame.with_columns(correct=pl.lit(None, pl.Boolean))
    return frame.with_columns(pl.col("sample_idx").cast(pl.Int64), pl.col("output_tokens").cast(pl.Int64))
