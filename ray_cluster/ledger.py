"""The budget ledger actor: one per job, shared by every replica.

It wraps the pure ``tierwise.pipelines.plan.budget.Ledger``. Replicas reach it through a
``LedgerClient``, which holds a lease and calls the ledger a few times a second
rather than once per row. A reservation that would fit once
work in flight settles waits here (an asyncio condition) instead of being refused,
so the budget is used fully while ``spent + reserved <= budget`` always holds.
"""

from __future__ import annotations

import asyncio
from functools import partial

import ray

from tierwise.pipelines.plan.budget import GRANTED, WAIT, Ledger, PartKey
from tierwise.ray_cluster.metrics import JobMetrics


@ray.remote(num_cpus=0, max_restarts=0)
class BudgetLedger:
    def __init__(self, budget: float, already_spent: float = 0.0,
                 parts_spent: dict[str, dict[int, float]] | None = None, job: str = ""):
        """``parts_spent``: what earlier attempts spent per part, by output location (a resume's,
        from ``_tierwise/ledger.json``); it is part of ``already_spent``. ``job``: the metrics' tag
        (``tierwise.ray_cluster.metrics``)."""
        by_part = {(out, pid): amount for out, parts in (parts_spent or {}).items() for pid, amount in parts.items()}
        self.ledger = Ledger(budget=budget, spent=already_spent, by_part=by_part)
        self._changed: asyncio.Condition | None = None
        self.metrics = JobMetrics(job)
        self.metrics.budget_snapshot(self.ledger.snapshot())

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:  # created on the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def reserve(self, amount: float, holder: str = "") -> str:
        """Returns ``granted`` or ``denied``; waits while the answer is ``wait``."""
        cond = self._cond()
        async with cond:
            while (answer := self.ledger.reserve(amount, holder)) == WAIT:
                await cond.wait()
            return answer

    async def settle(self, reserved: float, actual: float, holder: str = "", kind: str = "generation",
                     part: PartKey | None = None) -> None:
        cond = self._cond()
        async with cond:
            self.ledger.settle(reserved, actual, holder, kind, part)
            cond.notify_all()

    async def release(self, reserved: float, holder: str = "") -> None:
        cond = self._cond()
        async with cond:
            self.ledger.release(reserved, holder)
            cond.notify_all()

    async def roll(self, lease: float, actual: float, must: float, want: float, by_kind: dict[str, float],
                   holder: str = "", by_part: dict[PartKey, float] | None = None) -> float:
        """Renews a replica's lease (``tierwise.pipelines.plan.budget.Ledger.roll``); returns the new lease."""
        cond = self._cond()
        async with cond:
            new = self.ledger.roll(holder, lease, actual, must, want, by_kind, by_part)
            cond.notify_all()
        self.metrics.budget_snapshot(self.ledger.snapshot())
        return new

    async def release_holder(self, holder: str) -> float:
        """Releases everything a lost replica still held; returns the amount."""
        cond = self._cond()
        async with cond:
            amount = self.ledger.release_holder(holder)
            cond.notify_all()
            return amount

    async def snapshot(self) -> dict:
        snap = self.ledger.snapshot()
        self.metrics.budget_snapshot(snap)
        return snap

    async def record_part(self, tier: str, summary: dict) -> None:
        """The driver's report of a committed part, for the rows and tokens metrics."""
        self.metrics.part(tier, summary)

    async def record_engines(self, busy: dict[str, float]) -> None:
        """The driver's report of each replica's engine busy fraction, for its gauge."""
        self.metrics.engines(busy)

    async def spent_on(self, part: PartKey) -> float:
        """What ``part`` spent so far, over all its attempts (lost ones included)."""
        return self.ledger.by_part.get(part, 0.0)

    async def part_spend(self, output: str) -> dict[int, float]:
        """What each part of ``output`` spent so far, over all its attempts (lost ones included)."""
        return self.ledger.part_spend(output)


