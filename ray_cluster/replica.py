"""A replica: one Ray actor hosting one vLLM engine, processing input parts.

Each part's rows run as concurrent coroutines (bounded by ``max_rows_in_flight``)
against the async engine, and the pool sends a replica more than one part at a
time, so the engine stays full across part boundaries. Every request reserves its
worst-case cost first and settles the actual cost after, inside the replica's lease
on the job's ledger (``LedgerClient``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow.compute as pc
import ray

from tierwise.pipelines.data import io, records
from tierwise.pipelines.data.errors import EngineDead, StorageError
from tierwise.pipelines.data.prompts import PromptConfig, row_prompts, row_sampling, variant_ids
from tierwise.pipelines.plan.pricing import DeviceMeter, Pricer, PriceSpec
from tierwise.pipelines.tiers.answers import make_extractor
from tierwise.pipelines.tiers.base import Tier
from tierwise.pipelines.tiers.judge import JudgeConfig
from tierwise.pipelines.tiers.reasoning import ReasoningConfig
from tierwise.pipelines.tiers.verifiers import ReferenceConfig
from tierwise.ray_cluster.engine import EngineSpec, VllmEngine
from tierwise.ray_cluster.ledger import LedgerClient
from tierwise.ray_cluster.rows import RowRunner
from tierwise.ray_cluster.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a part needs to know about its job; cheap to pickle, sent with each
    part, so one pool of engines can serve several jobs in turn."""

    output_uri: str
    id_column: str
    prompt: PromptConfig
    gold_column: str | None
    cost_per_token: float
    extractor: str = "full"
    verifier: str | JudgeConfig | None = None
    keep_samples: bool = False
    seed: int = 0
    input_storage: dict[str, Any] = field(default_factory=dict)
    output_storage: dict[str, Any] = field(default_factory=dict)
    row_features: tuple[tuple[str, str], ...] = ()  # (feature name, input column): difficulty signals per row
    abort_failed_steps: bool = False  # stop a sample at its first step the verifier's prefix check fails
    sampling_columns: tuple[tuple[str, str], ...] = ()  # (sampling field, input column): per-row sampling
    structured: tuple[str, str] | None = None  # every request's constraint (SamplingConfig.structured)
    verifier_timeout_s: float = 30.0  # how long a user verifier's call may take (then its score is null)
    pricing: PriceSpec | None = None  # weighted / metered prices (None: cost_per_token per token)
    rows_stop_at: float | None = None  # the deadline for rows (unix seconds): no round starts past it
    reasoning: ReasoningConfig | None = None  # thought/answer markers and thinking budget (tierwise.pipelines.tiers.reasoning)


