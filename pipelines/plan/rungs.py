"""Extra rungs of the adaptive ladder: ``think`` and ``search`` after the pilot.

The adaptive plan's sampling options (stop rule x sample cap) are measured by replaying the calibration
rows' K samples. A ``think`` or ``search`` rung cannot be replayed from those samples: calibration runs the
rung's own row program on a sub-slice of the calibration rows (``tierwise.jobs.rung_calibration``), and this module
turns those runs into what the allocator needs, on the same footing as the sampling options:

- ``rung_measures``: per row, the rung's cost (everything it sent: prompt + output tokens, or samples) and
  the score of its final answer under the objective, labelled as the calibration samples are (gold, else
  verifier pass, else the calibration row's K-sample majority answer).
- ``rung_options``: per difficulty bucket, one allocator ``Option`` per rung (expected cost beyond the
  pilot, expected score), from the measured rows whose pilot places them in or nearest the bucket.
- ``RungRun``: a live row's rung in progress; ``AdaptiveTier`` hands the row to the rung's row program
  after the pilot. The row's answer is the rung's own selection (the pilot's samples stay in the row's
  accounting, not in its vote): what calibration measured is what the row gets.

Pure polars / numpy: no Ray, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tierwise.pipelines.plan.allocation import Option
from tierwise.pipelines.plan.calibration import assign_buckets
from tierwise.pipelines.plan.objectives import OBJECTIVES
from tierwise.pipelines.replay.table import BUDGET_UNITS
from tierwise.pipelines.tiers.base import RowState, Tier

RUNGS = ("think", "search")
MEASURE_SCHEMA = {"query_id": pl.String, "rung": pl.String, "cost": pl.Float64, "score": pl.Float64}


@dataclass
class RungRun:
    """A live row's rung after its pilot: the rung's row program and its own view of the row."""

    tier: Tier
    state: RowState


def majority_answers(samples: pl.DataFrame) -> pl.DataFrame:
    """``query_id, majority``: each calibration row's most frequent non-null answer (ties go to the
    answer seen first, as ``answers.vote``); the K-sample label without gold or a verifier."""
    return (samples.filter(pl.col("answer").is_not_null())
            .group_by("query_id", "answer").agg(_n=pl.len(), _first=pl.col("sample_idx").min())
            .sort("query_id", "_n", "_first", descending=[False, True, False])
            .group_by("query_id", maintain_order=True).first()
            .select("query_id", pl.col("answer").alias("majority")))


def rung_measures(output: pl.DataFrame, rung: str, *, objective: str, unit: str = "tokens",
                  gold: pl.DataFrame | None = None, majority: pl.DataFrame | None = None,
                  yield_cap: int = 4, verifier_pass: float = 0.5) -> tuple[pl.DataFrame, str]:
    """Per-row cost and score of one rung's calibration run.

    Args:
        output: The rung run's output rows (tierwise records: ``id``, ``status``, ``answer``,
            ``prompt_tokens``, ``output_tokens``, ``n_samples``, ``sample_answers``, ``verifier_scores``).
            Only ``ok`` rows count: a row the budget skipped (or an error) ran nothing and says nothing
            about the rung; a row the budget stopped part-way counts with what it spent and answered.
        rung: Its name (``think``, ``search``).
        objective: ``accuracy`` (the row's answer is right), ``coverage`` (some answered sample is right) or
            ``verified_yield`` (right answered samples, up to ``yield_cap``, over ``yield_cap``).
        unit: ``tokens`` (prompt + output tokens of every request: what the replica paid) or ``samples``.
        gold: ``id, gold``: a sample is right when its answer equals the row's gold.
        majority: ``query_id, majority`` (``majority_answers``): without gold or verifier scores, a sample is
            right when its answer equals the calibration row's K-sample majority.
        verifier_pass: Without gold, a sample is right when its verifier score reaches this.

    Returns:
        (``query_id, rung, cost, score``, the label source: gold, verifier or majority).

    Raises:
        ValueError: Unknown unit or objective, or nothing to label the samples with.
    """
    if unit not in BUDGET_UNITS or objective not in OBJECTIVES:
        raise ValueError(f"rung_measures: unknown unit {unit!r} or objective {objective!r}")
    output = output.filter(pl.col("status") == "ok") if "status" in output.columns else output
    if output.is_empty():
        return pl.DataFrame(schema=MEASURE_SCHEMA), "gold" if gold is not None else "verifier"
    scored = "verifier_scores" in output.columns and output["verifier_scores"].is_not_null().any()
    rows = _rung_rows(output, scored)
    source, ref = _label_reference(gold, scored, majority)
    if ref is not None:
        rows = rows.join(ref, on="query_id", how="left", maintain_order="left")
    rows = rows.join(_rights_per_row(rows, ref is not None, scored, verifier_pass),
                     on="query_id", how="left", maintain_order="left").with_columns(
        pl.col("n_right").fill_null(0), pl.col("answer_right").fill_null(False))
    return rows.select("query_id", pl.lit(rung).alias("rung"), pl.col(unit).alias("cost"),
                       _objective_score(objective, yield_cap).alias("score")), source


def _rung_rows(output: pl.DataFrame, scored: bool) -> pl.DataFrame:
    """``query_id, answer, tokens, samples, sample_answers`` (and ``scores`` when verifier-scored) per row."""
    return output.select(
        pl.col("id").cast(pl.String).alias("query_id"), "answer",
        (pl.col("prompt_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0)).cast(pl.Float64).alias("tokens"),
        pl.col("n_samples").fill_null(0).cast(pl.Float64).alias("samples"),
        pl.col("sample_answers").fill_null([]),
        *([pl.col("verifier_scores").fill_null([]).alias("scores")] if scored else []))


def _label_reference(gold: pl.DataFrame | None, scored: bool,
                     majority: pl.DataFrame | None) -> tuple[str, pl.DataFrame | None]:
    """The label source (gold, else verifier, else majority) and its ``query_id, ref`` answers (None: verifier)."""
    if gold is not None:
        return "gold", gold.select(pl.col("id").cast(pl.String).alias("query_id"),
                                   pl.col("gold").cast(pl.String).str.strip_chars().alias("ref"))
    if scored:
        return "verifier", None
    if majority is not None:
        return "majority", majority.select("query_id", pl.col("majority").alias("ref"))
    raise ValueError("rung_measures: no gold, verifier scores or majority answers to label samples with")


def _rights_per_row(rows: pl.DataFrame, has_ref: bool, scored: bool, verifier_pass: float) -> pl.DataFrame:
    """``query_id, n_right, answer_right``: right answered samples per row, and whether the row's answer is one."""
    per_sample = [pl.col("sample_answers").alias("s_answer")] + ([pl.col("scores").alias("s_score")] if scored else [])
    samples = rows.select("query_id", "answer", *(["ref"] if has_ref else []), *per_sample)
    samples = samples.explode([c.meta.output_name() for c in per_sample]).filter(pl.col("s_answer").is_not_null())
    right = (pl.col("s_answer") == pl.col("ref")) if has_ref else (pl.col("s_score") >= verifier_pass)
    return samples.with_columns(right=right.fill_null(False)).group_by("query_id").agg(
        n_right=pl.col("right").sum(),
        answer_right=(pl.col("right") & (pl.col("s_answer") == pl.col("answer"))).any())


def _objective_score(objective: str, yield_cap: int) -> pl.Expr:
    """A row's score under the objective, from its ``n_right`` and ``answer_right``."""
    if objective == "accuracy":
        return pl.col("answer_right").cast(pl.Float64)
    if objective == "coverage":
        return (pl.col("n_right") > 0).cast(pl.Float64)
    return pl.min_horizontal(pl.col("n_right"), yield_cap).cast(pl.Float64) / yield_cap


def rung_options(measures: pl.DataFrame, query_ids: pl.Series, difficulty: np.ndarray, edges: np.ndarray,
                 min_rows: int = 8, pilot_score: np.ndarray | None = None,
                 reference: list[float] | None = None) -> list[dict[str, tuple[Option, int]]]:
    """Per bucket, one allocator option per measured rung, with the rows it was measured on.

    Calibration replays each calibration row in several sample orders (``difficulty`` holds one prediction
    per row and order, order-major, as ``replay_adaptive.calibrate_buckets`` returns it), so a row's pilot
    may place it in different buckets in different orders; each (row, order) counts once. A bucket's option
    averages the measured (row, order) pairs in the bucket; when fewer than ``min_rows`` rows' worth fall
    there, the pairs nearest the bucket's median difficulty (over all calibration pairs) fill it up.

    Paired with the pilot: the stop rules' curve of a bucket is measured on more calibration rows than a
    rung (a sub-slice), so a rung's raw mean would compare a few rows against many. With ``pilot_score`` and
    ``reference``, a rung's score is the bucket's pilot-only score plus the rung's mean gain over the pilot
    on its own rows (clipped to [0, 1]): both options then stand on the same rows' baseline.

    Args:
        measures: ``query_id, rung, cost, score`` (``rung_measures``, several rungs stacked).
        query_ids: [Q] the calibration rows, in the order ``difficulty`` repeats them.
        difficulty: [Q * orders] predicted difficulty.
        edges: Inner bucket edges.
        min_rows: Fewest measured rows a bucket's option averages over (fewer if fewer were measured).
        pilot_score: [Q * orders] each pair's score with its pilot samples alone (the calibration replay).
        reference: Per bucket, the pilot-only option's score (the curve's cost-0 point).

    Returns:
        Per bucket, ``{rung: (Option(rung, cost, score), rows measured)}``; empty dicts without measures.
    """
    n_buckets, q = len(edges) + 1, len(query_ids)
    out: list[dict[str, tuple[Option, int]]] = [{} for _ in range(n_buckets)]
    if measures.is_empty() or q == 0:
        return out
    orders = max(len(difficulty) // q, 1)
    bucket_all = assign_buckets(difficulty, edges)
    centers = [float(np.median(difficulty[bucket_all == b])) if (bucket_all == b).any() else np.nan
               for b in range(n_buckets)]
    index = pl.DataFrame({"query_id": query_ids.cast(pl.String), "_i": np.arange(q)})
    for rung in measures["rung"].unique(maintain_order=True).to_list():
        m = measures.filter(pl.col("rung") == rung).join(index, on="query_id", how="inner", maintain_order="left")
        if m.is_empty():
            continue
        pairs = (m["_i"].to_numpy()[None, :] + q * np.arange(orders)[:, None]).ravel()
        cost = np.tile(m["cost"].to_numpy(), orders)
        score = np.tile(m["score"].to_numpy(), orders)
        d = difficulty[pairs]
        bucket = bucket_all[pairs]
        want = min(min_rows, m.height) * orders
        for b in range(n_buckets):
            members = np.flatnonzero(bucket == b)
            if members.size < want:
                center = centers[b] if np.isfinite(centers[b]) else float(np.median(d))
                members = np.argsort(np.abs(d - center), kind="stable")[:want]
            value = float(score[members].mean())
            if pilot_score is not None and reference is not None:
                value = float(np.clip(reference[b] + value - pilot_score[pairs[members]].mean(), 0.0, 1.0))
            out[b][rung] = (Option(rung, float(cost[members].mean()), value), int(np.unique(pairs[members] % q).size))
    return out
