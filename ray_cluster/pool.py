"""ReplicaPool: keeps every replica busy with a bounded number of parts in flight.

Parts are deterministic slices of the input (``pipelines.io.Part``). A replica is
sent parts until, beside the part it was sent first, it holds rows enough to fill
its rows in flight (``max_rows_in_flight``), so the engine's queue stays full while
that part's last rows finish and it commits; memory stays flat however large the
input is (a replica holds at most its rows in flight plus two parts). A job's
``parts_per_replica`` (``pool.run``) sets a fixed count instead. A replica that
dies is replaced and its parts retried (bounded, with backoff); its budget
reservations are released. A part that keeps failing is
committed as row-level ``error`` records, never dropped.

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

from pipelines.io import Part
from ray_cluster.engine import EngineSpec
from ray_cluster.replica import JobContext, ReplicaActor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    replicas: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    max_part_retries: int = 3
    retry_backoff_s: float = 1.0
    max_rows_in_flight: int | None = None  # None: 1.5 x the engine's max_num_seqs


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
    model of its own (a job judged by its own model needs none).
    """

    def __init__(self, engine: EngineSpec, config: PoolConfig, judge: EngineSpec | None = None):
        self.engine, self.cfg, self.judge = engine, config, judge
        self._serial = 0
        self.actors: dict[str, object] = {}
        self.replaced = 0
        self.rows_in_flight: dict[str, int] = {}  # each replica's bound, known once its engine started
        for _ in range(config.replicas):
            self._spawn()
        names = list(self.actors)
        started = ray.get([self.actors[n].start.remote() for n in names])  # engines start in parallel
        self.rows_in_flight.update({n: s["max_rows_in_flight"] for n, s in zip(names, started)})

    def _spawn(self) -> str:
        name = f"replica-{self._serial}"
        self._serial += 1
        self.actors[name] = ReplicaActor.options(
            num_cpus=self.cfg.num_cpus, num_gpus=self.cfg.num_gpus, max_concurrency=1000,
        ).remote(self.engine, name, self.cfg.max_rows_in_flight, self.judge)
        return name

    def info(self) -> dict[str, dict]:
        """Each replica's node, pid and engine context length."""
        return dict(zip(self.actors, ray.get([a.start.remote() for a in self.actors.values()])))

    def _replace(self, name: str, ledger) -> None:
        dead = self.actors.pop(name, None)
        if dead is not None:
            released = ray.get(ledger.release_holder.remote(name))
            log.warning("replaced %s; released %.6g of its reservations", name, released)
            ray.kill(dead, no_restart=True)
        self.rows_in_flight.pop(name, None)
        self.replaced += 1
        new = self._spawn()
        self.rows_in_flight[new] = ray.get(self.actors[new].start.remote())["max_rows_in_flight"]

    def run(self, job: JobContext, ledger, parts: Iterable[Part], tier: Callable[[], object],
            on_done: Callable[[dict], None], on_failed: Callable[[Part, str], None],
            poll: Callable[[], None] | None = None, stopping: Callable[[], bool] = lambda: False,
            max_inflight: int | None = None, on_sent: Callable[[Part], None] | None = None,
            parts_per_replica: int | None = None) -> int:
        """Processes ``parts`` of ``job``; calls ``on_done(summary)`` per committed part
        and ``on_failed(part, reason)`` for a part whose retries are exhausted.

        ``tier()`` is the row program sent with each part (the runner may re-plan
        between parts); ``on_sent(part)`` follows each send (a retry is a send too).
        Once ``stopping()`` is true no new part is sent and the parts in flight drain
        (finish and commit). ``max_inflight`` caps the parts in flight across the pool
        (calibration sends one at a time to keep to its budget share).
        ``parts_per_replica``: parts each replica holds at once (None: by rows, see
        ``takes_part``). Returns the parts left unsent.
        """
        queue: deque[tuple[Part, int]] = deque((p, 0) for p in parts)
        inflight: dict[ray.ObjectRef, tuple[str, Part, int]] = {}
        while (queue and not stopping()) or inflight:
            for name in list(self.actors) if not stopping() else []:
                held = [p.length for n, p, _ in inflight.values() if n == name]  # in the order sent
                while queue and takes_part(held, self.rows_in_flight[name], parts_per_replica) and (
                        max_inflight is None or len(inflight) < max_inflight) and not stopping():
                    part, tries = queue.popleft()
                    ref = self.actors[name].process_part.remote(part, job, tier(), ledger)
                    inflight[ref] = (name, part, tries)
                    held.append(part.length)
                    if on_sent is not None:
                        on_sent(part)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if poll is not None:
                poll()
            for ref in done:
                name, part, tries = inflight.pop(ref)
                try:
                    on_done(ray.get(ref))
                except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                    log.warning("replica %s lost while on part %d: %s", name, part.part_id, exc)
                    if name in self.actors:
                        # Its other parts fail too and are requeued as they surface.
                        self._replace(name, ledger)
                    self._retry(queue, part, tries, f"replica lost: {exc}", on_failed)
                except RayTaskError as exc:
                    log.warning("part %d failed on %s: %s", part.part_id, name, exc)
                    self._retry(queue, part, tries, str(getattr(exc, "cause", exc)), on_failed)
        return len(queue)

    def _retry(self, queue, part: Part, tries: int, reason: str, on_failed) -> None:
        if tries + 1 > self.cfg.max_part_retries:
            on_failed(part, reason)
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
