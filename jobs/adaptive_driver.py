"""Driver side of the adaptive policy: calibrate, plan, run, re-plan.

1. Calibration: a seeded-random slice of the input's parts runs with up to K samples
   per row (``CalibrationTier``: with a verifier, accuracy and coverage rows stop at a
   verified sample), up to ``calibration_budget_share`` of the budget and
   ``calibration_rows`` rows.
   These rows are ordinary output rows too (their answer is a K-sample vote).
2. Plan: their samples (graded by gold when present, else by the verifier or the
   K-sample majority) go to ``tierwise.pipelines.plan.adaptive.plan_from_calibration``, the same
   machinery ``tierwise replay`` uses; ``calibration.json`` and ``calibration.png``
   are written beside the output.
3. Run: the other parts run the ``AdaptiveTier`` row program with the plan.
4. Pacing: every ``replan_every_parts`` committed parts the plan is re-allocated
   for the rows not yet sent and the budget left (actual spend), less what the parts
   in flight are still expected to spend (each at the plan it was sent with, less
   what they spent so far); the ledger's hard cap stays the last word.

A resumed run rebuilds the plan from the committed calibration parts.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import polars as pl

from tierwise.jobs.spec import JobSpec, aborts_failed_steps, difficulty_columns
from tierwise.pipelines.data import io
from tierwise.pipelines.plan.budget import cost_per_token
from tierwise.pipelines.plan.calibration import stable_hash01
from tierwise.pipelines.tiers.base import Tier

log = logging.getLogger(__name__)


def load_difficulty_model(path: str):
    """The difficulty model an earlier run saved: its ``difficulty_model.json`` or ``calibration.json``."""
    import json

    from tierwise.pipelines.data.errors import InputError
    from tierwise.pipelines.plan.calibration import DifficultyModel

    try:
        fs, p = io.filesystem(path)
        with fs.open(p) as fh:
            data = json.load(fh)
        return DifficultyModel.from_dict(data["model"] if "model" in data else data["plan"]["model"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"policy.difficulty.learned: cannot load a difficulty model from {path!r}: {exc}") from exc


class AdaptiveDriver:
    def __init__(self, spec: JobSpec, parts: list[io.Part], committed: dict[int, dict]):
        from tierwise.pipelines.plan.rules import AdaptiveConfig, pilot_size
        from tierwise.pipelines.tiers.adaptive_tiers import CalibrationTier

        self.spec, self.parts, self.pol = spec, parts, spec.policy
        s, pol = spec.sampling, spec.policy
        order = np.argsort(stable_hash01([str(p.part_id) for p in parts], s.seed), kind="stable")
        n_cal = max(1, min(len(parts), math.ceil(pol.calibration_fraction * len(parts))))
        if pol.calibration_from:  # the nightly case: learn from last night's samples, spend nothing on it
            n_cal = 0
        self.cal_ids = {parts[i].part_id for i in order[:n_cal]}
        weighted = pol.select == "verifier"
        est = pol.difficulty.estimators
        self.config = AdaptiveConfig(pilot_samples=pol.pilot_samples, n_buckets=pol.n_buckets,
                                     estimators=tuple(e for e in est if e != "learned"), yield_cap=pol.yield_cap)
        # With a verifier, accuracy and coverage rows stop at a verified sample (see CalibrationTier).
        verifier = spec.verifier is not None
        self.calibration_tier = CalibrationTier(
            "calibration", pol.calibration_samples, s.temperature, s.top_p, s.max_tokens, weighted,
            logprobs=s.logprobs is not False, pilot=pilot_size(self.config, pol.objective, verifier),
            round_size=pol.round_size, stop_on_verified=verifier and pol.objective in ("accuracy", "coverage"),
            prompt_per_sample=aborts_failed_steps(spec))
        self.model = load_difficulty_model(pol.difficulty.learned) if "learned" in est else None
        self.cpt = cost_per_token(spec.budget.unit, spec.budget.tokens_per_gpu_hour, spec.budget.usd_per_gpu_hour)
        self.report: dict = {}
        self.replans = 0
        self._samples: pl.DataFrame | None = None
        self._rungs: pl.DataFrame | None = None  # think / search measured on calibration rows (policy.ladder)
        self._rung_summary: dict = {}

    # -------------------------------------------------------------- phases
    def first_round(self) -> None:
        """None: rows' first rounds differ by tier (no ``tierwise.jobs.skipping.BudgetFloor``; the ledger
        refuses rows the budget cannot cover one by one)."""
        return None

    def run(self, session) -> int:
        cal_cap = self.pol.calibration_budget_share * self.spec.budget.amount
        self._calibrate(session, cal_cap)
        main = [p for p in self.parts if p.part_id not in session.summaries]
        if session.stopping:
            return len(main)
        # The slice's parts that calibration did not reach (budget share or calibration_rows) run as
        # ordinary parts: from here on they are not calibration, in the plan's samples nor its report.
        self.cal_ids &= set(session.summaries)
        measured_rungs = self._gather_samples(session, [p for p in self.parts if p.part_id in self.cal_ids], cal_cap)
        if measured_rungs and session.stopping:
            return len(main)
        first = self._adaptive_tier(self._plan(session, main, write=True))
        pacing = _Pacing(self, session, main, first, before=session.snapshot["spent"])  # spend before main parts
        unsent = session.run_parts(main, tier=pacing.tier, on_part=pacing.on_part, on_sent=pacing.on_sent)
        self.report["adaptive"] |= {"replans": self.replans}
        return unsent

    def _calibrate(self, session, cal_cap: float) -> None:
        """Runs the calibration slice's parts not yet committed, one at a time, within ``cal_cap``."""
        todo = [p for p in self.parts if p.part_id in self.cal_ids and p.part_id not in session.summaries]
        session.run_parts(todo, tier=lambda _part: self.calibration_tier,
                          stop_when=partial(self._calibration_full, session, cal_cap), max_inflight=1)

    def _calibration_full(self, session, cal_cap: float) -> bool:
        """Whether calibration has its rows, or the next part of average cost would pass ``cal_cap``."""
        done = [session.summaries[i] for i in self.cal_ids if i in session.summaries]
        spent = sum(d["cost"] for d in done)
        per_part = spent / len(done) if done else 0.0
        enough = self.pol.calibration_rows is not None and sum(d["rows"] for d in done) >= self.pol.calibration_rows
        return enough or spent + per_part > cal_cap

    def _gather_samples(self, session, cal_parts: list[io.Part], cal_cap: float) -> bool:
        """The plan's samples: last night's (``calibration_from``) or the calibration parts' (written
        beside the output), and the ladder's rungs measured on a sub-slice of them; whether rungs were
        measured (parts ran)."""
        if self.pol.calibration_from:
            from tierwise.pipelines.replay.table import load_samples
            self._samples = load_samples(self.pol.calibration_from)
            return False
        self._samples = self._calibration_samples(cal_parts)
        fs, root = io.filesystem(self.spec.output.path, self.spec.output.storage_options)
        with fs.open(f"{root.rstrip('/')}/calibration_samples.parquet", "wb") as fh:
            self._samples.write_parquet(fh)
        if self.pol.rungs:  # the ladder's think / search rungs, measured on a sub-slice of these rows
            from tierwise.jobs.rung_calibration import calibrate_rungs

            spent = sum(session.summaries[p.part_id]["cost"] for p in cal_parts)
            self._rungs, self._rung_summary = calibrate_rungs(self.spec, session, cal_parts, self._samples,
                                                              cal_cap, spent)
            return True
        return False

    def _calibration_samples(self, cal_parts: list[io.Part]) -> pl.DataFrame:
        from tierwise.pipelines.data.samples import output_to_samples

        output = io.read_output(self.spec.output.path, self.spec.output.storage_options,
                                part_ids=[p.part_id for p in cal_parts])
        inp = self.spec.input
        feats = difficulty_columns(self.spec)
        if not (inp.gold_column or feats):  # nothing to read back from the input
            return self.calibration_tier.per_round_prompt(output_to_samples(output, None))
        cols = [inp.id_column] + ([inp.gold_column] if inp.gold_column else []) + sorted(set(feats.values()))
        rows = io.read_parts(cal_parts, list(dict.fromkeys(cols)), inp.storage_options).with_columns(
            pl.col(inp.id_column).cast(pl.String).alias("id"))
        gold = rows.select("id", pl.col(inp.gold_column).cast(pl.String).alias("gold")) if inp.gold_column else None
        samples = self.calibration_tier.per_round_prompt(output_to_samples(output, gold))
        if feats:  # each row's difficulty signals, as the replicas read them for live rows
            samples = samples.join(rows.select(pl.col("id").alias("query_id"),
                                               *(pl.col(c).cast(pl.Float64).alias(k) for k, c in feats.items())),
                                   on="query_id", how="left")
        return samples

    def _plan(self, session, left: list[io.Part], write: bool = False, in_flight=None):
        """A plan for the rows of ``left`` and the budget left, less ``in_flight(spent)`` tokens
        (what the parts in flight are still expected to spend)."""
        from tierwise.pipelines.plan.adaptive import plan_from_calibration

        snap = session.save_ledger()
        rows_left = sum(p.length for p in left)
        # The plan counts tokens; the ledger counts the budget's unit.
        tokens_left = max(0.0, snap["budget"] - snap["spent"]) / self.cpt
        if in_flight is not None:
            tokens_left = max(0.0, tokens_left - in_flight(snap["spent"]))
        plan, report = plan_from_calibration(
            self._samples, rows_remaining=rows_left, budget_remaining=tokens_left, unit="tokens",
            objective=self.pol.objective, config=self.config, price=self.pol.price,
            round_size=self.pol.round_size, seed=self.spec.sampling.seed, model=self.model,
            rungs=self._rungs, sampling=self.pol.sampling_rung,
            prompt_per_sample=self.calibration_tier.prompt_per_sample, max_cap=self.pol.sample_cap)
        summary = {
            "calibration_parts": len(self.cal_ids & set(session.summaries)),
            "calibration_rows": int(self._samples["query_id"].n_unique()),
            "calibration_spent": float(sum(session.summaries[i]["cost"] for i in self.cal_ids
                                           if i in session.summaries)
                                       + sum(r["spent"] for r in self._rung_summary.values())),
            "labels": plan.labels,
            "buckets": [{"bucket": i, "tier": b.tier, "share": b.share, "cap": b.rule.cap,
                         "expected_cost": b.expected_cost, "expected_score": b.expected_score}
                        for i, b in enumerate(plan.buckets)],
            "expected_cost_per_row": plan.expected_cost_per_row,
        } | ({"rungs": self._rung_summary} if self._rung_summary else {})
        self.report["adaptive"] = summary
        if write:
            out, so = self.spec.output.path, self.spec.output.storage_options
            io.write_json({"summary": summary, "plan": plan.to_dict(), "report": report}, out,
                          "calibration.json", so)
            # The ``learned`` estimator of a later run loads this (policy.difficulty.learned).
            io.write_json({"feature_names": list(plan.feature_names), "model": plan.model.to_dict()}, out,
                          "difficulty_model.json", so)
            self._write_plot(report, out, so)
        return plan

    def _adaptive_tier(self, plan) -> Tier:
        from tierwise.jobs.row_programs import rung_tiers
        from tierwise.pipelines.tiers.adaptive_tiers import AdaptiveTier

        s = self.spec.sampling
        return AdaptiveTier(plan=plan, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                            weighted=self.pol.select == "verifier", logprobs=bool(s.logprobs),
                            rungs=rung_tiers(self.spec), label_confidence=self.pol.label_confidence)

    @staticmethod
    def _write_plot(report: dict, out: str, so: dict) -> None:
        from tierwise.pipelines.plan.adaptive import plot_plan

        fs, root = io.filesystem(out, so)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "calibration.png")
            try:
                plot_plan(report, local)
            except Exception as exc:  # a plot must never fail the job
                log.warning("calibration plot not written: %s", exc)
                return
            io.with_retries(lambda: fs.put(local, f"{root.rstrip('/')}/calibration.png"), "write calibration.png")


