"""The front door: ``run_job(spec)`` runs a whole tierwise job and returns its report.

Driver-side work is cheap: read footers, check ids, plan parts, start the ledger
and the replicas, then stream parts through the pool and merge their summaries.
The policy decides which row program (tier) each part runs with: the uniform
policy uses one tier; the adaptive policy (``tierwise.jobs.adaptive_driver``) first runs a
calibration slice, then a plan it re-fits as real costs come in.

Resume: re-running the same job on the same output skips its committed parts
(``tierwise.jobs.resume``: the output's manifest must match the job's input and answer-changing
settings, else the run is refused; a part whose ids differ from its input part, or
whose rows failed for a job-level cause, is redone). One driver writes an output at a
time (``tierwise.pipelines.data.lease``). The budget survives crashes: ``_tierwise/ledger.json``
records everything spent so far, including work of parts that never committed (it
was spent); a resumed run starts its ledger there, so the total across attempts never
passes the budget. It keeps the spend per part too: a part redone after a lost attempt
(a replica lost mid-part, a killed driver) carries that attempt's spend in its rows
(``lost_cost``, part of ``cost``), so the output's costs add up to the ledger's spend.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tierwise.jobs import preflight, resume, skipping
from tierwise.jobs.progress import Progress
from tierwise.jobs.resume import LEDGER_FILE, JobChanged, ledger_record  # noqa: F401  (JobChanged: re-exported for callers)
from tierwise.jobs.spec import (
    JobSpec,
    JudgeSpec,
    ReferenceSpec,
    SpecError,
    aborts_failed_steps,
    difficulty_columns,
    prompt_columns,
    prompt_config,
    resolve_output_path,
    verifier_columns,
)
from tierwise.jobs.uniform_driver import UniformDriver
from tierwise.pipelines.data import io, records
from tierwise.pipelines.data.errors import JobInterrupted, RowErrorsInStrictMode, StartInterrupted
from tierwise.pipelines.data.lease import LeaseLost, OutputLease, OutputLeased  # noqa: F401  (OutputLeased: re-exported)
from tierwise.pipelines.data.report import breakdown, build_report
from tierwise.pipelines.data.validation import check_columns, check_unique_ids
from tierwise.pipelines.plan.budget import cost_per_token
from tierwise.pipelines.plan.pricing import price_spec
from tierwise.pipelines.tiers.base import Tier

log = logging.getLogger(__name__)

LEDGER_SAVE_EVERY_S = 5.0


def _check_input(spec: JobSpec) -> tuple[list[io.InputFile], int, list]:
    inp = spec.input
    files = io.list_input_files(inp.path, inp.storage_options)
    required = {"id_column": inp.id_column, "gold_column": inp.gold_column} | prompt_columns(spec)
    required |= {f"input.sampling_columns.{k}": col for k, col in inp.sampling_columns.items()}
    required |= verifier_columns(spec)
    required |= {f"policy.difficulty.{'column' if k == 'difficulty_hint' else 'feature_columns'}[{col}]": col
                 for k, col in difficulty_columns(spec).items()}
    for f in files:
        check_columns(io.read_schema(f, inp.storage_options), required, f.path)
    id_chunks = list(io.iter_column(files, inp.id_column, inp.storage_options))
    n_rows = check_unique_ids(id_chunks, inp.id_column)
    return files, n_rows, id_chunks


def job_context(spec: JobSpec, rows_stop_at: float | None = None):
    from tierwise.ray_cluster.replica import JobContext

    b = spec.budget
    verifier = spec.verifier
    if isinstance(verifier, JudgeSpec):
        verifier = verifier.config(spec.model.path, spec.sampling.max_tokens)
    elif isinstance(verifier, ReferenceSpec):
        verifier = verifier.config()
    cpt = cost_per_token(b.unit, b.tokens_per_gpu_hour, b.usd_per_gpu_hour)
    return JobContext(
        output_uri=spec.output.path, id_column=spec.input.id_column, prompt=prompt_config(spec),
        gold_column=spec.input.gold_column, cost_per_token=cpt,
        pricing=price_spec(b.unit, cpt, b.prompt_token_weight, b.metering, b.usd_per_gpu_hour, spec.replicas.num_gpus),
        rows_stop_at=rows_stop_at,
        extractor=spec.answer_extractor, verifier=verifier, keep_samples=spec.output.keep_samples,
        seed=spec.sampling.seed, input_storage=spec.input.storage_options, output_storage=spec.output.storage_options,
        row_features=tuple(difficulty_columns(spec).items()), abort_failed_steps=aborts_failed_steps(spec),
        verifier_timeout_s=spec.verifier_timeout_s,
        structured=spec.structured.constraint() if spec.structured else None,
        reasoning=spec.reasoning.config(spec.sampling.max_tokens) if spec.reasoning else None,
        sampling_columns=tuple(spec.input.sampling_columns.items()),
    )


def judge_model(spec: JobSpec) -> str | None:
    """The model of the spec's judge when it needs an engine of its own, else None."""
    v = spec.verifier
    return v.model if isinstance(v, JudgeSpec) and v.model not in (None, spec.model.path) else None


