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


TRACE_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def verified_traces(output: pl.DataFrame, conversations: pl.DataFrame, min_score: float = 1.0,
                    markers: tuple[str, str] | None = None) -> pl.DataFrame:
    """An SFT-ready table of a job's verified traces: one row per distinct sample text of an ``ok`` row whose
    verifier score reaches ``min_score``: ``id``, ``sample_idx``, ``messages`` (the row's conversation, then the
    sample as the assistant's turn), ``answer`` (the sample's), ``tokens`` (its output tokens), ``score``.

    Args:
        output: the job's output rows (``samples`` kept: ``output.keep_samples``).
        conversations: ``id, messages`` (the turns each row sent, ``TRACE_MESSAGES``).
        markers: ``(start, end)`` of a job that split reasoning (its ``reasoning`` column): the assistant's
            turn is then the whole sample, ``start + thought + end + answer`` (a sample without a thought: its
            answer).

    Raises:
        ValueError: the output has ok rows but holds no sample texts or no verifier scores.
    """
    ok = output.filter(pl.col("status") == "ok")
    for col, why in (("samples", "output.keep_samples: true"), ("verifier_scores", "a `verifier`")):
        if ok.height and (col not in ok.columns or ok[col].is_null().all()):
            raise ValueError(f"the output holds no {col}: exporting verified traces needs {why}")
    thought = [pl.col("reasoning").alias("thought")] if markers else []
    traces = (ok.select("id", pl.int_ranges(0, pl.col("samples").list.len()).alias("sample_idx"),
                        pl.col("samples").alias("text"), pl.col("sample_answers").alias("answer"),
                        pl.col("sample_output_tokens").alias("tokens"), pl.col("verifier_scores").alias("score"),
                        *thought)
              .explode("sample_idx", "text", "answer", "tokens", "score", *(["thought"] if markers else []))
              .filter(pl.col("score") >= min_score)
              .unique(["id", "text"], keep="first", maintain_order=True))
    if markers:
        whole = pl.concat_str(pl.lit(markers[0]), pl.col("thought"), pl.lit(markers[1]), pl.col("text"))
        traces = traces.with_columns(text=pl.when(pl.col("thought").is_null()).then(pl.col("text")).otherwise(whole))
    turn = pl.struct(pl.lit("assistant").alias("role"), pl.col("text").alias("content"))
    return (traces.join(conversations.select("id", pl.col("messages").cast(TRACE_MESSAGES)), on="id", how="left")
            .select("id", pl.col("sample_idx").cast(pl.Int64),
                    pl.concat_list(pl.col("messages"), turn).alias("messages"),
                    "answer", pl.col("tokens").cast(pl.Int64), "score")
            .sort("id", "sample_idx"))


def write_table(frame: pl.DataFrame, dest: str, storage_options: dict | None = None) -> None:
    """Writes ``frame`` to ``dest`` (local or s3://): JSON lines for ``.jsonl`` / ``.ndjson``, else Parquet."""
    from tierwise.pipelines.data import io

    fs, path = io.filesystem(dest, storage_options)
    if not io._protocol_prefix(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        if io.is_jsonl(path):
            frame.write_ndjson(fh)
        else:
            frame.write_parquet(fh)
