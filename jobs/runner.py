"""The front door: ``run_job(spec)`` runs a whole tierwise job and returns its report.

Driver-side work is cheap: read footers, check ids, plan parts, start the ledger
and the replicas, then stream parts through the pool and merge their summaries.
The policy decides which row program (tier) each part runs with: the uniform
policy uses one tier; the adaptive policy (``jobs.adaptive_driver``) first runs a
calibration slice, then a plan it re-fits as real costs come in.

Resume: re-running the same spec (same output location) skips committed parts.
The budget survives crashes: ``_tierwise/ledger.json`` records everything spent
so far, including work of parts that never committed (it was spent); a resumed
run starts its ledger there, so the total across attempts never passes the budget.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable

from jobs.progress import Progress
from jobs.spec import (
    JobSpec,
    JudgeSpec,
    SamplingSpec,
    SpecError,
    UniformPolicy,
    aborts_failed_steps,
    difficulty_columns,
)
from pipelines import io, records
from pipelines.budget import cost_per_token
from pipelines.errors import TierwiseError
from pipelines.report import breakdown, build_report
from pipelines.search import SearchTier
from pipelines.tiers import Tier, think_tier, uniform_tier
from pipelines.validation import check_columns, check_unique_ids

log = logging.getLogger(__name__)

LEDGER_FILE = "_tierwise/ledger.json"
LEDGER_SAVE_EVERY_S = 5.0


class JobInterrupted(TierwiseError):
    """SIGINT/SIGTERM stopped the job after draining; re-run the spec to resume."""


class RowErrorsInStrictMode(TierwiseError):
    """``--strict``: some rows ended as errors (their parts are committed)."""


def _check_input(spec: JobSpec) -> tuple[list[io.InputFile], int]:
    inp = spec.input
    files = io.list_input_files(inp.path, inp.storage_options)
    required = {"id_column": inp.id_column, "prompt_column": inp.prompt_column, "gold_column": inp.gold_column}
    required |= {f"policy.difficulty.{'column' if k == 'difficulty_hint' else 'feature_columns'}[{col}]": col
                 for k, col in difficulty_columns(spec).items()}
    for f in files:
        check_columns(io.read_schema(f, inp.storage_options), required, f.path)
    n_rows = check_unique_ids(list(io.iter_column(files, inp.id_column, inp.storage_options)), inp.id_column)
    return files, n_rows


def policy_tier(policy: UniformPolicy, s: SamplingSpec) -> Tier:
    """The row program of a uniform policy: its ``tier`` (sample / think / search)."""
    weighted, logprobs = policy.select == "verifier", bool(s.logprobs)
    if policy.tier == "think":
        return think_tier(policy.n, s.temperature, s.top_p, policy.think_max_tokens or 4 * s.max_tokens, weighted,
                          logprobs)
    if policy.tier == "search":
        b = policy.search_spec
        return SearchTier(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                          beam_width=b.beam_width, expansions=b.expansions, max_steps=b.max_steps,
                          step_stop=b.step_stop, allocate=b.allocate)
    return uniform_tier(policy.n, s.temperature, s.top_p, s.max_tokens, weighted, logprobs)


def job_context(spec: JobSpec):
    from ray_cluster.replica import JobContext

    b = spec.budget
    verifier = spec.verifier
    if isinstance(verifier, JudgeSpec):
        verifier = verifier.config(spec.model.path, spec.sampling.max_tokens)
    return JobContext(
        output_uri=spec.output.path, id_column=spec.input.id_column, prompt_column=spec.input.prompt_column,
        gold_column=spec.input.gold_column,
        cost_per_token=cost_per_token(b.unit, b.tokens_per_gpu_hour, b.usd_per_gpu_hour),
        extractor=spec.answer_extractor, verifier=verifier, keep_samples=spec.output.keep_samples,
        seed=spec.sampling.seed, input_storage=spec.input.storage_options, output_storage=spec.output.storage_options,
        row_features=tuple(difficulty_columns(spec).items()), abort_failed_steps=aborts_failed_steps(spec),
        verifier_timeout_s=spec.verifier_timeout_s,
    )


def judge_model(spec: JobSpec) -> str | None:
    """The model of the spec's judge when it needs an engine of its own, else None."""
    v = spec.verifier
    return v.model if isinstance(v, JudgeSpec) and v.model not in (None, spec.model.path) else None