@ray.remote
class ReplicaActor:
    """Hosts one engine (two with a judge model of its own); built cheaply, the
    engines themselves start in ``start``."""

    def __init__(self, engine: EngineSpec, name: str, max_rows_in_flight: int | None = None,
                 judge: EngineSpec | None = None, max_engine_restarts: int = 2):
        self.name = name
        self.engine = VllmEngine(engine, max_engine_restarts)
        self.judge_engine = VllmEngine(judge, max_engine_restarts) if judge is not None else None
        self.max_rows_in_flight = max_rows_in_flight
        self._sem = None
        self._scorers: dict = {}
        self._chat_templates: dict[str | None, str | None] = {}  # prompt.chat_template -> resolved template
        self._ledgers: dict[str, list] = {}  # ledger actor -> [its client, parts using it]
        self._halted: dict[str, _Halt] = {}  # ledger actor -> its job's stop flag (``halt``)
        self._meters: dict[str, DeviceMeter] = {}  # ledger actor -> the job's device time here
        self._unstarted: dict[tuple[str, int], int] = {}  # (output, part id) -> its rows not yet started

    async def start(self) -> dict:
        """Builds the engines inside this worker; returns what the driver needs."""
        if self.engine.max_model_len == 0:
            self.engine.start()
            # A few more rows than the engine batches keep its waiting queue full while rows
            # change over (a row's next request waits on the ledger and on its own bookkeeping).
            self.max_rows_in_flight = self.max_rows_in_flight or math.ceil(1.5 * self.engine.max_num_seqs)
            self._sem = asyncio.Semaphore(self.max_rows_in_flight)
        if self.judge_engine is not None and self.judge_engine.max_model_len == 0:
            self.judge_engine.start()
        engines = [e for e in (self.engine, self.judge_engine) if e is not None]
        return {"max_model_len": self.engine.max_model_len, "max_rows_in_flight": self.max_rows_in_flight,
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "engine_pids": [pid for e in engines for pid in e.core_pids()],
                "engine_restarts": sum(e.restarts for e in engines)}

    async def unstarted_rows(self) -> dict[tuple[str, int], int]:
        """Rows not yet started (waiting for a place among the rows in flight) of each part this
        replica is running, by (output, part id): how the pool knows when to send the next part."""
        return dict(self._unstarted)

    async def engine_stats(self) -> dict:
        """The main engine's ``EngineMeter`` totals so far (vLLM's per-step stats)."""
        return self.engine.meter.snapshot()

    async def halt(self, ledger) -> None:
        """Stops the parts of the job of ``ledger`` (its output cannot be written): their rows
        start no new round, and each part returns what it spent, uncommitted."""
        self._halt_flag(ledger).stopped = True

    def _halt_flag(self, ledger) -> _Halt:
        return self._halted.setdefault(ledger._actor_id.hex(), _Halt())

    def _pricer(self, ledger, job: JobContext) -> Pricer:
        """The job's prices on this replica, over its one device meter (shared by its parts here)."""
        spec = job.pricing or PriceSpec(job.cost_per_token)
        return Pricer(spec, self._meters.setdefault(ledger._actor_id.hex(), DeviceMeter(spec.devices)))

    async def meter(self, ledger) -> dict:
        """The device time this replica held for the job of ``ledger`` (``DeviceMeter.snapshot``)."""
        meter = self._meters.get(ledger._actor_id.hex())
        return meter.snapshot() if meter is not None else DeviceMeter().snapshot()

    def _scoring(self, job: JobContext) -> Scorer:
        """The job's scorer (answer extractor, verifier or judge), built once per replica."""
        key = (job.extractor, job.verifier, job.verifier_timeout_s)
        if key not in self._scorers:
            judge_engine = None
            if isinstance(job.verifier, JudgeConfig):
                judge_engine = self.engine if job.verifier.model is None else self.judge_engine
                if judge_engine is None or (job.verifier.model is not None
                                            and judge_engine.spec.model != job.verifier.model):
                    hosted = self.judge_engine.spec.model if self.judge_engine else None
                    raise ValueError(f"the job's judge model {job.verifier.model!r} is not hosted by this "
                                     f"replica (judge engine: {hosted!r}); start the pool from the job's spec")
            self._scorers[key] = Scorer(make_extractor(job.extractor), job.verifier, judge_engine,
                                        job.verifier_timeout_s)
        return self._scorers[key]

    async def process_part(self, part: io.Part, job: JobContext, tier: Tier, ledger) -> dict:
        """Generates for every row of ``part`` with the row program ``tier``, drawing
        on ``ledger``; commits the part and returns its summary.

        Two other answers, never committed: a part whose write failed returns its finished
        table (``{"unwritten": True, "table", "summary", "error", "permanent"}``), so a retry
        writes it without generating it again; a part of a halted job (``halt``) returns
        ``{"halted": True, "cost"}``, what its rows spent. A part committed after lost attempts
        (the ledger's spend on it beyond its rows' own) carries their spend (``lost_cost``). An
        engine that died for good ends this actor (``_give_up``): the pool replaces it and
        retries its parts."""
        t0 = time.monotonic()
        rows = self._read_rows(part, job)
        scorer = self._part_scorer(part, job, rows)
        halt = self._halt_flag(ledger)
        recs, part_spent = await self._run_rows(part, job, tier, ledger, rows, scorer, halt)
        if scorer is None:  # the job's configuration failed these rows, not their input: redone on resume
            for r, own in zip(recs, rows.own_errors):
                r["error_cause"] = r["error_cause"] if own else "job"
        if halt.stopped:
            return {"part_id": part.part_id, "halted": True, "cost": float(sum(r.get("cost") or 0.0 for r in recs))}
        return self._commit(part, job, recs, rows.golds, part_spent, t0)

    def _read_rows(self, part: io.Part, cfg: JobContext) -> _PartRows:
        """The part's rows as its row runner reads them: ids, golds, difficulty features, prompts (token ids),
        per-row sampling and references, each row's own input error, and a job-level error if any."""
        feats = dict(cfg.row_features)
        cols = [cfg.id_column] + cfg.prompt.columns() + ([cfg.gold_column] if cfg.gold_column else [])
        cols += list(dict(cfg.sampling_columns).values())
        ref_col = cfg.verifier.column if isinstance(cfg.verifier, ReferenceConfig) else None
        cols += [ref_col] if ref_col else []
        cols = list(dict.fromkeys(cols))
        frame = pl.from_arrow(io.read_part(part, cols + sorted(set(feats.values()) - set(cols)), cfg.input_storage))
        ids = frame[cfg.id_column].cast(pl.String).to_list()
        golds = frame[cfg.gold_column].cast(pl.String).to_list() if cfg.gold_column else [None] * len(ids)
        features = frame.select(pl.col(c).cast(pl.Float64).alias(k) for k, c in feats.items()).to_dicts() \
            if feats else [{}] * len(ids)
        prompts, errors, token_ids, job_error = self._prompt_ids(frame, cfg.prompt)
        sampling, sampling_errors = row_sampling(frame, dict(cfg.sampling_columns))
        references, ref_errors = reference_answers(frame, ref_col)
        errors = [e or s or r for e, s, r in zip(errors, sampling_errors, ref_errors)]
        return _PartRows(ids, golds, features, prompts, errors, errors, token_ids, sampling, references, job_error)

    def _part_scorer(self, part: io.Part, cfg: JobContext, rows: _PartRows) -> Scorer | None:
        """The job's scorer; None with a job-level error (a judge this replica does not host, prompts
        it cannot render), which then fails every row (``rows.errors``)."""
        scorer, job_error = None, rows.job_error
        try:
            scorer = self._scoring(cfg)
        except ValueError as exc:  # a judge this replica does not host: every row reports it
            job_error = job_error or f"{type(exc).__name__}: {exc}"
        if job_error:
            log.error("part %s: %s", part.part_id, job_error)
            rows.errors = [e or job_error for e in rows.errors]
            return None
        return scorer

    async def _run_rows(self, part: io.Part, cfg: JobContext, tier: Tier, ledger, rows: _PartRows,
                        scorer: Scorer | None, halt: _Halt) -> tuple[list[dict], float]:
        """Runs every row of the part (``RowRunner``); returns their records and what the ledger holds
        spent on the part (this attempt's and any lost one's). An engine dead for good ends the actor."""
        key = (cfg.output_uri, part.part_id)
        self._unstarted[key] = len(rows.ids)

        def started() -> None:
            if key in self._unstarted:
                self._unstarted[key] -= 1

        async with self._ledger_client(ledger) as client:
            runner = RowRunner(self.engine, self._sem, tier, client.for_part(key), scorer, cfg.seed,
                               self._pricer(ledger, cfg), cfg.keep_samples, cfg.abort_failed_steps, halt,
                               cfg.rows_stop_at, cfg.structured, cfg.reasoning, started)
            # Every row runs to its end (a row raises only EngineDead), so no row is left spending.
            try:
                recs = await asyncio.gather(*(runner.run(*row) for row in rows.runner_args()),
                                            return_exceptions=True)
            finally:
                self._unstarted.pop(key, None)
            if lost := next((r for r in recs if isinstance(r, EngineDead)), None):
                await self._give_up(part, lost)
            if other := next((r for r in recs if isinstance(r, BaseException)), None):
                raise other
            await client.drain()  # every settlement is in the ledger before the part commits
            part_spent = await ledger.spent_on.remote(key)
        return recs, part_spent

    def _commit(self, part: io.Part, cfg: JobContext, recs: list[dict], golds: list, part_spent: float,
                t0: float) -> dict:
        """Grades the records, adds what lost attempts spent (``lost_cost``) and writes the part; returns
        its summary, or, when the write fails, the finished table for the driver to write."""
        for r, g in zip(recs, golds):
            if g is not None:  # rows without an answer (skipped, error) count as wrong
                r["correct"] = r.get("answer") is not None and r["answer"] == g.strip()
        table = records.to_table(recs)
        own = pc.sum(table.column("cost")).as_py() or 0.0
        table = records.with_lost_cost(table, records.lost_spend(part_spent, own))
        summary = summarize(part.part_id, table, time.monotonic() - t0)
        try:
            io.write_part(table, cfg.output_uri, part.part_id, summary, cfg.output_storage)
        except StorageError as exc:
            log.error("part %d is done but cannot be committed: %s", part.part_id, exc)
            return {"part_id": part.part_id, "unwritten": True, "table": table, "summary": summary,
                    "error": str(exc), "permanent": exc.permanent}
        return summary

    def _prompt_ids(self, frame: pl.DataFrame, cfg: PromptConfig):
        """The part's prompts: ``(texts, row errors, token ids, job error)``. Chat rows are rendered
        by the model's chat template (or ``cfg.chat_template``), raw ones tokenized as they are; a row
        the template rejects gets its error. A job error (rows that need a chat template the model
        lacks) fails every row as the job's, never as the rows' own."""
        key = cfg.chat_template
        if key not in self._chat_templates:
            self._chat_templates[key] = self.engine.chat_template(key)
        template = self._chat_templates[key]
        chat = cfg.chat if cfg.chat is not None else template is not None
        rows = row_prompts(frame, cfg, chat)
        n = len(rows.errors)
        if chat and template is None:
            return rows.text, rows.errors, [None] * n, (
                f"the model {self.engine.spec.model!r} has no chat template: set prompt.chat_template, or "
                "prompt.chat false (raw prompts; no system_prompt or messages_column)")
        valid = [i for i, e in enumerate(rows.errors) if not e]
        token_ids: list = [None] * n
        errors = list(rows.errors)
        if chat:
            rendered = self.engine.render_chat([rows.messages[i] for i in valid], template, cfg.chat_template_kwargs)
            if cfg.variants:  # each row's renderings by name (None: the job's), for the rungs that read their own
                rendered = variant_ids(rendered, {name: self.engine.render_chat(
                    [rows.messages[i] for i in valid], template, kw) for name, kw in cfg.variant_kwargs().items()})
        elif cfg.variants:
            return rows.text, rows.errors, [None] * n, (
                "policy.rung_chat_template_kwargs needs chat prompts: the model has no chat template or prompt.chat "
                "is false")
        else:  # one tokenizer call for the part's valid prompts (per-row calls cost the event loop)
            rendered = self.engine.tokenize_many([rows.text[i] for i in valid])
        for i, t in zip(valid, rendered):
            if isinstance(t, str):
                errors[i] = t
            else:
                token_ids[i] = t
        return rows.text, errors, token_ids, None

    async def _give_up(self, part: io.Part, exc: EngineDead) -> None:
        """Ends this actor: its engine is dead for good. What its parts' rows spent so far is
        reported to the ledgers first (the pool releases what they still hold); the parts
        fail as a lost actor's do, and the pool replaces the replica and retries them."""
        log.error("replica %s gives up on part %d: %s", self.name, part.part_id, exc)
        for client, _ in list(self._ledgers.values()):
            try:
                await asyncio.wait_for(client.drain(), 10)
            except Exception:  # best effort: the ledger keeps what it was told
                log.exception("reporting spend before exit failed")
        for engine in (self.judge_engine, self.engine):
            try:
                if engine is not None:
                    engine.shutdown()
            except Exception:
                pass
        os._exit(1)

    @contextlib.asynccontextmanager
    async def _ledger_client(self, ledger):
        """The replica's client of a job's ledger, shared by the job's parts on this replica
        (one lease); its lease goes back once no part of the job is running here. A part
        that fails leaves it to the pool, which releases a lost replica's reservations."""
        key = ledger._actor_id.hex()
        entry = self._ledgers.setdefault(key, [LedgerClient(ledger, self.name), 0])
        entry[1] += 1
        ok = False
        try:
            yield entry[0]
            ok = True
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._ledgers[key]
                if ok:
                    await entry[0].close()

    async def shutdown(self) -> None:
        self.engine.shutdown()


