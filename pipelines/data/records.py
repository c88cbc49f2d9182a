"""The output contract: one record per input row, with full accounting."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

# skipped_deadline: the job's deadline (budget.deadline / max_wall_s) came before the row ran.
STATUSES = ("ok", "skipped_budget", "skipped_deadline", "error")
# Why an error row failed: "row" (the row's own input: a null or over-long prompt, a generation
# that failed for this row) or "job" (not the row: its part failed after retries, the engine
# died, storage, the job's configuration). A part with "job" rows is redone on resume.
ERROR_CAUSES = ("row", "job")

OUTPUT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("answer", pa.string()),
    pa.field("status", pa.string(), nullable=False),   # ok | skipped_budget | skipped_deadline | error
    pa.field("error", pa.string()),
    pa.field("error_cause", pa.string()),              # row | job for error rows, else null
    pa.field("tier", pa.string()),
    pa.field("n_samples", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cost", pa.float64()),                    # in the budget's unit, the judge's share included
    # The row's share of what lost attempts at its part spent (a replica or a driver lost
    # mid-part: tokens spent that no committed row carried), included in cost, so that the
    # output's costs add up to the ledger's spend; 0 when none (``with_lost_cost``).
    pa.field("lost_cost", pa.float64()),
    # An llm_judge verifier's compute for the row (prompt + output tokens; null without a
    # judge) and, per reason, the samples that got no verdict of the judge's own:
    # budget / too_long / error (score null), unparseable (score 0). See tierwise.pipelines.tiers.judge.
    pa.field("judge_tokens", pa.int64()),
    pa.field("judge_issues", pa.map_(pa.string(), pa.int32())),
    # A pure verifier's calls that gave no score, per reason: timeout / error (score null).
    pa.field("verifier_issues", pa.map_(pa.string(), pa.int32())),
    pa.field("difficulty", pa.float64()),              # null until estimated
    pa.field("bucket", pa.int32()),
    pa.field("votes", pa.map_(pa.string(), pa.float64())),
    pa.field("agreement", pa.float64()),               # share of votes for the answer
    pa.field("verifier_scores", pa.list_(pa.float64())),
    pa.field("mean_logprob", pa.float64()),
    pa.field("stop_reason", pa.string()),
    # Samples stopped at their first failed step (policy.abort_failed_steps; null when off).
    pa.field("aborted_samples", pa.int32()),
    # Per-sample accounting, in generation order: what `tierwise replay` consumes.
    pa.field("sample_answers", pa.list_(pa.string())),
    pa.field("sample_output_tokens", pa.list_(pa.int64())),
    pa.field("sample_mean_logprobs", pa.list_(pa.float64())),
    pa.field("samples", pa.list_(pa.string())),        # texts, kept only when output.keep_samples
    pa.field("reasoning", pa.list_(pa.string())),      # per-sample thoughts (with `reasoning`), null when none
    # A structured choice's labels as the model weighs them at its first token (one free pass: a
    # difficulty signal; tierwise.pipelines.tiers.answers.label_distribution); null without a choice.
    pa.field("label_probs", pa.map_(pa.string(), pa.float64())),
    pa.field("correct", pa.bool_()),                   # null unless a gold column is given
])


def empty_record(row_id: str, status: str, error: str | None = None, prompt_tokens: int | None = None,
                 cause: str = "row") -> dict:
    """A record for a row that produced no samples (budget skip or row error); ``cause``
    (``ERROR_CAUSES``) is recorded for error rows."""
    if cause not in ERROR_CAUSES:
        raise ValueError(f"error cause {cause!r} is not one of {ERROR_CAUSES}")
    return {"id": row_id, "status": status, "error": error, "error_cause": cause if status == "error" else None,
            "n_samples": 0, "prompt_tokens": prompt_tokens, "output_tokens": 0, "cost": 0.0}


def to_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA)


def bulk_table(ids, status: str, errors=None, prompt_tokens=None, correct=None) -> pa.Table:
    """``empty_record`` for many rows at once, columnar: every row ``status`` (cost 0, no samples),
    except the rows with an ``errors`` message, which are row-level ``error`` records.

    Args:
        ids: the rows' ids (strings); errors / prompt_tokens / correct: arrays of the same
            length or None (all null).
    """
    n = len(ids)
    err = pa.nulls(n, pa.string()) if errors is None else pa.array(errors, pa.string())
    is_err = err.is_valid()
    cols = {"id": pa.array(ids, pa.string()),
            "status": pa.compute.if_else(is_err, "error", status),
            "error": err, "error_cause": pa.compute.if_else(is_err, "row", pa.scalar(None, pa.string())),
            "n_samples": pa.repeat(pa.scalar(0, pa.int32()), n), "output_tokens": pa.repeat(pa.scalar(0, pa.int64()), n),
            "cost": pa.repeat(pa.scalar(0.0), n), "lost_cost": pa.repeat(pa.scalar(0.0), n)}
    if prompt_tokens is not None:
        cols["prompt_tokens"] = pa.array(prompt_tokens, pa.int64())
    if correct is not None:
        cols["correct"] = pa.array(correct, pa.bool_())
    return pa.Table.from_arrays([cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in OUTPUT_SCHEMA],
                                schema=OUTPUT_SCHEMA)


def with_lost_cost(table: pa.Table, lost: float) -> pa.Table:
    """``table`` (a part's records) carrying ``lost``, what the part's lost attempts spent,
    spread evenly over its rows: ``lost_cost`` each, added to ``cost``."""
    import pyarrow.compute as pc

    share = lost / table.num_rows if table.num_rows and lost > 0 else 0.0
    shares = pa.repeat(pa.scalar(share, pa.float64()), table.num_rows)
    cost = pc.add(pc.fill_null(table.column("cost"), 0.0), shares) if share else table.column("cost")
    table = table.set_column(table.schema.get_field_index("cost"), "cost", cost)
    return table.set_column(table.schema.get_field_index("lost_cost"), "lost_cost", shares)


def lost_spend(part_spent: float, own_cost: float) -> float:
    """What a part's earlier, lost attempts spent: the ledger's spend on the part less the
    committing attempt's own (float residue of the two sums is no loss)."""
    lost = part_spent - own_cost
    return lost if lost > 1e-9 * abs(part_spent) else 0.0
