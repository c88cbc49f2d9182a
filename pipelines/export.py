"""An OpenAI-batch-style JSONL export of a job's output (``tierwise export-batch``).

One line per row, as OpenAI's batch output files are laid out: ``custom_id`` (the row's id),
``response`` (``status_code`` 200 and a chat-completion-like ``body`` whose one choice holds the
row's selected answer, with its token usage) for ``ok`` rows, else null and ``error``
(``code``: the row's status, ``message``: why). Built columnar in polars.
"""

from __future__ import annotations

import polars as pl


def batch_lines(output: pl.DataFrame) -> pl.DataFrame:
    """The export's lines (one struct per column) of a job's output rows, in id order."""
    ok = pl.col("status") == "ok"
    usage = pl.struct(pl.col("prompt_tokens").fill_null(0).alias("prompt_tokens"),
                      pl.col("output_tokens").fill_null(0).alias("completion_tokens"),
                      (pl.col("prompt_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0))
                      .alias("total_tokens"))
    choice = pl.struct(pl.lit(0).alias("index"),
                       pl.struct(pl.lit("assistant").alias("role"), pl.col("answer").alias("content"))
                       .alias("message"),
                       pl.lit("stop").alias("finish_reason"))
    body = pl.struct(pl.lit("chat.completion").alias("object"), pl.concat_list(choice).alias("choices"),
                     usage.alias("usage"))
    response = pl.struct(pl.lit(200).alias("status_code"), body.alias("body"))
    error = pl.struct(pl.col("status").alias("code"),
                      pl.col("error").fill_null(pl.lit("skipped: the budget ran out")).alias("message"))
    return output.sort("id").select(
        pl.format("batch_req_{}", pl.col("id")).alias("id"), pl.col("id").alias("custom_id"),
        pl.when(ok).then(response).alias("response"), pl.when(~ok).then(error).alias("error"))