def pool_spec(spec: JobSpec) -> tuple:
    """What the spec's replicas are (cheap, no Ray): its ``EngineSpec``, ``PoolConfig`` and judge
    ``EngineSpec`` (None without a judge model of its own). Specs with equal ones can share a pool."""
    from tierwise.ray_cluster.engine import EngineSpec
    from tierwise.ray_cluster.pool import PoolConfig

    m, r = spec.model, spec.replicas
    judge = None
    if (jm := judge_model(spec)) is not None:
        judge = EngineSpec(jm, None, m.dtype, spec.sampling.seed, spec.verifier.engine_kwargs)
    return (EngineSpec(m.path, m.max_model_len, m.dtype, spec.sampling.seed, m.engine_kwargs),
            PoolConfig(r.count, r.num_cpus, r.num_gpus, r.max_part_retries, max_rows_in_flight=r.max_rows_in_flight,
                       max_engine_restarts=r.max_engine_restarts), judge)


def start_pool(spec: JobSpec, address: str | None = None, stopping: Callable[[], bool] = lambda: False):
    """Starts the spec's replicas (engines built inside the workers; with a judge model
    of its own, a second engine on each). Pass the pool to several ``run_job`` calls
    whose specs have the same ``pool_spec`` to start engines once. ``stopping()`` true
    while the engines start stops them (``StartInterrupted``)."""
    from tierwise.ray_cluster.cluster import connect
    from tierwise.ray_cluster.pool import ReplicaPool

    preflight.wait_for_resources(spec, connect(address))  # bounded; refused at once when the cluster never can
    engine, config, judge = pool_spec(spec)
    return ReplicaPool(engine, config, judge, stopping)


def _check_pool(spec: JobSpec, pool) -> None:
    """A pool passed in must host the spec's judge model (checked before any work)."""
    need = judge_model(spec)
    hosted = pool.judge.model if pool.judge is not None else None
    if need is not None and need != hosted:
        raise SpecError(f"verifier.model {need!r} is not hosted by the pool passed in (its judge engine: "
                        f"{hosted!r}); start the pool with start_pool(spec)")


