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