@dataclass
class _PartRows:
    """A part's rows, column by column, as ``RowRunner.run`` takes them. ``errors``: each row's error
    (its own, or the job's once a job-level error fails every row); ``own_errors``: its own only."""

    ids: list[str]
    golds: list[str | None]
    features: list[dict]
    prompts: list
    errors: list[str | None]
    own_errors: list[str | None]
    token_ids: list
    sampling: list
    references: list
    job_error: str | None

    def runner_args(self):
        """Each row's arguments to ``RowRunner.run``."""
        return zip(self.ids, self.prompts, self.errors, self.features, self.token_ids, self.sampling,
                   self.references)


class _Halt:
    """A job's stop flag on a replica, read by its rows before each round."""

    stopped = False


def reference_answers(frame: pl.DataFrame, column: str | None) -> tuple[list, list]:
    """Each row's reference answer (a reference verifier's ``column``, as text) and its error: a null or
    empty reference is the row's error, naming the column."""
    if column is None:
        return [None] * frame.height, [None] * frame.height
    refs = frame[column].cast(pl.String)
    bad = refs.is_null() | (refs.str.strip_chars() == "")
    errors = pl.select(pl.when(bad).then(pl.lit(f"reference answer (verifier.column {column!r}) is null or empty"))
                       .otherwise(pl.lit(None, pl.String)).alias("e"))["e"]
    return refs.to_list(), errors.to_list()