class _StopOnSignal:
    """Turns SIGINT/SIGTERM into a drain request (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("signal %d: draining parts in flight, then stopping (send again to abort)", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Session:
    """One job's live machinery: the ledger actor, the replica pool, progress,
    and the summaries of committed parts."""

    def __init__(self, spec: JobSpec, n_rows: int, committed: dict[int, dict], prior_spent: float,
                 address: str | None, show_progress: bool, pool=None, lease: OutputLease | None = None,
                 prior_parts: dict[int, float] | None = None, deadline: skipping.Deadline | None = None):
        from tierwise.ray_cluster.cluster import connect
        from tierwise.ray_cluster.ledger import BudgetLedger

        self.spec, self.summaries = spec, dict(committed)
        self.ray = connect(address)
        # The ledger lives beside the driver: losing a worker node never loses the budget.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = self.ray.get_runtime_context().get_node_id()
        self.ledger = BudgetLedger.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(
            spec.budget.amount, prior_spent, {spec.output.path: prior_parts or {}}, job=spec.name)
        self.progress = Progress(n_rows, spec.budget.amount, spec.budget.unit, done=committed.values(),
                                 enabled=show_progress)
        self.pool, self._own_pool = pool, pool is None
        self.deadline = deadline
        # The budget's floor (tierwise.jobs.skipping): ``floor_for`` builds it (and the driver's tokenizer) on
        # the ledger's first refusal, so that a job the budget covers never pays for it.
        self.floor_for: Callable[[], tuple] | None = None
        self.floor, self.tokens = None, None
        self.sent: list[io.Part] = []  # every part sent so far (the floor covers only the others)
        self.budget_out = False  # the budget left covers no row of any part not yet sent
        self.bulk_written: list[dict] = []  # parts the driver wrote skipped in bulk (commit_left)
        self.job = job_context(spec, deadline.rows_stop_at if deadline is not None else None)
        self.stop = _StopOnSignal()
        self.lease = lease
        self.generate_wall_s = 0.0
        self._engines_before: dict[str, dict] = {}  # each replica's EngineMeter totals as the session began
        self._engines_last: dict[str, dict] = {}  # ... at the last metrics report (tierwise.ray_cluster.metrics)
        self._tier_of: dict[int, str] = {}  # each sent part's tier name, for the rows metric
        self.engine_phases: list[dict] = []  # each pool run's engine use: {"phase", "wall_s", "engines"}
        self._last_save = 0.0
        # Waits for the ledger's worker to start (about a second of CPU on a 2-core machine) before
        # any part is sent: otherwise the first rows wait for it, the engine idle.
        self.snapshot = self.ray.get(self.ledger.snapshot.remote())

    def __enter__(self):
        self.stop.__enter__()
        try:
            if self.pool is None:
                self.progress.phase(f"starting {self.spec.replicas.count} replica(s)")
                self.pool = start_pool(self.spec, stopping=lambda: self.stopping)
            self._engines_before = self._engines_last = self.pool.engine_stats()
        except BaseException:  # refused, interrupted or failed to start: the ledger and handlers go too
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.stop.__exit__(*exc)
        self.progress.close()
        if self.pool is not None and self._own_pool:
            self.pool.shutdown()
        self.ray.kill(self.ledger)

    def engine_report(self) -> dict[str, dict]:
        """Each replica's engine use during this session (``engine_usage``: busy fraction from vLLM's
        per-step stats, generated tokens, seconds); a replica started mid-job counts from its start."""
        from tierwise.ray_cluster.engine import engine_usage

        return {name: engine_usage(self._engines_before.get(name), after) for name, after in self.pool.engine_stats().items()}

    @property
    def interrupted(self) -> bool:
        """A signal came, or another driver took the output over."""
        return self.stop.signum is not None or (self.lease is not None and self.lease.lost)

    @property
    def stopping(self) -> bool:
        """Interrupted, a part sent now would not finish before the deadline, or the budget left covers
        no row of any part not yet sent (``floor``, checked once the ledger refused a row): send no
        more parts."""
        if self.interrupted or (self.deadline is not None and self.deadline.due(self._part_seconds())):
            return True
        if not self.budget_out and self.snapshot.get("n_denied") and self._floor() is not None:
            self.budget_out = self.floor.covers_none(self.snapshot["budget"] - self.snapshot["spent"])
        return self.budget_out

    def _floor(self):
        if self.floor_for is not None:
            self.floor, self.tokens = self.floor_for()
            self.floor_for = None
            for part in self.sent if self.floor is not None else []:
                self.floor.mark_sent(part)
        return self.floor

    def _part_seconds(self) -> float:
        """How long a part takes here (mean over the parts that ran so far; 0 before any)."""
        if getattr(self, "_mean_at", None) != len(self.summaries):
            seconds = [s["seconds"] for s in self.summaries.values() if s.get("seconds")]
            self._mean_at, self._mean = len(self.summaries), sum(seconds) / len(seconds) if seconds else 0.0
        return self._mean

    def meters(self) -> list[dict]:
        """Each replica's device time for this job (``tierwise.pipelines.plan.pricing.DeviceMeter``)."""
        return self.ray.get([a.meter.remote(self.ledger) for a in self.pool.actors.values()])

    def commit_left(self, parts: list[io.Part], status: str, tokens=None) -> None:
        """Writes ``parts`` ``status`` in bulk (``tierwise.jobs.skipping.commit_bulk``), as committed parts."""
        t0 = time.monotonic()
        lost = self.ray.get(self.ledger.part_spend.remote(self.spec.output.path))  # lost attempts' spend
        for summary in skipping.commit_bulk(self.spec, parts, status, tokens, lost).values():
            self.summaries[summary["part_id"]] = summary
            self.progress.part_done(summary)
        seconds = time.monotonic() - t0
        self.bulk_written.append({"status": status, "parts": len(parts), "rows": sum(p.length for p in parts),
                                  "seconds": round(seconds, 3)})
        log.info("%d part(s) written %s in %.2f s", len(parts), status, seconds)

    def save_ledger(self, force: bool = False) -> dict:
        self.snapshot = self.ray.get(self.ledger.snapshot.remote())
        if force or time.monotonic() - self._last_save > LEDGER_SAVE_EVERY_S:
            out = self.spec.output.path
            parts = self.ray.get(self.ledger.part_spend.remote(out))
            io.write_json(ledger_record(self.snapshot["spent"], self.snapshot["budget"], parts), out, LEDGER_FILE,
                          self.spec.output.storage_options)
            self._last_save = time.monotonic()
            self._report_engines()
        return self.snapshot

    def _report_engines(self) -> None:
        """Sends each replica's engine busy fraction since the last report to the ledger's metrics."""
        from tierwise.ray_cluster.engine import engine_usage

        now = self.pool.engine_stats() if self.pool is not None else {}
        busy = {name: engine_usage(self._engines_last.get(name), after)["busy_fraction"] for name, after in now.items()}
        self._engines_last = now
        self.ledger.record_engines.remote(busy)

    def run_parts(self, parts: list[io.Part], tier: Callable[[io.Part], Tier],
                  stop_when: Callable[[], bool] = lambda: False,
                  on_part: Callable[[dict], None] | None = None, max_inflight: int | None = None,
                  on_sent: Callable[[io.Part], None] | None = None) -> int:
        """Streams ``parts`` through the pool; returns how many were left unsent."""
        phase = "calibrating" if parts and getattr(tier(parts[0]), "name", "") == "calibration" else "running"
        if parts:
            self.progress.phase(phase)
        t0 = time.monotonic()
        with self._saving_ledger(t0), self._engine_phase(phase, t0):
            return self.pool.run(self.job, self.ledger, parts, _JobParts(self, tier, stop_when, on_part, on_sent),
                                 max_inflight=max_inflight, parts_per_replica=self.spec.replicas.parts_per_replica)

    def _mark_sent(self, part: io.Part, then: Callable[[io.Part], None] | None) -> None:
        self.sent.append(part)
        if self.floor is not None:  # a part sent is no longer the floor's to cover
            self.floor.mark_sent(part)
        if then is not None:
            then(part)

    @contextlib.contextmanager
    def _engine_phase(self, phase: str, t0: float):
        """Records the engines' use over one pool run (``engine_phases``): where a thin batch or an
        idle engine came from (calibration's parts, the ladder's rungs, the main phase)."""
        from tierwise.ray_cluster.engine import engine_usage

        before = self.pool.engine_stats()
        yield
        after = self.pool.engine_stats()
        self.engine_phases.append({"phase": phase, "wall_s": round(time.monotonic() - t0, 3),
                                   "engines": {n: engine_usage(before.get(n), a) for n, a in after.items()}})

    @contextlib.contextmanager
    def _saving_ledger(self, t0: float):
        """Saves the ledger after the pool's run, also when it stops the job (a storage error):
        what the stopped parts spent is recorded for the resume, where it can be written."""
        try:
            yield
        except BaseException:
            self.generate_wall_s += time.monotonic() - t0
            try:
                self.save_ledger(force=True)
            except Exception as exc:
                log.error("cannot save the ledger (%s); a resume will not know the last spend", exc)
            raise
        self.generate_wall_s += time.monotonic() - t0
        self.save_ledger(force=True)

    def run_side_parts(self, parts: list[io.Part], tier: Callable[[io.Part], Tier], job,
                       stop_when: Callable[[], bool] = lambda: False,
                       on_part: Callable[[dict], None] | None = None) -> dict[int, dict]:
        """Streams parts that are not the job's rows (the adaptive ladder's rung calibration) through the
        same pool and ledger, with their own ``job`` context (its output location); returns their
        summaries. They never enter ``summaries`` or the progress rows; a part whose retries are exhausted
        is left out (logged)."""
        self.progress.phase("calibrating rungs")
        handler = _SideParts(self, tier, stop_when, on_part, job=job)
        t0 = time.monotonic()
        with self._saving_ledger(t0), self._engine_phase("calibrating rungs", t0):
            self.pool.run(job, self.ledger, parts, handler, parts_per_replica=self.spec.replicas.parts_per_replica)
        return handler.summaries


