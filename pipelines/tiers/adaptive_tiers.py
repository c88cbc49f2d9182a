"""The adaptive policy's row programs, run live on replicas (``tierwise.pipelines.tiers.base``).

``AdaptiveTier`` runs an ``AdaptivePlan`` (``tierwise.pipelines.plan.adaptive``) row by row: a pilot round, the row's
bucket, then rounds until the bucket's stop rule fires, evaluated by replay's own vectorized functions
on a one-row table (``row_table``). ``CalibrationTier`` runs the calibration slice's rows (up to K
samples, stopping at a verified sample). ``tierwise.pipelines.plan.adaptive.plan_draws`` is ``AdaptiveTier``'s
columnar twin over a recorded table; tests check both agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from tierwise.pipelines.plan.adaptive import VERIFIED, AdaptivePlan, StopRule, tier_name
from tierwise.pipelines.plan.rules import (
    pilot_features,
    rule_stops,
    stop_signal,
)
from tierwise.pipelines.plan.rungs import RungRun
from tierwise.pipelines.plan.stopping import LABEL_TOP_PROB, first_stop, label_confident
from tierwise.pipelines.replay.table import ReplayTable
from tierwise.pipelines.tiers.answers import Extractor
from tierwise.pipelines.tiers.base import RowState, Tier
from tierwise.pipelines.tiers.generation import GenResult, SamplingConfig


def row_table(state: RowState, plan: AdaptivePlan, n_available: int | None = None) -> ReplayTable:
    """One live row as a one-row ``ReplayTable`` with the columns the plan was fit on (same dtypes as
    ``replay.build_table``), so replay's feature and stop-rule functions run on it unchanged.

    Args:
        n_available: Defaults to the samples so far; pass more to say later samples may still come
            (``first_stop`` then reports "no stop yet" as that count).
    """
    k, index = len(state.samples), {}

    def row(values: list, dtype) -> np.ndarray:
        return np.array(values, dtype=dtype).reshape(1, k)

    floats = {"mean_logprob": [s.mean_logprob for s in state.samples], "verifier_score": list(state.scores)}
    return ReplayTable(
        query_ids=pl.Series([state.row_id], dtype=pl.String), correct=row([False] * k, bool),
        codes=row([index.setdefault(a, len(index)) if a is not None else -1 for a in state.answers], np.int64),
        valid=row([a is not None for a in state.answers], bool),
        n_available=np.array([k if n_available is None else n_available], dtype=np.int64),
        output_tokens=row([s.output_tokens for s in state.samples], np.float64),
        prompt_tokens=np.array([float(state.prompt_tokens)]),
        difficulty_hint=np.array([state.features.get("difficulty_hint", np.nan)], dtype=np.float64)
        if "difficulty_hint" in plan.feature_names else None,
        row_features={n: np.array([state.features.get(n, np.nan)], dtype=np.float64)
                      for n in plan.feature_names if n.startswith("feature_")},
        **{name: row([np.nan if x is None else x for x in vals], np.float32)
           if name in plan.feature_names or (name == "verifier_score" and plan.reads_verifier) else None
           for name, vals in floats.items()})


def row_features(state: RowState, plan: AdaptivePlan) -> np.ndarray:
    """[1, k] pilot features of a live row: ``replay_adaptive.pilot_features`` on its pilot samples."""
    table = row_table(state, plan)
    return pilot_features(table, plan.pilot, np.minimum(plan.pilot, table.n_available), plan.feature_names)[0]


@dataclass(frozen=True)
class AdaptiveTier(Tier):
    """The adaptive policy as a row program: ``AdaptiveTier(plan=..., temperature=..., top_p=...,
    max_tokens=..., weighted=...)``; ``n`` is set to the plan's pilot.

    Round 0 draws ``plan.pilot`` samples, whose features set ``state.difficulty``, ``state.bucket`` and
    ``state.tier``; later rounds draw ``plan.round_size`` (never past the cap) until ``state.stop_reason``
    is ``agreed`` / ``verified`` / ``yield_reached`` (signal reached the threshold; verified_yield:
    ``plan.yield_cap`` samples verified), ``gave_up``, ``cap``, ``no_headroom``
    (the bucket's cap is the pilot) or ``no_samples``. ``select`` is ``Tier.select``.

    Seeds: the replica passes ``base + samples drawn so far`` and vLLM seeds sample i of a request
    ``seed + i``, so every sample of the row gets its own seed across rounds.

    Ladder rungs: a row whose rule names a rung (``StopRule.rung``: ``think``, ``search``) runs that rung's row
    program from ``rungs`` (``tierwise.pipelines.tiers.base.think_tier``, ``tierwise.pipelines.tiers.search.SearchTier``) after its pilot,
    on a fresh view of the row (``tierwise.pipelines.plan.rungs.RungRun`` in ``state.scratch``); ``state.tier`` is the rung,
    ``state.stop_reason`` the rung's own, the answer the rung's selection, and the row's samples and cost
    count the pilot's and the rung's.

    ``label_confidence`` (a structured choice's free difficulty signal): the pilot's first round draws one
    sample, whose first token's label distribution sets ``LABEL_TOP_PROB`` in ``state.features``
    (``tierwise.ray_cluster.rows``); a row whose top label reaches the threshold stops there (``confident``: a
    confident first pass needs no second sample), the others draw the rest of the pilot and go on as above.
    """

    name: str = "adaptive"
    temperature: float = 0.7
    plan: AdaptivePlan | None = field(default=None, compare=False)
    rungs: tuple[Tier, ...] = field(default=(), compare=False)
    label_confidence: float | None = None

    def __post_init__(self) -> None:
        if self.plan is None:
            raise ValueError("AdaptiveTier needs a plan (see plan_from_calibration)")
        object.__setattr__(self, "n", self.plan.pilot)
        named = {r.rung for b in self.plan.buckets for r in (b.rule, b.alt_rule) if r is not None} - {None}
        if missing := named - {t.name for t in self.rungs}:
            raise ValueError(f"AdaptiveTier: the plan names rungs {sorted(missing)} without their row programs "
                             "(rungs=...)")

    def rule_for(self, state: RowState) -> StopRule:
        bp = self.plan.buckets[state.bucket]
        alt = bp.alt_rule is not None and bool(self.plan.takes_alt([state.row_id], np.array([state.bucket]))[0])
        rule = bp.alt_rule if alt else bp.rule
        if rule.rung is not None:
            return rule
        return replace(rule, tier=tier_name(rule.cap, self.plan.pilot, self.weighted))

    def next_request(self, state: RowState, seed: int | None) -> SamplingConfig | list[SamplingConfig] | None:
        plan, k = self.plan, len(state.samples)
        if state.stop_reason is not None:
            return None
        if isinstance(state.scratch, RungRun):
            return self._rung_request(state, seed)
        if state.rounds == 0 and plan.gate is not None:
            gated, difficulty = plan.gated(row_table(state, plan))
            if gated[0]:  # no sample: the features alone say no headroom
                state.tier, state.stop_reason, state.difficulty = "skip", "gated", float(difficulty[0])
                return None
        if state.rounds == 0:
            return self._pilot_round(1 if self.label_confidence is not None else plan.pilot, seed)
        if k == 0:
            state.stop_reason = "no_samples"
            return None
        if self.label_confidence is not None and state.rounds == 1:
            top = np.array([state.features.get(LABEL_TOP_PROB, np.nan)])
            if label_confident(top, self.label_confidence)[0]:
                state.tier, state.stop_reason = "confident", "confident"
                return None
            if k < plan.pilot:
                return self._pilot_round(plan.pilot - k, seed)
        if state.bucket is None:
            difficulty, bucket = plan.classify(row_features(state, plan))
            state.difficulty, state.bucket = float(difficulty[0]), int(bucket[0])
        rule = self.rule_for(state)
        state.tier = rule.tier
        if rule.rung is not None:
            tier = next(t for t in self.rungs if t.name == rule.rung)
            state.scratch = RungRun(tier, RowState(state.row_id, state.prompt_tokens, features=state.features))
            return self._rung_request(state, seed)
        if rule.cap <= plan.pilot:
            state.stop_reason = "no_headroom"
            return None
        reason = self._fired(state, rule) or ("cap" if k >= rule.cap else None)
        if reason is not None:
            state.stop_reason = reason
            return None
        return replace(self._round, n=min(plan.round_size, rule.cap - k),
                       seed=seed)

    def _pilot_round(self, n: int, seed: int | None) -> SamplingConfig:
        # The pilot's log-probs are a difficulty feature when the plan reads them.
        return replace(self._round, n=n, seed=seed, logprobs=self.logprobs or "mean_logprob" in self.plan.feature_names)

    def _rung_request(self, state: RowState, seed: int | None) -> SamplingConfig | list[SamplingConfig] | None:
        run: RungRun = state.scratch
        asked = run.tier.next_request(run.state, seed)
        if asked is None:
            state.stop_reason = run.state.stop_reason or "done"
        return asked

    def absorb(self, state: RowState, requests: list[SamplingConfig], results: list[GenResult],
               extract: Extractor, scores: list[list[float | None] | None] | None = None) -> None:
        """The pilot and sampling rounds as ``Tier.absorb``; a rung's rounds go to the rung's row program,
        and its new samples are copied into the row's (accounting, replay columns, seeds)."""
        if not isinstance(state.scratch, RungRun):
            return super().absorb(state, requests, results, extract, scores)
        run: RungRun = state.scratch
        before = len(run.state.samples)
        run.tier.absorb(run.state, requests, results, extract, scores)
        state.rounds += 1
        state.samples += run.state.samples[before:]
        state.answers += run.state.answers[before:]
        state.scores += run.state.scores[before:]

    def select(self, state: RowState) -> tuple[str | None, dict[str, float]]:
        if isinstance(state.scratch, RungRun):
            return state.scratch.tier.select(state.scratch.state)
        return super().select(state)

    @property
    def _round(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              logprobs=self.logprobs)

    def _fired(self, state: RowState, rule: StopRule) -> str | None:
        """Whether the rule stops the row at some prefix of its samples: replay's ``first_stop`` and
        ``rule_stops`` on the one-row table, with one more sample "available" so "not yet" is k + 1."""
        k, pilot = len(state.samples), self.plan.pilot
        table = row_table(state, self.plan, n_available=k + 1)
        signal = stop_signal(table, self.plan.objective, self.plan.yield_cap, self.plan.verifier_pass)
        by_threshold = first_stop(signal, rule.threshold, pilot, table.n_available).astype(np.int64)
        if rule_stops(table, by_threshold, rule.give_up, pilot, rule.give_up_below)[0] > k:
            return None
        if by_threshold[0] <= k:
            return {"verifier": "verified", "verified_count": "yield_reached"}.get(self.plan.signal, "agreed")
        return "gave_up"


@dataclass(frozen=True)
class CalibrationTier(Tier):
    """Calibration rows: up to ``n`` (K) samples, a first round of ``pilot`` then rounds of ``round_size``.

    With ``stop_on_verified`` (accuracy or coverage with a verifier) a row stops after the round in which
    a sample reaches the verifier's top score (``VERIFIED``): every stop rule a plan offers there (a
    finite threshold on the best score so far) would stop it at that sample, so its curves stay exact,
    and the difficulty model's binomial fit stays the likelihood (``fit_difficulty_model``). The plan
    offers no "never stop early" rule then (``plan_from_calibration``). Easy rows then cost one sample
    instead of K. Without it, the K samples go out in one request.

    ``prompt_per_sample``: samples stop at a failed step (``policy.abort_failed_steps``), so each is a
    request of its own and pays the prompt.
    """

    name: str = "calibration"
    temperature: float = 0.7
    pilot: int = 1
    round_size: int = 2
    stop_on_verified: bool = False
    prompt_per_sample: bool = False

    def next_request(self, state: RowState, seed: int | None) -> SamplingConfig | None:
        if not self.stop_on_verified:
            return super().next_request(state, seed)
        k = len(state.samples)
        if state.stop_reason is not None:
            return None
        if state.rounds:
            if k == 0:
                state.stop_reason = "no_samples"
            elif any(x is not None and x >= VERIFIED for x in state.scores):
                state.stop_reason = "verified"
            elif k >= self.n:
                state.stop_reason = "done"
            if state.stop_reason is not None:
                return None
        n = min(self.pilot if state.rounds == 0 else self.round_size, self.n - k)
        return SamplingConfig(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=seed, logprobs=self.logprobs)

    def per_round_prompt(self, samples: pl.DataFrame) -> pl.DataFrame:
        """Calibration samples (``samples.output_to_samples``) with ``prompt_tokens`` of one request: a row
        that ran r rounds paid its prompt r times, and the output's ``prompt_tokens`` holds the sum. The
        replay schema (and ``log_prompt_tokens``, a difficulty feature) wants it once, as live rows read it.
        A row of n samples ran ``1 + ceil((n - pilot) / round_size)`` rounds (one without stopping), or
        n requests with ``prompt_per_sample``."""
        n = pl.len().over("query_id")
        if self.prompt_per_sample:
            rounds = n
        elif not self.stop_on_verified:
            return samples
        else:
            rounds = ((n - self.pilot).clip(lower_bound=0) + self.round_size - 1) // self.round_size + 1
        return samples.with_columns((pl.col("prompt_tokens") // rounds).cast(pl.Int64).alias("prompt_tokens"))
