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
    """A replica's handle on the ledger that batches calls: reservations and
    settlements made in the same event-loop tick travel in one actor call each.

    Semantics are the ledger's own, row by row and in order (each amount is its own
    reservation); only the transport is batched. Settlements and reservations flow
    in separate streams, so a batch of reservations waiting for budget never holds
    back the settlements that free it. (Two Ray calls per row cost about 0.15 of the
    throughput ratio in ``bench/throughput.py`` on 2 cores.)
    """

    def __init__(self, ledger, holder: str):
        self.ledger, self.holder = ledger, holder
        self._queues: dict[str, list] = {"reserve": [], "settle": []}
        self._busy: dict[str, bool] = {"reserve": False, "settle": False}

    async def reserve(self, amount: float) -> str:
        return await self._submit("reserve", amount)

    async def settle(self, reserved: float, actual: float, kind: str = "generation") -> None:
        """Settles a reservation; ``kind`` (``generation``, ``judge``) splits the
        ledger's ``by_kind`` spend."""
        await self._submit("settle", (reserved, actual, kind))

    async def release(self, reserved: float) -> None:
        await self.ledger.release.remote(reserved, self.holder)

    async def _submit(self, kind: str, item):
        fut = asyncio.get_running_loop().create_future()
        self._queues[kind].append((item, fut))
        if not self._busy[kind]:
            self._busy[kind] = True
            asyncio.get_running_loop().create_task(self._flush(kind))
        return await fut

    async def _flush(self, kind: str) -> None:
        await asyncio.sleep(0)  # let the rest of this tick's rows join the batch
        try:
            while self._queues[kind]:
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
            self._busy[kind] = False

    async def _wait_for(self, amount: float, fut: asyncio.Future) -> None:
        try:
            fut.set_result(await self.ledger.reserve.remote(amount, self.holder))
        except Exception as exc:
            fut.set_exception(exc)