@dataclass
class _SessionParts:
    """A session's side of a pool run (``tierwise.ray_cluster.pool.PartHandler``): each part's row program
    (``tiers``), the ledger saved as the pool polls, and the session's stop (or ``stop_when``)."""

    session: Session
    tiers: Callable[[io.Part], Tier]
    stop_when: Callable[[], bool] = lambda: False
    on_part: Callable[[dict], None] | None = None

    def tier(self, part: io.Part) -> Tier:
        return self.tiers(part)

    def poll(self) -> None:
        self.session.progress.spent(self.session.save_ledger()["spent"])

    def stopping(self) -> bool:
        return self.session.stopping or self.stop_when()

    def sent(self, part: io.Part) -> None:
        pass

    def done(self, summary: dict) -> None:
        if self.on_part is not None:
            self.on_part(summary)


@dataclass
class _JobParts(_SessionParts):
    """The job's own parts: committed into the session's summaries, progress and metrics; a part whose
    retries are exhausted is written as error rows carrying what its attempts spent."""

    on_sent: Callable[[io.Part], None] | None = None

    def sent(self, part: io.Part) -> None:
        self.session._tier_of[part.part_id] = getattr(self.tier(part), "name", "")
        self.session._mark_sent(part, self.on_sent)

    def done(self, summary: dict) -> None:
        s = self.session
        s.summaries[summary["part_id"]] = summary
        s.progress.part_done(summary)
        s.ledger.record_part.remote(s._tier_of.get(summary["part_id"], ""), summary)
        super().done(summary)

    def failed(self, part: io.Part, reason: str) -> None:
        s = self.session
        lost = s.ray.get(s.ledger.spent_on.remote((s.spec.output.path, part.part_id)))
        self.done(_commit_failed_part(s.spec, part, reason, lost))


