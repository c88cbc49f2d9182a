"""The budget ledger actor: one per job, shared by every replica.

It wraps the pure ``pipelines.budget.Ledger``. A reservation that would fit once
work in flight settles waits here (an asyncio condition) instead of being refused,
so the budget is used fully while ``spent + reserved <= budget`` always holds.
"""

from __future__ import annotations

import asyncio

import ray

from pipelines.budget import WAIT, Ledger


@ray.remote(num_cpus=0, max_restarts=0)
class BudgetLedger:
    def __init__(self, budget: float, already_spent: float = 0.0):
        self.ledger = Ledger(budget=budget, spent=already_spent)
        self._changed: asyncio.Condition | None = None

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

    async def reserve_many(self, amounts: list[float], holder: str = "") -> list[str]:
        """Tries to reserve several amounts at once without waiting: each answer is
        ``granted``, ``denied`` or ``wait`` (then ask again with ``reserve``, which waits).
        A waiting batch would hold back the answers of the rows it could grant."""
        async with self._cond():
            return [self.ledger.reserve(a, holder) for a in amounts]

    async def settle_many(self, items: list[tuple[float, float, str]], holder: str = "") -> None:
        """``settle`` for several ``(reserved, actual, kind)`` triples."""
        cond = self._cond()
        async with cond:
            for reserved, actual, kind in items:
                self.ledger.settle(reserved, actual, holder, kind)
            cond.notify_all()

    async def settle(self, reserved: float, actual: float, holder: str = "", kind: str = "generation") -> None:
        cond = self._cond()
        async with cond:
            self.ledger.settle(reserved, actual, holder, kind)
            cond.notify_all()

    async def release(self, reserved: float, holder: str = "") -> None:
        cond = self._cond()
        async with cond:
            self.ledger.release(reserved, holder)
            cond.notify_all()

    async def release_holder(self, holder: str) -> float:
        """Releases everything a lost replica still held; returns the amount."""
        cond = self._cond()
        async with cond:
            amount = self.ledger.release_holder(holder)
            cond.notify_all()
            return amount

    async def snapshot(self) -> dict:
        return self.ledger.snapshot()


class BatchedLedgerClient:
    """A replica's handle on the ledger that batches calls: the reservations made
    within ``reserve_window_s`` travel in one actor call, and settlements are
    queued without holding up their row and sent every ``settle_window_s`` (``drain``
    waits for the last of them; call it before committing a part).

    Semantics are the ledger's own, row by row and in order (each amount is its own
    reservation); only the transport is batched. A settlement still in the queue
    leaves its worst case reserved, so delaying it can only under-use the budget for
    those milliseconds, never exceed it. Settlements and reservations flow in
    separate streams, so a batch of reservations waiting for budget never holds back
    the settlements that free it. (Ray calls per row are the replica's main overhead
    over plain vLLM: see ``bench/throughput.py``.)
    """

    reserve_window_s = 0.01
    settle_window_s = 0.05

    def __init__(self, ledger, holder: str):
        self.ledger, self.holder = ledger, holder
        self._queues: dict[str, list] = {"reserve": [], "settle": []}
        self._tasks: dict[str, asyncio.Task | None] = {"reserve": None, "settle": None}
        self._settling: list[asyncio.Future] = []  # every settlement not yet drained

    async def reserve(self, amount: float) -> str:
        return await self._submit("reserve", amount)

    async def settle(self, reserved: float, actual: float, kind: str = "generation") -> None:
        """Queues the settlement and returns at once (failures surface in ``drain``);
        ``kind`` (``generation``, ``judge``) splits the ledger's ``by_kind`` spend."""
        self._settling.append(self._submit("settle", (reserved, actual, kind)))

    async def release(self, reserved: float) -> None:
        await self.ledger.release.remote(reserved, self.holder)

    async def drain(self) -> None:
        """Waits until every queued settlement reached the ledger; raises if one failed."""
        pending, self._settling = self._settling, []
        await asyncio.gather(*pending)  # those in a batch already sent included

    def _submit(self, kind: str, item) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queues[kind].append((item, fut))
        if self._tasks[kind] is None:
            self._tasks[kind] = loop.create_task(self._flush(kind))
        return fut

    async def _flush(self, kind: str) -> None:
        try:
            while self._queues[kind]:
                # Let the rows of the next few milliseconds join the batch.
                await asyncio.sleep(self.reserve_window_s if kind == "reserve" else self.settle_window_s)
                batch, self._queues[kind] = self._queues[kind], []
                items = [item for item, _ in batch]
                method = self.ledger.reserve_many if kind == "reserve" else self.ledger.settle_many
                try:
                    result = await method.remote(items, self.holder)
                except Exception as exc:
                    for _, fut in batch:
                        fut.set_exception(exc)
                    continue
                for i, (item, fut) in enumerate(batch):
                    if kind == "reserve" and result[i] == WAIT:
                        # Only rows that must wait for budget pay a call of their own.
                        asyncio.get_running_loop().create_task(self._wait_for(item, fut))
                    else:
                        fut.set_result(result[i] if kind == "reserve" else None)
        finally:
            self._tasks[kind] = None

    async def _wait_for(self, amount: float, fut: asyncio.Future) -> None:
        try:
            fut.set_result(await self.ledger.reserve.remote(amount, self.holder))
        except Exception as exc:
            fut.set_exception(exc)
