"""ReplicaPool: keeps every replica busy with a bounded number of parts in flight.

Parts are deterministic slices of the input (``tierwise.pipelines.data.io.Part``). A replica is
sent parts while its rows not yet started (its own count, ``ReplicaActor.unstarted_rows``) fall
short of its rows in flight (``max_rows_in_flight``), so the engine's queue stays full while a
part's last rows finish and it commits, however long those last rows run; memory stays flat
however large the input is (a replica holds at most ``HELD_ROWS_FACTOR`` times its rows in flight
beside its first part). A job's ``parts_per_replica`` (``pool.run``) sets a fixed count instead. A replica that
dies (the actor lost, or its engine dead for good: it then ends itself) is replaced
and its parts retried (bounded, with backoff); its budget reservations are released.
A part that keeps failing is committed as row-level ``error`` records, never dropped.

A part that is done but cannot be committed comes back with its finished table, and
only its write is retried (from the driver, bounded): it is never generated twice. On
a permanent storage error (access denied, no such bucket or path), or once the write
retries run out, the pool stops the job at once: no new part is sent, the parts in
flight stop starting rounds and return uncommitted, and ``run`` raises ``StorageError``.

The pool knows engines, not jobs: the job's context, row program and ledger go
with each part, so one pool (engines started once) can run several jobs in turn.

Why not Ray Data's ``map_batches``: tierwise commits output per deterministic part
together with that part's settled spend, which is what makes resume exact and the
budget crash-safe; Ray Data's blocks are not stable across runs, and its
checkpointing keeps every finished id in driver memory.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from tierwise.pipelines.data import io
from tierwise.pipelines.data.errors import EngineDead, StartInterrupted, StorageError
from tierwise.pipelines.data.io import Part
from tierwise.ray_cluster.engine import EngineSpec
from tierwise.ray_cluster.replica import JobContext, ReplicaActor

log = logging.getLogger(__name__)

START_POLL_S = 0.25  # how often a wait for engines to start looks at the driver's stop flag


@dataclass(frozen=True)
class PoolConfig:
    replicas: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    max_part_retries: int = 3
    retry_backoff_s: float = 1.0
    max_rows_in_flight: int | None = None  # None: 1.5 x the engine's max_num_seqs
    max_engine_restarts: int = 2  # in-place engine restarts per replica before it gives itself up


class PartHandler(Protocol):
    """The job's side of ``ReplicaPool.run``: what each part is sent with, and what becomes of it."""

    def tier(self, part: Part) -> object:
        """The row program sent with ``part``."""

    def sent(self, part: Part) -> None:
        """``part`` was sent (a retry is a send too)."""

    def done(self, summary: dict) -> None:
        """A part was committed (``summary``: its ``summarize``)."""

    def failed(self, part: Part, reason: str) -> None:
        """``part``'s retries are exhausted."""

    def poll(self) -> None:
        """Called about once a second while parts run."""

    def stopping(self) -> bool:
        """True once no new part is to be sent."""


@dataclass
class _Run:
    """One ``ReplicaPool.run``: its parts queued (with their tries) and in flight (by replica), the
    storage error that stopped it, and what the stop left uncommitted."""

    job: JobContext
    ledger: object
    handler: PartHandler
    queue: deque[tuple[Part, int]]
    max_inflight: int | None = None
    parts_per_replica: int | None = None
    inflight: dict[ray.ObjectRef, tuple[str, Part, int]] = field(default_factory=dict)
    halt: StorageError | None = None
    stats: dict = field(default_factory=lambda: {"unwritten": 0, "halted": 0, "halted_cost": 0.0,
                                                  "unwritten_cost": 0.0})

    def stopped(self) -> bool:
        return self.halt is not None or self.handler.stopping()

    def halted_error(self) -> StorageError:
        """The error ``run`` raises once a storage error stopped the job, with what it left."""
        s = self.stats
        err = StorageError(
            f"{self.halt}; the job stopped at once: {s['unwritten']} finished part(s) "
            f"({s['unwritten_cost']:.6g} spent) could not be committed and {s['halted']} part(s) in "
            f"flight stopped ({s['halted_cost']:.6g} spent), {len(self.queue)} part(s) unsent; re-run the same "
            f"spec once the output location is writable")
        # In the ledger, not in the output: committed rows' cost + this = what the job spent.
        err.uncommitted_cost = s["unwritten_cost"] + s["halted_cost"]
        return err


UNSTARTED_TIMEOUT_S = 0.5
# A replica holds at most this many times its rows in flight beside its first part: rows that
# finished wait in their part until its last row does, and a part is the unit of a resume's redo.
HELD_ROWS_FACTOR = 4