class LedgerClient:
    """A replica's handle on the ledger for one job: rows reserve and settle locally,
    against a lease (a block of budget reserved at the ledger), and the client renews
    the lease (``BudgetLedger.roll``) every ``roll_interval_s`` while work settles,
    reporting what was spent; ``drain`` reports it at once (call it before a part
    commits), ``close`` returns the lease. A part's rows settle through ``for_part``, so
    the ledger knows what each part spent (``Ledger.by_part``).

    Semantics are the ledger's own, row by row: a row runs only once its worst case is
    reserved, at the ledger or inside the lease, and settles its actual cost (at most its
    worst case). The lease grows to about ``lease_rows`` rows' worst cases while the
    budget has room, and takes at most half of what no one holds, so near the end of the
    budget it shrinks; a row it cannot cover returns the lease's unused part and
    reserves at the ledger itself, waiting there for work in flight to settle as any row
    would. A lost replica's lease is released with its other reservations
    (``release_holder``); spend it had not yet reported is lost with it, as its
    reservations in flight always were.

    (Ledger calls per row were the replica's main overhead over plain vLLM: see
    ``bench/throughput.py``.)
    """

    # Each renewal is an actor call (about a millisecond of the replica's CPU, on the core the
    # engine's scheduler shares); the lease holds ``lease_rows`` rows beyond those in flight,
    # seconds of work, so a few renewals a second keep it full. Rows waiting at the ledger
    # wait for spend to be reported: then renew sooner.
    roll_interval_s = 0.25
    waiting_roll_interval_s = 0.05
    lease_rows = 256

    def __init__(self, ledger, holder: str):
        self.ledger, self.holder = ledger, holder
        self.lease = 0.0      # held at the ledger
        self.carved = 0.0     # worst cases of rows in flight inside the lease
        self._n_carved = 0    # their count: none in flight is exactly 0.0, whatever float residue
        self.pending: dict[str, float] = {}  # settled inside the lease, not yet reported, by kind
        self.pending_parts: dict[PartKey, float] = {}  # the same, by part (of settlements that name one)
        self._direct: dict[float, int] = {}  # reservations held at the ledger itself, by amount
        self._direct_settling: list = []     # their settlements in flight
        self._waiting = 0                    # rows waiting at the ledger
        self._mean_worst = 0.0
        self._n = 0
        self._lock = asyncio.Lock()  # binds to the running loop on first use (Python >= 3.10)
        self._timer: asyncio.Task | None = None

    def _carve(self, amount: float) -> None:
        self.carved += amount
        self._n_carved += 1

    def _uncarve(self, amount: float) -> None:
        # Amounts of varying size (metered prices) leave float residue: with nothing in flight the
        # lease must hold nothing, or rows waiting at the ledger would wait for it forever.
        self._n_carved -= 1
        self.carved = self.carved - amount if self._n_carved else 0.0

    def _free(self) -> float:
        return self.lease - self.carved - sum(self.pending.values())

    async def reserve(self, amount: float) -> str:
        """``granted`` (reserved), ``denied`` (it cannot fit even once all work in flight settles)."""
        self._n += 1
        self._mean_worst += (amount - self._mean_worst) / self._n
        if not self._lock.locked() and self._free() >= amount:
            self._carve(amount)
            return GRANTED
        async with self._lock:  # one renewal at a time; carve only between renewals
            if self._free() < amount:
                await self._roll(need=amount)
            if self._free() >= amount:
                self._carve(amount)
                return GRANTED
            # The budget left cannot hold this row beside the lease's own work in flight:
            # give back the lease's unused part and wait at the ledger like any row.
            self._waiting += 1
            await self._roll(need=0.0)
        try:
            answer = await self.ledger.reserve.remote(amount, self.holder)
        finally:
            self._waiting -= 1
        if answer == GRANTED:
            self._direct[amount] = self._direct.get(amount, 0) + 1
        return answer

    def for_part(self, part: PartKey) -> PartLedger:
        """This client as one part's rows use it: their settlements count as ``part``'s spend."""
        return PartLedger(self, part)

    async def settle(self, reserved: float, actual: float, kind: str = "generation",
                     part: PartKey | None = None) -> None:
        """Records a row's actual cost and returns at once (it reaches the ledger with
        the next renewal; failures surface in ``drain``). ``kind`` (``generation``,
        ``judge``) splits the ledger's ``by_kind`` spend, ``part`` its ``by_part``."""
        if actual > reserved * (1 + 1e-9) + 1e-12:
            raise ValueError(f"actual cost {actual} exceeds its reservation {reserved}")
        if self._take_direct(reserved):
            self._direct_settling.append(asyncio.ensure_future(
                self.ledger.settle.remote(reserved, actual, self.holder, kind, part)))
            return
        self._uncarve(reserved)
        self.pending[kind] = self.pending.get(kind, 0.0) + actual
        if part is not None:
            self.pending_parts[part] = self.pending_parts.get(part, 0.0) + actual
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._roll_soon())

    async def release(self, reserved: float) -> None:
        """Returns a reservation whose work was never run."""
        if self._take_direct(reserved):
            await self.ledger.release.remote(reserved, self.holder)
        else:
            self._uncarve(reserved)

    async def drain(self) -> None:
        """Reports every settlement so far to the ledger; raises if one failed."""
        async with self._lock:
            if self.pending:
                await self._roll(need=0.0)
        settling, self._direct_settling = self._direct_settling, []
        await asyncio.gather(*settling)

    async def close(self) -> None:
        """Reports what was spent and returns the lease (no work may be in flight)."""
        await self.drain()
        async with self._lock:
            if self.lease:
                await self._roll(need=0.0, keep=False)

    def _take_direct(self, amount: float) -> bool:
        # Reservations of equal amounts are interchangeable: the totals held are the same.
        if self._direct.get(amount, 0) == 0:
            return False
        self._direct[amount] -= 1
        return True

    async def _roll_soon(self) -> None:
        await asyncio.sleep(self.waiting_roll_interval_s if self._waiting else self.roll_interval_s)
        async with self._lock:
            if self.pending:
                await self._roll(need=0.0)

    async def _roll(self, need: float, keep: bool = True) -> None:
        """Renews the lease (the caller holds the lock, so no row carves meanwhile): reports
        the pending spend and asks for room for ``need`` plus ``lease_rows`` rows' worst
        cases, or none beyond the work in flight while rows wait at the ledger."""
        sent, sent_parts = dict(self.pending), dict(self.pending_parts)
        actual = sum(sent.values())
        must = self.carved
        want = must + need + (self.lease_rows * self._mean_worst if keep and not self._waiting else 0.0)
        new = await self.ledger.roll.remote(self.lease, actual, must, want, sent, self.holder, sent_parts)
        self.lease = new
        _deduct(self.pending, sent)  # settlements that came in meanwhile stay pending
        _deduct(self.pending_parts, sent_parts)


class PartLedger:
    """A ``LedgerClient`` as one part's rows (and their judge calls) use it: reserve and release
    as the client's own, settlements naming the part."""

    def __init__(self, client: LedgerClient, part: PartKey):
        self.reserve, self.release = client.reserve, client.release
        self.settle = partial(client.settle, part=part)


def _deduct(pending: dict, sent: dict) -> None:
    for key, amount in sent.items():
        left = pending[key] - amount
        pending[key] = left
        if left <= 0:
            del pending[key]