def summarize(part_id: int, table, seconds: float) -> dict:
    """Per-part counts merged by the driver into the run report."""
    df = pl.from_arrow(table.select(["status", "prompt_tokens", "output_tokens", "cost", "lost_cost", "correct",
                                     "n_samples", "judge_tokens"]))
    status = dict(df.group_by("status").len().iter_rows())
    judge = {}
    if df["judge_tokens"].is_not_null().any():
        issues: dict[str, int] = {}
        for row in table.column("judge_issues").to_pylist():
            for reason, count in row or ():
                issues[reason] = issues.get(reason, 0) + count
        judge = {"judge_tokens": int(df["judge_tokens"].sum()), "judge_issues": issues}
    verifier_issues: dict[str, int] = {}
    for row in table.column("verifier_issues").to_pylist():
        for reason, count in row or ():
            verifier_issues[reason] = verifier_issues.get(reason, 0) + count
    if verifier_issues:
        judge["verifier_issues"] = verifier_issues
    return judge | {
        "part_id": part_id, "rows": df.height, "status": {s: int(status.get(s, 0)) for s in records.STATUSES},
        "prompt_tokens": int(df["prompt_tokens"].fill_null(0).sum()),
        "output_tokens": int(df["output_tokens"].sum()), "cost": float(df["cost"].sum()),
        "lost_cost": float(df["lost_cost"].fill_null(0.0).sum()),
        "samples": int(df["n_samples"].sum()),
        "correct": int(df["correct"].fill_null(False).sum()), "graded": int(df["correct"].is_not_null().sum()),
        "seconds": seconds,
    }
