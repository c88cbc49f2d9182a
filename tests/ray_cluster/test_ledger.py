"""The ledger actor under concurrency: spend never passes the budget."""

import asyncio
import random

import pytest

from tierwise.pipelines.plan.budget import DENIED, GRANTED


@pytest.mark.slow
def test_concurrent_reservations_never_overspend(ray_cluster):
    ray = ray_cluster
    from tierwise.ray_cluster.ledger import BudgetLedger

    ledger = BudgetLedger.remote(1000.0)

    @ray.remote
    def worker(seed: int) -> float:
        rng = random.Random(seed)

        async def go():
            spent = 0.0
            for _ in range(30):
                worst = rng.uniform(10, 60)
                if await ledger.reserve.remote(worst, f"w{seed}") == GRANTED:
                    actual = worst * rng.uniform(0.1, 1.0)
                    await ledger.settle.remote(worst, actual, f"w{seed}")
                    spent += actual
            return spent
        return asyncio.run(go())

    totals = ray.get([worker.remote(i) for i in range(6)])
    snap = ray.get(ledger.snapshot.remote())
    assert snap["spent"] == pytest.approx(sum(totals))
    assert snap["spent"] <= 1000.0 and snap["reserved"] == pytest.approx(0.0, abs=1e-6)
    assert snap["spent"] >= 940  # waiting instead of refusing uses the budget
    ray.kill(ledger)


@pytest.mark.slow
def test_waiting_reservation_is_freed_by_release_holder(ray_cluster):
    ray = ray_cluster
    from tierwise.ray_cluster.ledger import BudgetLedger

    ledger = BudgetLedger.remote(100.0)
    assert ray.get(ledger.reserve.remote(80, "lost-replica")) == GRANTED
    waiting = ledger.reserve.remote(50, "other")          # waits: 80 is in flight
    ready, _ = ray.wait([waiting], timeout=0.5)
    assert not ready
    assert ray.get(ledger.release_holder.remote("lost-replica")) == 80
    assert ray.get(waiting, timeout=10) == GRANTED
    assert ray.get(ledger.reserve.remote(120, "other"), timeout=10) == DENIED
    ray.kill(ledger)


@pytest.mark.slow
def test_client_keeps_row_semantics_and_never_deadlocks(ray_cluster):
    """Many rows of one replica reserve and settle through one client; the budget fits
    only a few at a time, so the lease shrinks and reservations wait on settlements."""
    ray = ray_cluster
    from tierwise.ray_cluster.ledger import BudgetLedger, LedgerClient

    ledger = BudgetLedger.remote(500.0)

    @ray.remote
    def replica() -> tuple[int, float]:
        async def go():
            client = LedgerClient(ledger, "r0")

            async def row(i: int):
                if await client.reserve(100.0) != GRANTED:
                    return 0.0
                await asyncio.sleep(0.01)
                await client.settle(100.0, 10.0 + i % 7)
                return 10.0 + i % 7
            spent = await asyncio.gather(*(row(i) for i in range(60)))
            await client.close()
            return sum(1 for s in spent if s), sum(spent)
        return asyncio.run(go())

    served, spent = ray.get(replica.remote(), timeout=120)
    snap = ray.get(ledger.snapshot.remote())
    assert snap["spent"] == pytest.approx(spent) and snap["spent"] <= 500.0
    assert snap["in_flight"] == 0 and snap["reserved"] == pytest.approx(0.0, abs=1e-6)
    # Rows waited for settlements instead of being refused: refusals start only once a
    # 100-unit worst case no longer fits beside what was spent.
    assert snap["spent"] > 400.0 and served >= 30
    ray.kill(ledger)


@pytest.mark.slow
def test_client_leases_budget_instead_of_calling_the_ledger_per_row(ray_cluster):
    """With room in the budget, two replicas' rows reserve inside their leases: the
    ledger sees a handful of calls, and after ``drain`` its spend is every row's."""
    ray = ray_cluster
    from tierwise.ray_cluster.ledger import BudgetLedger, LedgerClient

    ledger = BudgetLedger.remote(1e6)

    @ray.remote
    def replica(name: str) -> tuple[float, dict]:
        async def go():
            client = LedgerClient(ledger, name)

            async def row(i: int):
                assert await client.reserve(50.0) == GRANTED
                await asyncio.sleep(0.001 * (i % 5))
                await client.settle(50.0, 20.0 + i % 3, kind="judge" if i % 10 == 0 else "generation")
                return 20.0 + i % 3
            spent = sum(await asyncio.gather(*(row(i) for i in range(400))))
            await client.drain()
            mid = await ledger.snapshot.remote()  # spend reported, lease still held
            await client.close()
            return spent, mid
        return asyncio.run(go())

    (a, mid_a), (b, _) = ray.get([replica.remote("r0"), replica.remote("r1")], timeout=120)
    snap = ray.get(ledger.snapshot.remote())
    assert mid_a["spent"] >= a and mid_a["reserved"] > 0
    assert snap["spent"] == pytest.approx(a + b) and snap["reserved"] == pytest.approx(0.0, abs=1e-6)
    assert snap["by_kind"]["judge"] == pytest.approx(2 * sum(20.0 + i % 3 for i in range(0, 400, 10)))
    assert 2 <= snap["n_reservations"] < 40  # leases and their renewals, not 800 rows
    ray.kill(ledger)


@pytest.mark.slow
def test_client_attributes_spend_to_parts_through_leases_and_direct_reservations(ray_cluster):
    """Rows of three parts settle through ``for_part`` views of one client, with a budget tight
    enough that some reserve at the ledger itself: the ledger's spend per part is each part's
    rows' sum, on top of what earlier attempts spent (``parts_spent``)."""
    ray = ray_cluster
    from tierwise.ray_cluster.ledger import BudgetLedger, LedgerClient

    ledger = BudgetLedger.remote(2000.0, 30.0, {"out": {1: 30.0}})

    @ray.remote
    def replica() -> dict[int, float]:
        async def go():
            client = LedgerClient(ledger, "r0")
            views = {pid: client.for_part(("out", pid)) for pid in range(3)}
            spent = dict.fromkeys(views, 0.0)

            async def row(i: int):
                pid = i % 3
                if await views[pid].reserve(100.0) != GRANTED:
                    return
                await asyncio.sleep(0.002 * (i % 4))
                cost = 10.0 + i % 7
                await views[pid].settle(100.0, cost, kind="judge" if i % 5 == 0 else "generation")
                spent[pid] += cost
            await asyncio.gather(*(row(i) for i in range(90)))
            await client.close()
            return spent
        return asyncio.run(go())

    spent = ray.get(replica.remote(), timeout=120)
    by_part = ray.get(ledger.part_spend.remote("out"))
    assert by_part == pytest.approx({0: spent[0], 1: 30.0 + spent[1], 2: spent[2]})
    assert ray.get(ledger.spent_on.remote(("out", 1))) == pytest.approx(30.0 + spent[1])
    assert ray.get(ledger.part_spend.remote("elsewhere")) == {}
    snap = ray.get(ledger.snapshot.remote())
    assert snap["spent"] == pytest.approx(sum(by_part.values())) and snap["spent"] <= 2000.0
    ray.kill(ledger)