def start_pool(spec: JobSpec, address: str | None = None):
    """Starts the spec's replicas (engines built inside the workers; with a judge model
    of its own, a second engine on each). Pass the pool to several ``run_job`` calls
    with the same model (and judge model) to start engines once."""
    from ray_cluster.cluster import connect
    from ray_cluster.engine import EngineSpec
    from ray_cluster.pool import PoolConfig, ReplicaPool

    connect(address)
    m, r = spec.model, spec.replicas
    judge = None
    if (jm := judge_model(spec)) is not None:
        judge = EngineSpec(jm, None, m.dtype, spec.sampling.seed, spec.verifier.engine_kwargs)
    return ReplicaPool(EngineSpec(m.path, m.max_model_len, m.dtype, spec.sampling.seed, m.engine_kwargs),
                       PoolConfig(r.count, r.num_cpus, r.num_gpus, r.max_part_retries,
                                  max_rows_in_flight=r.max_rows_in_flight,
                                  max_engine_restarts=r.max_engine_restarts), judge)


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
                 address: str | None, show_progress: bool, pool=None):
        from ray_cluster.cluster import connect
        from ray_cluster.ledger import BudgetLedger

        self.spec, self.summaries = spec, dict(committed)
        self.ray = connect(address)
        # The ledger lives beside the driver: losing a worker node never loses the budget.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = self.ray.get_runtime_context().get_node_id()
        self.ledger = BudgetLedger.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(spec.budget.amount, prior_spent)
        self.progress = Progress(n_rows, spec.budget.amount, spec.budget.unit, done=committed.values(),
                                 enabled=show_progress)
        self.pool, self._own_pool = pool, pool is None
        self.job = job_context(spec)
        self.stop = _StopOnSignal()
        self.generate_wall_s = 0.0
        self._last_save = 0.0
        # Waits for the ledger's worker to start (about a second of CPU on a 2-core machine) before
        # any part is sent: otherwise the first rows wait for it, the engine idle.
        self.snapshot = self.ray.get(self.ledger.snapshot.remote())

    def __enter__(self):
        self.stop.__enter__()
        if self.pool is None:
            self.pool = start_pool(self.spec)
        return self

    def __exit__(self, *exc):
        self.stop.__exit__(*exc)
        self.progress.close()
        if self.pool is not None and self._own_pool:
            self.pool.shutdown()
        self.ray.kill(self.ledger)

    @property
    def stopping(self) -> bool:
        return self.stop.signum is not None

    def save_ledger(self, force: bool = False) -> dict:
        self.snapshot = self.ray.get(self.ledger.snapshot.remote())
        if force or time.monotonic() - self._last_save > LEDGER_SAVE_EVERY_S:
            io.write_json({"spent": self.snapshot["spent"], "budget": self.snapshot["budget"]},
                          self.spec.output.path, LEDGER_FILE, self.spec.output.storage_options)
            self._last_save = time.monotonic()
        return self.snapshot

    def run_parts(self, parts: list[io.Part], tier: Callable[[], Tier],
                  stop_when: Callable[[], bool] = lambda: False,
                  on_part: Callable[[dict], None] | None = None, max_inflight: int | None = None,
                  on_sent: Callable[[io.Part], None] | None = None) -> int:
        """Streams ``parts`` through the pool; returns how many were left unsent."""

        def on_done(summary: dict) -> None:
            self.summaries[summary["part_id"]] = summary
            self.progress.part_done(summary)
            if on_part is not None:
                on_part(summary)

        def on_failed(part: io.Part, reason: str) -> None:
            on_done(_commit_failed_part(self.spec, part, reason))

        t0 = time.monotonic()
        with self._saving_ledger(t0):
            return self.pool.run(self.job, self.ledger, parts, tier, on_done, on_failed,
                                 poll=lambda: self.progress.spent(self.save_ledger()["spent"]),
                                 stopping=lambda: self.stopping or stop_when(), max_inflight=max_inflight,
                                 on_sent=on_sent, parts_per_replica=self.spec.replicas.parts_per_replica)

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

    def run_side_parts(self, parts: list[io.Part], tier: Callable[[], Tier], job,
                       stop_when: Callable[[], bool] = lambda: False,
                       on_part: Callable[[dict], None] | None = None) -> dict[int, dict]:
        """Streams parts that are not the job's rows (the adaptive ladder's rung calibration) through the
        same pool and ledger, with their own ``job`` context (its output location); returns their
        summaries. They never enter ``summaries`` or the progress rows; a part whose retries are exhausted
        is left out (logged)."""
        done: dict[int, dict] = {}

        def on_done(summary: dict) -> None:
            done[summary["part_id"]] = summary
            if on_part is not None:
                on_part(summary)

        def on_failed(part: io.Part, reason: str) -> None:
            log.warning("side part %d (%s) failed: %s", part.part_id, job.output_uri, reason)

        t0 = time.monotonic()
        with self._saving_ledger(t0):
            self.pool.run(job, self.ledger, parts, tier, on_done, on_failed,
                          poll=lambda: self.progress.spent(self.save_ledger()["spent"]),
                          stopping=lambda: self.stopping or stop_when(),
                          parts_per_replica=self.spec.replicas.parts_per_replica)
        return done