@dataclass
class _SideParts(_SessionParts):
    """Parts that are not the job's rows (``Session.run_side_parts``): their summaries kept here; a part
    whose retries are exhausted is left out (logged)."""

    job: object = None
    summaries: dict[int, dict] = field(default_factory=dict)

    def done(self, summary: dict) -> None:
        self.summaries[summary["part_id"]] = summary
        super().done(summary)

    def failed(self, part: io.Part, reason: str) -> None:
        log.warning("side part %d (%s) failed: %s", part.part_id, self.job.output_uri, reason)


def run_job(spec: JobSpec, address: str | None = None, show_progress: bool = True,
            strict: bool = False, pool=None, overwrite: bool = False) -> dict:
    """Runs ``spec`` to completion (or resumes it) and returns the run report.

    ``pool``: replicas from ``start_pool`` to reuse (same model); by default the
    job starts its own and stops them at the end. ``overwrite``: move the output's
    old contents aside (``<output>.archived-<UTC time>``) and start afresh.

    Raises:
        InputError: the input is unusable as a whole; nothing was spent.
        StorageError: the output location cannot be written.
        OutputLeased: another driver is writing the output; nothing was done.
        JobChanged: the output holds another job's work (each change named); nothing was done.
        JobInterrupted: a signal stopped the job; finished parts are committed.
        LeaseLost: another driver took the output over; finished parts are committed.
        RowErrorsInStrictMode: ``strict`` and some rows ended as errors.
    """
    t0 = time.monotonic()
    spec = resolve_output_path(spec)
    preflight.check_job(spec)
    if pool is not None:
        _check_pool(spec, pool)
    files, n_rows, id_chunks = _check_input(spec)  # read-only: a bad input leaves no trace
    with OutputLease(spec.output.path, spec.output.storage_options) as lease:
        start = resume.prepare(spec, files, n_rows, id_chunks, overwrite)
        report = _run(spec, start, lease, t0, address, show_progress, pool)
    if report["_signum"] is not None:
        raise JobInterrupted(f"stopped by signal {report['_signum']} with {report['_unsent']} part(s) unsent; "
                             f"re-run the same spec to resume")
    if lease.lost:
        raise LeaseLost(f"another driver took over output {spec.output.path} (this one stalled past the lease's "
                        f"{lease.ttl_s:.0f} s); finished parts are committed")
    if strict and report["status"].get("error", 0):
        raise RowErrorsInStrictMode(f"{report['status']['error']} row(s) ended as errors (--strict)")
    return {k: v for k, v in report.items() if not k.startswith("_")}


