"""ReplicaPool: keeps every replica busy with a bounded number of parts in flight.

Parts are deterministic slices of the input (``pipelines.io.Part``). A replica is
sent parts until, beside the part it was sent first, it holds rows enough to fill
its rows in flight (``max_rows_in_flight``), so the engine's queue stays full while
that part's last rows finish and it commits; memory stays flat however large the
input is (a replica holds at most its rows in flight plus two parts). A job's
``parts_per_replica`` (``pool.run``) sets a fixed count instead. A replica that
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
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from pipelines import io
from pipelines.errors import EngineDead, StartInterrupted, StorageError
from pipelines.io import Part
from ray_cluster.engine import EngineSpec
from ray_cluster.replica import JobContext, ReplicaActor

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


def takes_part(held: list[int], rows_in_flight: int, parts_per_replica: int | None = None) -> bool:
    """Whether a replica holding parts of ``held`` rows (in the order sent) takes another:
    ``parts_per_replica`` when set, else while the parts beside the first fall short of
    its ``rows_in_flight``."""
    if parts_per_replica is not None:
        return len(held) < parts_per_replica
    return sum(held[1:]) < rows_in_flight


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

    def run(self, job: JobContext, ledger, parts: Iterable[Part], tier: Callable[[Part], object],
            on_done: Callable[[dict], None], on_failed: Callable[[Part, str], None],
            poll: Callable[[], None] | None = None, stopping: Callable[[], bool] = lambda: False,
            max_inflight: int | None = None, on_sent: Callable[[Part], None] | None = None,
            parts_per_replica: int | None = None) -> int:
        """Processes ``parts`` of ``job``; calls ``on_done(summary)`` per committed part
        and ``on_failed(part, reason)`` for a part whose retries are exhausted.

        ``tier(part)`` is the row program sent with the part (the runner may re-plan
        between parts); ``on_sent(part)`` follows each send (a retry is a send too).
        Once ``stopping()`` is true no new part is sent and the parts in flight drain
        (finish and commit). ``max_inflight`` caps the parts in flight across the pool
        (calibration sends one at a time to keep to its budget share).
        ``parts_per_replica``: parts each replica holds at once (None: by rows, see
        ``takes_part``). Returns the parts left unsent.

        Raises:
            StorageError: the job's output (or its ledger file, written by ``poll``) cannot
                be written; raised once the parts in flight have stopped.
        """
        queue: deque[tuple[Part, int]] = deque((p, 0) for p in parts)
        inflight: dict[ray.ObjectRef, tuple[str, Part, int]] = {}
        halt: list[StorageError] = []  # the storage error that stopped the job
        stats = {"unwritten": 0, "halted": 0, "halted_cost": 0.0, "unwritten_cost": 0.0}

        def stop(exc: StorageError) -> None:
            if not halt:
                log.error("stopping the job: %s", exc)
                halt.append(exc)
                for name in {n for n, _, _ in inflight.values()}:
                    if name in self.actors:
                        self.actors[name].halt.remote(ledger)

        def stopped() -> bool:
            return bool(halt) or stopping()

        while (queue and not stopped()) or inflight:
            for name in list(self.actors) if not stopped() else []:
                held = [p.length for n, p, _ in inflight.values() if n == name]  # in the order sent
                while queue and takes_part(held, self.rows_in_flight[name], parts_per_replica) and (
                        max_inflight is None or len(inflight) < max_inflight) and not stopped():
                    part, tries = queue.popleft()
                    ref = self.actors[name].process_part.remote(part, job, tier(part), ledger)
                    inflight[ref] = (name, part, tries)
                    held.append(part.length)
                    if on_sent is not None:
                        on_sent(part)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if poll is not None:
                try:
                    poll()
                except StorageError as exc:  # the ledger file: without it a crash would forget the spend
                    stop(exc)
            for ref in done:
                name, part, tries = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                    if result.get("halted"):
                        stats["halted"] += 1
                        stats["halted_cost"] += result["cost"]
                    elif result.get("unwritten"):
                        self._commit_held(job, result, on_done, stop, stats)
                    else:
                        on_done(result)
                except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                    log.warning("replica %s lost while on part %d: %s", name, part.part_id, exc)
                    if name in self.actors:
                        # Its other parts fail too and are requeued as they surface.
                        self._replace(name, ledger, stopped)
                    self._retry(queue, part, tries, f"replica lost: {exc}", on_failed, stop)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", exc)
                    log.warning("part %d failed on %s: %s", part.part_id, name, cause)
                    if isinstance(cause, EngineDead) and name in self.actors:
                        self._replace(name, ledger, stopped)  # it ends itself; this covers one that could not
                    self._retry(queue, part, tries, str(cause), on_failed, stop)
                except StorageError as exc:  # from on_done / on_failed
                    stop(exc)
        if halt:
            err = StorageError(
                f"{halt[0]}; the job stopped at once: {stats['unwritten']} finished part(s) "
                f"({stats['unwritten_cost']:.6g} spent) could not be committed and {stats['halted']} part(s) in "
                f"flight stopped ({stats['halted_cost']:.6g} spent), {len(queue)} part(s) unsent; re-run the same "
                f"spec once the output location is writable")
            # In the ledger, not in the output: committed rows' cost + this = what the job spent.
            err.uncommitted_cost = stats["unwritten_cost"] + stats["halted_cost"]
            raise err from halt[0]
        return len(queue)

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

    def _retry(self, queue, part: Part, tries: int, reason: str, on_failed, stop) -> None:
        if tries + 1 > self.cfg.max_part_retries:
            try:
                on_failed(part, reason)
            except StorageError as exc:
                stop(exc)
            return
        time.sleep(min(30.0, self.cfg.retry_backoff_s * 2 ** tries))
        queue.append((part, tries + 1))

    def shutdown(self) -> None:
        for a in self.actors.values():
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:  # best effort: the actor is killed next anyway
                pass
            ray.kill(a)
        self.actors.clear()