@dataclass
class _Pacing:
    """The main phase's pacing: the tier parts are sent with (``current``), what each main part sent is
    expected to cost under the plan it was sent with (tokens), and a re-plan every
    ``replan_every_parts`` committed parts for the rows not yet sent and the budget left, less what
    the parts in flight are still expected to spend."""

    driver: AdaptiveDriver
    session: object
    main: list[io.Part]
    current: Tier
    before: float  # spend before the first main part
    sent: dict[int, float] = field(default_factory=dict)
    done: int = 0

    def tier(self, _part: io.Part) -> Tier:
        return self.current

    def on_sent(self, part: io.Part) -> None:
        self.sent[part.part_id] = part.length * self.current.plan.expected_cost_per_row

    def in_flight_tokens(self, spent: float) -> float:
        """What the parts in flight are still expected to spend: their expected cost less
        what they spent so far (main spend less that of the main parts committed)."""
        summaries = self.session.summaries
        flying = [i for i in self.sent if i not in summaries]
        committed = sum(summaries[i]["cost"] for i in self.sent if i in summaries)
        spent_flying = max(0.0, spent - self.before - committed) / self.driver.cpt
        return max(0.0, sum(self.sent[i] for i in flying) - spent_flying)

    def on_part(self, summary: dict) -> None:
        self.done += 1
        if self.done % self.driver.pol.replan_every_parts == 0:
            summaries = self.session.summaries
            unsent = [p for p in self.main if p.part_id not in self.sent and p.part_id not in summaries]
            if unsent:
                plan = self.driver._plan(self.session, unsent, in_flight=self.in_flight_tokens)
                self.current = self.driver._adaptive_tier(plan)
                self.driver.replans += 1