def _run(spec: JobSpec, start: resume.Start, lease: OutputLease, t0: float, address: str | None,
         show_progress: bool, pool) -> dict:
    """Runs the parts ``start`` leaves to do; writes and returns the report (``_signum``,
    ``_unsent``: how it ended)."""
    out, so = spec.output.path, spec.output.storage_options
    # Fails fast (StorageError) on an output location that cannot be written.
    io.write_json(ledger_record(start.prior_spent, spec.budget.amount, start.prior_parts), out, LEDGER_FILE, so)
    todo = [p for p in start.parts if p.part_id not in start.done]
    log.info("%d rows in %d parts; %d done, %d to do, %.6g spent before", start.n_rows, len(start.parts),
             len(start.done), len(todo), start.prior_spent)
    deadline = skipping.job_deadline(spec, time.time() - (time.monotonic() - t0), sum(p.length for p in todo))
    ran = _Ran(dict(start.done), {"spent": start.prior_spent})
    if todo and start.prior_spent >= spec.budget.amount:  # nothing left to spend: no engine starts
        ran.summaries |= preflight.commit_skipped(spec, todo, start.prior_parts)
    elif todo and deadline is not None and deadline.due():  # no time left: no engine starts
        ran.summaries |= skipping.commit_bulk(spec, todo, "skipped_deadline", lost=start.prior_parts)
    elif todo:
        ran = _run_session(spec, start, todo, deadline, lease, address, show_progress, pool)
    elif spec.policy.kind == "adaptive":
        extra = io.read_json(out, "calibration.json", so) or {}
        ran.extra = {"adaptive": extra.get("summary", {})} if extra else {}
    report = _write_report(spec, start, ran, deadline, t0)
    return report | {"_signum": ran.signum, "_unsent": ran.unsent}


@dataclass
class _Ran:
    """What a run's parts came to: the summaries of every committed part, the ledger's last snapshot,
    the time spent generating, how it ended (a signal, parts unsent) and the report's extra sections."""

    summaries: dict[int, dict]
    snapshot: dict
    generate_wall_s: float = 0.0
    signum: int | None = None
    unsent: int = 0
    extra: dict = field(default_factory=dict)


def _policy_driver(spec: JobSpec, parts: list[io.Part], done: dict[int, dict]):
    """The policy's driver: uniform, or the adaptive policy's (sequential or plan-based)."""
    if spec.policy.kind == "adaptive" and spec.policy.planner == "sequential":
        from tierwise.jobs.sequential_driver import SequentialDriver

        return SequentialDriver(spec, parts, done)
    if spec.policy.kind == "adaptive":
        from tierwise.jobs.adaptive_driver import AdaptiveDriver

        return AdaptiveDriver(spec, parts, done)
    return UniformDriver(spec, parts, done)


def _run_session(spec: JobSpec, start: resume.Start, todo: list[io.Part], deadline: skipping.Deadline | None,
                 lease: OutputLease, address: str | None, show_progress: bool, pool) -> _Ran:
    """Starts the session (ledger, replicas) and runs ``todo`` through its policy; the parts the budget
    floor or the deadline left are written in bulk."""
    driver = _policy_driver(spec, start.parts, start.done)
    ran = _Ran(dict(start.done), {"spent": start.prior_spent})
    session = Session(spec, start.n_rows, start.done, start.prior_spent, address, show_progress, pool, lease,
                      prior_parts=start.prior_parts, deadline=deadline)
    try:
        with session:
            first = driver.first_round()
            session.floor_for = lambda: _budget_floor(session, todo, first)
            unsent = driver.run(session)
            extra = driver.report
            session.progress.phase("writing")
            ran.unsent = _commit_left_over(session, start.parts, unsent)
            extra["metering"] = _metering(spec, session.meters(), session.save_ledger(force=True))
            extra["bulk_written"] = session.bulk_written
            ran.summaries, ran.snapshot = session.summaries, session.snapshot
            ran.generate_wall_s = session.generate_wall_s
            ran.extra = extra | {"engines": session.engine_report(), "engine_phases": session.engine_phases}
    except StartInterrupted:  # a signal while the engines started: nothing ran, nothing was spent
        ran.unsent = len(todo)
    ran.signum = session.stop.signum
    return ran


