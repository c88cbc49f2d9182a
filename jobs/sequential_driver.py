"""Driver side of the sequential policy (``tierwise.pipelines.plan.sequential``): the live twin of replay's
``sequential_draws``, calling the same ``Pacer`` in the order parts are sent and finish.

1. Slice: the first parts of a seeded order run one at a time at price 0 (rows sample until settled or
   the slice's depth, planned from the costs measured so far).
2. Main: every other part is sent with the price the pacer solves for the budget left (less what the
   parts in flight are expected to spend) over the rows left; rows run ``SequentialTier`` and stop on
   their own samples.
3. Record: ``sequential.json`` beside the output holds each part's plan (phase, price, cap) and the
   sequence of sends and finishes, so ``sequential_draws`` can replay the job's decisions exactly.

A resumed run counts its committed parts as its slice (their samples train the model) and prices the rest.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import polars as pl

from tierwise.jobs.spec import JobSpec, difficulty_columns
from tierwise.pipelines.data import io
from tierwise.pipelines.plan.budget import cost_per_token
from tierwise.pipelines.plan.calibration import stable_hash01
from tierwise.pipelines.plan.sequential import Pacer, PartPlan, SequentialConfig
from tierwise.pipelines.tiers.sequential_tier import SequentialTier, ok_samples, row_samples

log = logging.getLogger(__name__)

RECORD_FILE = "sequential.json"
SAMPLE_COLUMNS = ["id", "status", "sample_answers", "verifier_scores", "sample_output_tokens", "prompt_tokens"]


def sequential_config(spec: JobSpec) -> SequentialConfig:
    pol = spec.policy
    return SequentialConfig(objective=pol.objective, yield_cap=pol.yield_cap, max_samples=pol.sample_cap)


def part_order(parts: list[io.Part], seed: int) -> list[io.Part]:
    """Parts in the seeded order a sequential job sends them (the slice is its first parts)."""
    order = np.argsort(stable_hash01([str(p.part_id) for p in parts], seed), kind="stable")
    return [parts[i] for i in order]


class SequentialDriver:
    def __init__(self, spec: JobSpec, parts: list[io.Part], committed: dict[int, dict]):
        self.spec, self.cfg = spec, sequential_config(spec)
        b, s = spec.budget, spec.sampling
        self.cpt = cost_per_token(b.unit, b.tokens_per_gpu_hour, b.usd_per_gpu_hour)
        self.has_verifier = spec.verifier is not None
        self.hint = "difficulty_hint" if "difficulty_hint" in difficulty_columns(spec) else None
        self.by_id = {p.part_id: p for p in parts}
        self.todo = [p for p in part_order(parts, s.seed) if p.part_id not in committed]
        self.committed = [p for p in part_order(parts, s.seed) if p.part_id in committed]
        # Before anything is measured a sample is guessed to cost a prompt and its whole max_tokens.
        self.cost_guess = float(s.max_tokens) * self.cpt
        self.events: list[tuple[str, int]] = []
        self.plans: dict[int, PartPlan] = {}
        self.report: dict = {}

    def first_round(self) -> list[tuple[int, int]]:
        """Every row's first round, whatever its part's plan: one sample of ``max_tokens``
        (``SequentialTier.next_request``), what ``tierwise.jobs.skipping.BudgetFloor`` prices."""
        return [(1, self.spec.sampling.max_tokens)]

    def run(self, session) -> int:
        snap = session.save_ledger()
        rows = sum(p.length for p in self.todo)
        pacer = self.pacer = Pacer(rows, max(0.0, snap["budget"] - snap["spent"]), self.cfg, self.cost_guess,
                                   self.has_verifier)
        self._absorb_committed(pacer)
        while self.todo and pacer.in_slice and not session.stopping:
            part = self.todo.pop(0)
            if session.run_parts([part], tier=self._tier, on_part=self._on_part, max_inflight=1):
                self.todo.insert(0, part)
        unsent = len(self.todo)
        if self.todo and not session.stopping:
            unsent = session.run_parts(self.todo, tier=self._tier, on_part=self._on_part)
        self._record()
        self.report["adaptive"] = pacer.details() | {"policy": "sequential", "cost_guess": self.cost_guess}
        return unsent

    def _absorb_committed(self, pacer: Pacer) -> None:
        """A resume: the committed parts' rows train the model as a slice's would (nothing re-runs)."""
        for part in self.committed:
            pacer.absorb(*self._part_samples(part))

    def _tier(self, part: io.Part) -> SequentialTier:
        """The part's row program; a retried part keeps the plan it was first sent with."""
        if part.part_id not in self.plans:
            self.plans[part.part_id] = self.pacer.plan(part.part_id, part.length)
            self.events.append(("send", part.part_id))
        s = self.spec.sampling
        return SequentialTier(plan=self.plans[part.part_id], config=self.cfg, cost_per_token=self.cpt,
                              has_verifier=self.has_verifier, uses_hint=self.hint is not None,
                              temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              weighted=self.spec.policy.select == "verifier", logprobs=bool(s.logprobs))

    def _on_part(self, summary: dict) -> None:
        pid = summary["part_id"]
        if pid in self.pacer.in_flight:
            rows, drawn = self._part_samples(self.by_id[pid])
            self.pacer.observe(pid, rows, drawn, float(summary["cost"]))
            self.events.append(("done", pid))

    def _part_samples(self, part: io.Part):
        """A committed part's rows as the pacer observes them (rows that ended without samples drew 0)."""
        out = io.read_output(self.spec.output.path, self.spec.output.storage_options, SAMPLE_COLUMNS,
                             part_ids=[part.part_id])
        out = ok_samples(out)
        if self.hint:
            inp, col = self.spec.input, self.spec.policy.difficulty.column
            hints = pl.from_arrow(io.read_part(part, [inp.id_column, col], inp.storage_options))
            out = out.join(hints.select(pl.col(inp.id_column).cast(pl.String).alias("id"),
                                        pl.col(col).alias("difficulty_hint")), on="id", how="left")
        return row_samples(out, self.cpt, self.has_verifier, self.hint), out["sample_answers"].list.len().to_numpy()

    def _record(self) -> None:
        """``sequential.json``: each part's plan and the order of sends and finishes (for replay)."""
        plans = {str(pid): {"phase": p.phase, "price": None if math.isinf(p.price) else p.price, "cap": p.cap,
                            "expected": p.expected} for pid, p in self.plans.items()}
        io.write_json({"config": self.cfg.__dict__, "cost_guess": self.cost_guess, "budget": self.pacer.budget,
                       "rows": self.pacer.rows, "parts": plans, "events": self.events,
                       "model": self.pacer.model.to_dict() if self.pacer.model else None},
                      self.spec.output.path, RECORD_FILE, self.spec.output.storage_options)