def run_job(spec: JobSpec, address: str | None = None, show_progress: bool = True,
            strict: bool = False, pool=None) -> dict:
    """Runs ``spec`` to completion (or resumes it) and returns the run report.

    ``pool``: replicas from ``start_pool`` to reuse (same model); by default the
    job starts its own and stops them at the end.

    Raises:
        InputError: the input is unusable as a whole; nothing was spent.
        StorageError: the output location cannot be written.
        JobInterrupted: a signal stopped the job; finished parts are committed.
        RowErrorsInStrictMode: ``strict`` and some rows ended as errors.
    """
    t0 = time.monotonic()
    if pool is not None:
        _check_pool(spec, pool)
    files, n_rows = _check_input(spec)
    parts = io.plan_parts(files, spec.output.part_rows)
    out, so = spec.output.path, spec.output.storage_options
    committed = io.with_retries(lambda: io.committed_parts(out, so), f"list output {out}")
    saved = io.read_json(out, LEDGER_FILE, so) or {}
    prior_spent = max(sum(s.get("cost", 0.0) for s in committed.values()), float(saved.get("spent", 0.0)))
    # Fails fast (StorageError) on an output location that cannot be written.
    io.write_json({"spent": prior_spent, "budget": spec.budget.amount}, out, LEDGER_FILE, so)
    todo = [p for p in parts if p.part_id not in committed]
    log.info("%d rows in %d parts; %d committed, %.6g spent before", n_rows, len(parts), len(committed), prior_spent)

    s = spec.sampling
    extra: dict = {}
    summaries, snapshot, generate_wall_s, signum = dict(committed), {"spent": prior_spent}, 0.0, None
    unsent = 0
    if todo:
        if spec.policy.kind == "adaptive":
            from jobs.adaptive_driver import AdaptiveDriver

            driver = AdaptiveDriver(spec, parts, committed)
        else:
            driver = None
            tier = policy_tier(spec.policy, s)
        with Session(spec, n_rows, committed, prior_spent, address, show_progress, pool) as session:
            if driver is None:
                unsent = session.run_parts(todo, lambda: tier)
            else:
                unsent = driver.run(session)
                extra = driver.report
            summaries, snapshot = session.summaries, session.snapshot
            generate_wall_s, signum = session.generate_wall_s, session.stop.signum
    elif spec.policy.kind == "adaptive":
        extra = io.read_json(out, "calibration.json", so) or {}
        extra = {"adaptive": extra.get("summary", {})} if extra else {}

    report = build_report(spec, list(summaries.values()), snapshot, n_rows, len(parts),
                          resumed_parts=len(committed), wall_s=time.monotonic() - t0,
                          generate_wall_s=generate_wall_s)
    report |= extra
    report["by_tier"] = breakdown(io.read_output(out, so, ["tier", "bucket", "cost", "n_samples", "correct"]))
    report["complete"] = unsent == 0 and len(summaries) == len(parts)
    io.write_json(report, out, "run_report.json", so)
    if signum is not None:
        raise JobInterrupted(f"stopped by signal {signum} with {unsent} part(s) unsent; "
                             f"re-run the same spec to resume")
    if strict and report["status"].get("error", 0):
        raise RowErrorsInStrictMode(f"{report['status']['error']} row(s) ended as errors (--strict)")
    return report


def _commit_failed_part(spec: JobSpec, part: io.Part, reason: str) -> dict:
    """Writes a part whose retries are exhausted as row-level error records."""
    import polars as pl

    from ray_cluster.replica import summarize

    ids = pl.from_arrow(io.read_part(part, [spec.input.id_column], spec.input.storage_options))
    recs = [records.empty_record(i, "error", f"part failed after retries: {reason}")
            for i in ids.to_series().cast(pl.String).to_list()]
    table = records.to_table(recs)
    summary = summarize(part.part_id, table, 0.0)
    io.write_part(table, spec.output.path, part.part_id, summary, spec.output.storage_options)
    return summary