def _write_report(spec: JobSpec, start: resume.Start, ran: _Ran, deadline: skipping.Deadline | None,
                  t0: float) -> dict:
    """Finishes the output's manifest for this attempt and writes ``run_report.json``; returns the report."""
    out, so = spec.output.path, spec.output.storage_options
    summaries, done = ran.summaries, start.done
    attempt = [s for pid, s in summaries.items() if done.get(pid) is not s]
    resume.finish(spec, start, attempt)
    report = build_report(spec, list(summaries.values()), ran.snapshot, start.n_rows, len(start.parts),
                          resumed_parts=len(done), wall_s=time.monotonic() - t0,
                          generate_wall_s=ran.generate_wall_s, attempt=attempt, prior_spent=start.prior_spent)
    report["output_path"] = out  # placeholders filled in
    report["redone_parts"] = start.check.redone()
    if start.archived:
        report["archived_output"] = start.archived
    report |= ran.extra
    report["by_tier"] = breakdown(io.read_output(out, so, ["tier", "bucket", "cost", "n_samples", "correct"]))
    report["complete"] = ran.unsent == 0 and len(summaries) == len(start.parts)
    if deadline is not None:
        report["deadline"] = {"at": datetime.fromtimestamp(deadline.at, UTC).isoformat(),
                              "finished_s_before": round(deadline.at - time.time(), 3)}
    io.write_json(report, out, "run_report.json", so)
    return report


def _budget_floor(session: Session, todo: list[io.Part], first: list[tuple[int, int]] | None):
    """The job's ``BudgetFloor`` and ``PromptTokens`` for rows whose first round is ``first`` (the
    same for every row; None where it is not), built on the ledger's first refusal. None, None where rows are skipped one by one through
    the ledger instead: prices metered (the driver does not know them), first rounds that differ
    by row, a tokenizer or chat rendering the driver does not have (logged)."""
    spec = session.spec
    b = spec.budget
    if b.metering == "measured" or first is None:
        return None, None
    try:
        from tierwise.jobs.skipping import BudgetFloor, PromptTokens

        max_len = min(i["max_model_len"] for i in session.pool.info().values())
        tokens = PromptTokens(spec.model.path, max_len, prompt_config(spec))
        price = cost_per_token(b.unit, b.tokens_per_gpu_hour, b.usd_per_gpu_hour)
        return BudgetFloor(spec, todo, first, tokens, price), tokens
    except Exception as exc:  # noqa: BLE001  (any failure: rows are skipped one by one, as before)
        log.warning("no bulk budget skip (rows the budget cannot cover are refused one by one): %s", exc)
        return None, None


def _commit_left_over(session: Session, parts: list[io.Part], unsent: int) -> int:
    """After the budget floor or the deadline stopped the job, writes the parts it left in bulk:
    ``skipped_budget`` or ``skipped_deadline``. A signal or a lost lease leaves them to a resume."""
    left = [p for p in parts if p.part_id not in session.summaries]
    if not left or session.interrupted:
        return unsent
    if session.budget_out:
        session.commit_left(left, "skipped_budget", session.tokens)
    elif session.deadline is not None and session.deadline.due(session._part_seconds()):
        session.commit_left(left, "skipped_deadline")
    else:
        return unsent
    return 0


def _metering(spec: JobSpec, meters: list[dict], snapshot: dict) -> dict:
    """What the replicas measured beside what the ledger settled (``run_report.json``'s ``metering``)."""
    device_s = sum(m["device_seconds"] for m in meters)
    return {"kind": spec.budget.metering, "unit": spec.budget.unit, "device_seconds": device_s,
            "device_hours": device_s / 3600.0, "unattributed_s": sum(m["unattributed_s"] for m in meters),
            "spent": snapshot["spent"], "replicas": meters}


def _commit_failed_part(spec: JobSpec, part: io.Part, reason: str, lost: float = 0.0) -> dict:
    """Writes a part whose retries are exhausted as row-level error records, carrying ``lost``,
    what its failed attempts spent."""
    import polars as pl

    from tierwise.ray_cluster.replica import summarize

    ids = pl.from_arrow(io.read_part(part, [spec.input.id_column], spec.input.storage_options))
    recs = [records.empty_record(i, "error", f"part failed after retries: {reason}", cause="job")
            for i in ids.to_series().cast(pl.String).to_list()]
    table = records.with_lost_cost(records.to_table(recs), lost)
    summary = summarize(part.part_id, table, 0.0)
    io.write_part(table, spec.output.path, part.part_id, summary, spec.output.storage_options)
    return summary