def takes_part(held: list[int], rows_in_flight: int, parts_per_replica: int | None = None,
               unstarted: int | None = None) -> bool:
    """Whether a replica holding parts of ``held`` rows (in the order sent) takes another:
    ``parts_per_replica`` when set; else while its rows not yet started fall short of its
    ``rows_in_flight`` and the parts beside the first stay within ``HELD_ROWS_FACTOR`` times it.

    ``unstarted``: the held rows not yet started, as the replica counts them (parts it has not
    begun count whole). Rows of a part finish at different times: an adaptive row may run many
    rounds, so the part sent first may still hold a few rows when the others are all running,
    and waiting for it to commit would drain the engine. Without the count (None): every row
    beside the first part's."""
    if parts_per_replica is not None:
        return len(held) < parts_per_replica
    waiting = sum(held[1:]) if unstarted is None else unstarted
    return waiting < rows_in_flight and sum(held[1:]) < HELD_ROWS_FACTOR * rows_in_flight


class ReplicaPool:
    """Starts ``config.replicas`` engines (in parallel) and streams parts through them.

    ``judge``: a second engine on every replica for an ``llm_judge`` verifier with a
    model of its own (a job judged by its own model needs none). ``stopping()`` true while
    the engines start (a signal to the driver) kills the replicas and raises
    ``StartInterrupted``: an engine start (a minute or more) is not waited for.
    """

    def __init__(self, engine: EngineSpec, config: PoolConfig, judge: EngineSpec | None = None,
                 stopping: Callable[[], bool] = lambda: False):
        self.engine, self.cfg, self.judge = engine, config, judge
        self._serial = 0
        self.actors: dict[str, object] = {}
        self.replaced = 0
        self.rows_in_flight: dict[str, int] = {}  # each replica's bound, known once its engine started
        for _ in range(config.replicas):
            self._spawn()
        if not self._start(list(self.actors), stopping):  # engines start in parallel
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)
            self.actors.clear()
            raise StartInterrupted("stopped while the replicas' engines started; nothing ran")

    def _start(self, names: list[str], stopping: Callable[[], bool]) -> bool:
        """Starts the engines of ``names`` and waits for them, looking at ``stopping`` every
        ``START_POLL_S``; returns False, leaving them starting, once it is true."""
        refs = {self.actors[n].start.remote(): n for n in names}
        pending = list(refs)
        while pending:
            if stopping():
                return False
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=START_POLL_S)
            for ref in done:  # raises here if an engine failed to start
                self.rows_in_flight[refs[ref]] = ray.get(ref)["max_rows_in_flight"]
        return True

    def _spawn(self) -> str:
        name = f"replica-{self._serial}"
        self._serial += 1
        self.actors[name] = ReplicaActor.options(
            num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus, max_concurrency=1000,
        ).remote(self.engine, name, self.cfg.max_rows_in_flight, self.judge, self.cfg.max_engine_restarts)
        return name

    def info(self) -> dict[str, dict]:
        """Each replica's node, pid, engine context length, EngineCore pids and engine restarts."""
        return dict(zip(self.actors, ray.get([a.start.remote() for a in self.actors.values()])))

    def engine_stats(self) -> dict[str, dict]:
        """Each live replica's ``EngineMeter`` totals (a replica that does not answer is left out)."""
        refs = {name: a.engine_stats.remote() for name, a in self.actors.items()}
        out = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=30)
            except Exception as exc:  # a lost replica: its engine time went with it
                log.warning("replica %s gave no engine stats: %s", name, exc)
        return out

    def _replace(self, name: str, ledger, stopping: Callable[[], bool] = lambda: False) -> None:
        """Replaces replica ``name`` (releasing what it held at ``ledger``); a stop request
        while the new engine starts leaves the pool one replica short (the job is ending)."""
        dead = self.actors.pop(name, None)
        if dead is not None:
            released = ray.get(ledger.release_holder.remote(name))
            log.warning("replaced %s; released %.6g of its reservations", name, released)
            ray.kill(dead, no_restart=True)
        self.rows_in_flight.pop(name, None)
        self.replaced += 1
        new = self._spawn()
        if not self._start([new], stopping):
            ray.kill(self.actors.pop(new), no_restart=True)

    def run(self, job: JobContext, ledger, parts: Iterable[Part], handler: PartHandler,
            max_inflight: int | None = None, parts_per_replica: int | None = None) -> int:
        """Processes ``parts`` of ``job``; calls ``handler.done(summary)`` per committed part
        and ``handler.failed(part, reason)`` for a part whose retries are exhausted.

        ``handler.tier(part)`` is the row program sent with the part (the runner may re-plan
        between parts); ``handler.sent(part)`` follows each send (a retry is a send too);
        ``handler.poll()`` runs about once a second. Once ``handler.stopping()`` is true no new
        part is sent and the parts in flight drain (finish and commit). ``max_inflight`` caps
        the parts in flight across the pool (calibration sends one at a time to keep to its
        budget share). ``parts_per_replica``: parts each replica holds at once (None: by rows,
        see ``takes_part``). Returns the parts left unsent.

        Raises:
            StorageError: the job's output (or its ledger file, written by ``poll``) cannot
                be written; raised once the parts in flight have stopped.
        """
        run = _Run(job, ledger, handler, deque((p, 0) for p in parts), max_inflight, parts_per_replica)
        while (run.queue and not run.stopped()) or run.inflight:
            self._send(run)
            done, _ = ray.wait(list(run.inflight), num_returns=1, timeout=1.0)
            try:
                handler.poll()
            except StorageError as exc:  # the ledger file: without it a crash would forget the spend
                self._stop(run, exc)
            for ref in done:
                self._receive(run, ref)
        if run.halt is not None:
            raise run.halted_error() from run.halt
        return len(run.queue)

    def _send(self, run: _Run) -> None:
        """Sends each replica parts while it takes them (``takes_part``) and the pool's cap allows."""
        if run.stopped() or not run.queue:
            return
        unstarted = self._unstarted(run)
        for name in list(self.actors):
            held = [p.length for n, p, _ in run.inflight.values() if n == name]  # in the order sent
            waiting = unstarted.get(name)
            while run.queue and takes_part(held, self.rows_in_flight[name], run.parts_per_replica, waiting) and (
                    run.max_inflight is None or len(run.inflight) < run.max_inflight) and not run.stopped():
                part, tries = run.queue.popleft()
                ref = self.actors[name].process_part.remote(part, run.job, run.handler.tier(part), run.ledger)
                run.inflight[ref] = (name, part, tries)
                held.append(part.length)
                waiting = None if waiting is None else waiting + part.length
                run.handler.sent(part)

    def _unstarted(self, run: _Run) -> dict[str, int]:
        """Each busy replica's rows not yet started in the parts it holds (``takes_part``): its own
        count for the parts it has begun, the whole part for those on their way. A replica that does
        not answer within ``UNSTARTED_TIMEOUT_S`` (its event loop busy) is left out this time."""
        if run.parts_per_replica is not None:
            return {}
        busy = {n for n, _, _ in run.inflight.values()}
        refs = {self.actors[n].unstarted_rows.remote(): n for n in busy if n in self.actors}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=UNSTARTED_TIMEOUT_S) if refs else ([], [])
        out = {}
        for ref in ready:
            name = refs[ref]
            try:
                begun = ray.get(ref)
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                continue  # the part's own answer tells what became of it
            out[name] = sum(begun.get((run.job.output_uri, p.part_id), p.length)
                            for n, p, _ in run.inflight.values() if n == name)
        return out

    def _receive(self, run: _Run, ref: ray.ObjectRef) -> None:
        """Takes a finished part's answer: commits it, counts it halted, or retries it where its
        replica was lost or it failed."""
        name, part, tries = run.inflight.pop(ref)
        try:
            result = ray.get(ref)
            if result.get("halted"):
                run.stats["halted"] += 1
                run.stats["halted_cost"] += result["cost"]
            elif result.get("unwritten"):
                self._commit_held(run.job, result, run.handler.done, partial(self._stop, run), run.stats)
            else:
                run.handler.done(result)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            log.warning("replica %s lost while on part %d: %s", name, part.part_id, exc)
            if name in self.actors:
                # Its other parts fail too and are requeued as they surface.
                self._replace(name, run.ledger, run.stopped)
            self._retry(run, part, tries, f"replica lost: {exc}")
        except RayTaskError as exc:
            cause = getattr(exc, "cause", exc)
            log.warning("part %d failed on %s: %s", part.part_id, name, cause)
            if isinstance(cause, EngineDead) and name in self.actors:
                self._replace(name, run.ledger, run.stopped)  # it ends itself; this covers one that could not
            self._retry(run, part, tries, str(cause))
        except StorageError as exc:  # from handler.done / handler.failed
            self._stop(run, exc)

    def _stop(self, run: _Run, exc: StorageError) -> None:
        """Stops the job at its first storage error: the replicas holding its parts halt them."""
        if run.halt is None:
            log.error("stopping the job: %s", exc)
            run.halt = exc
            for name in {n for n, _, _ in run.inflight.values()}:
                if name in self.actors:
                    self.actors[name].halt.remote(run.ledger)

    def _commit_held(self, job: JobContext, result: dict, on_done, stop, stats: dict) -> None:
        """Commits a finished part whose replica could not write it, from here, retrying only
        the write (bounded, with backoff); stops the job when it cannot."""
        summary, error, permanent = result["summary"], result["error"], result["permanent"]
        for attempt in range(self.cfg.max_part_retries if not permanent else 0):
            time.sleep(min(30.0, self.cfg.retry_backoff_s * 2 ** attempt))
            try:
                io.write_part(result["table"], job.output_uri, summary["part_id"], summary, job.output_storage)
            except StorageError as exc:
                error, permanent = str(exc), exc.permanent
                if permanent:
                    break
                continue
            on_done(summary)
            return
        stats["unwritten"] += 1
        stats["unwritten_cost"] += summary["cost"]
        stop(StorageError(error))

    def _retry(self, run: _Run, part: Part, tries: int, reason: str) -> None:
        if tries + 1 > self.cfg.max_part_retries:
            try:
                run.handler.failed(part, reason)
            except StorageError as exc:
                self._stop(run, exc)
            return
        time.sleep(min(30.0, self.cfg.retry_backoff_s * 2 ** tries))
        run.queue.append((part, tries + 1))

    def shutdown(self) -> None:
        for a in self.actors.values():
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # best effort: the actor is killed next anyway
                pass
            ray.kill(a)
        self.actors.clear()