def replay_job(out_uri: str, storage_options: dict | None = None, cost_per_token: float = 1.0,
               has_verifier: bool = True):
    """Replays a finished sequential job over its own recorded samples with ``sequential_draws``, its
    parts sent and finished in the recorded order: returns ``(SequentialRun, output rows)`` (rows in the
    run's order) so each row's samples drawn and stop reason, and the spend, can be compared."""
    from tierwise.pipelines.plan.sequential import concat_rows, sequential_draws

    record = io.read_json(out_uri, RECORD_FILE, storage_options)
    if record is None:
        raise FileNotFoundError(f"{out_uri} holds no {RECORD_FILE} (not a sequential job's output)")
    sent = [pid for kind, pid in record["events"] if kind == "send"]
    cols = SAMPLE_COLUMNS + ["n_samples", "stop_reason", "cost"]
    frames = [io.read_output(out_uri, storage_options, cols, part_ids=[pid]) for pid in sent]
    frames = [ok_samples(f) for f in frames]
    rows = concat_rows([row_samples(f, cost_per_token, has_verifier) for f in frames])
    out = pl.concat(frames)
    drawn = out["sample_answers"].list.len().to_numpy()
    cum = np.concatenate([np.zeros((len(drawn), 1)), np.cumsum(rows.cost, axis=1)], axis=1)
    bounds = np.cumsum([0] + [f.height for f in frames])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(frames))]
    index = {pid: i for i, pid in enumerate(sent)}
    events = [(kind, index[pid]) for kind, pid in record["events"]]
    run = sequential_draws(rows, cum, drawn, record["budget"], np.arange(len(drawn)),
                           SequentialConfig(**record["config"]), parts=parts, events=events,
                           cost_guess=record["cost_guess"])
    return run, out
