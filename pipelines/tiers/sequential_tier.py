"""The sequential policy's row program, run live on replicas (``tierwise.pipelines.tiers.base``).

A row draws one sample per round. After each it asks ``tierwise.pipelines.plan.sequential.row_priority`` (the same
function replay evaluates over recorded rows) for the priority of one more, from its own samples and the
part's ``PartPlan``: it goes on while the priority is at least the plan's price and it is under the plan's
cap, else it stops (``settled``: verified or its yield met; ``price``; ``cap``; ``budget``: the ledger
refused the next sample).

``row_samples`` builds the policy's ``RowSamples`` from what rows recorded (answers, verifier scores,
tokens), for a live row and for a committed part's output alike, so both drivers price the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tierwise.pipelines.plan.sequential import PartPlan, RowSamples, SequentialConfig, row_priority
from tierwise.pipelines.tiers.base import RowState, Tier
from tierwise.pipelines.tiers.generation import SamplingConfig


def row_samples(frame: pl.DataFrame, cost_per_token: float, has_verifier: bool, hint: str | None = None) -> RowSamples:
    """Rows' samples as ``RowSamples``.

    Args:
        frame: One row per row: ``id``, ``sample_answers`` (list of str or null), ``verifier_scores``
            (list of float or null), ``sample_output_tokens`` (list), ``prompt_tokens`` (what the row's
            requests paid for prompts, in all) and optionally a ``hint`` column.
        cost_per_token: The budget's unit per token; a sample costs its request's prompt and its output.
    """
    k = frame["sample_answers"].list.len().fill_null(0).to_numpy()
    width = max(int(k.max()) if len(k) else 0, 1)
    long = frame.select(
        pl.col("id"), pl.int_ranges(0, pl.col("sample_answers").list.len().fill_null(0)).alias("j"),
        "sample_answers", "sample_output_tokens",
        *(["verifier_scores"] if has_verifier else []),
        (pl.col("prompt_tokens").fill_null(0) / pl.max_horizontal(pl.col("sample_answers").list.len(), 1)).alias("p"),
        pl.int_range(pl.len()).alias("r"),
    ).explode(["j", "sample_answers", "sample_output_tokens"] + (["verifier_scores"] if has_verifier else []))
    long = long.filter(pl.col("j").is_not_null()).with_columns(
        # Equal answers of a row, equal codes (rows never compare codes with each other).
        code=pl.when(pl.col("sample_answers").is_null()).then(-1)
        .otherwise(pl.col("sample_answers").rank("dense").over("r") - 1).cast(pl.Int64),
        cost=(pl.col("p") + pl.col("sample_output_tokens")) * cost_per_token)
    q = frame.height
    r, j = long["r"].to_numpy(), long["j"].to_numpy().astype(np.int64)
    codes, cost = np.full((q, width), -1, np.int64), np.zeros((q, width))
    codes[r, j], cost[r, j] = long["code"].to_numpy(), long["cost"].to_numpy()
    ver = None
    if has_verifier:
        ver = np.full((q, width), np.nan, np.float32)
        ver[r, j] = long["verifier_scores"].cast(pl.Float32).fill_null(np.nan).to_numpy()
    hints = frame[hint].cast(pl.Float64).fill_null(np.nan).to_numpy() if hint else None
    return RowSamples(codes, codes >= 0, cost, frame["id"].cast(pl.String).to_list(), ver, hints)


def ok_samples(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the sample lists of rows that did not end ``ok`` emptied (they drew no usable sample
    for the policy: errors, rows the budget skipped)."""
    ok = pl.col("status") == "ok"
    empty = {"sample_answers": pl.String, "sample_output_tokens": pl.Int64, "verifier_scores": pl.Float64}
    return frame.with_columns(pl.when(ok).then(pl.col(c)).otherwise(pl.lit([], pl.List(t))).alias(c)
                              for c, t in empty.items() if c in frame.columns)


def state_samples(state: RowState, cost_per_token: float, has_verifier: bool) -> RowSamples:
    """One live row's samples so far (as ``row_samples`` reads them from its record)."""
    index: dict[str, int] = {}
    codes = np.array([[-1 if a is None else index.setdefault(a, len(index)) for a in state.answers]], np.int64)
    cost = np.array([[(state.prompt_tokens + s.output_tokens) * cost_per_token for s in state.samples]])
    ver = np.array([[np.nan if x is None else x for x in state.scores]], np.float32) if has_verifier else None
    h = state.features.get("difficulty_hint")
    return RowSamples(codes, codes >= 0, cost, [state.row_id], ver,
                      None if h is None else np.array([h], np.float64))


@dataclass(frozen=True)
class SequentialTier(Tier):
    """``SequentialTier(plan=..., config=..., cost_per_token=..., has_verifier=..., temperature=...)``:
    one sample a round while the row's priority clears ``plan.price`` (``tierwise.pipelines.plan.sequential``)."""

    name: str = "sequential"
    temperature: float = 0.7
    plan: PartPlan | None = field(default=None, compare=False)
    config: SequentialConfig = field(default=SequentialConfig(), compare=False)
    cost_per_token: float = 1.0
    has_verifier: bool = False
    uses_hint: bool = False

    def next_request(self, state: RowState, seed: int | None) -> SamplingConfig | None:
        if state.stop_reason is not None:
            return None
        if state.rounds and not state.samples:
            state.stop_reason = "no_samples"
            return None
        if state.samples and (reason := self.stops(state)) is not None:
            state.stop_reason = reason
            return None
        return SamplingConfig(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=seed, logprobs=self.logprobs)

    def stops(self, state: RowState) -> str | None:
        """Why the row stops after its samples so far (``tierwise.pipelines.plan.sequential.stop_reasons``'s names), or None."""
        rows = state_samples(state, self.cost_per_token, self.has_verifier)
        if not self.uses_hint:
            rows.hint = None
        priority = float(row_priority(rows, self.config, self.plan.model)[0, -1])
        if math.isinf(priority) and priority < 0:
            return "settled"
        if len(state.samples) >= self.plan.cap:
            return "cap"
        return "price" if priority < self.plan.price else None
