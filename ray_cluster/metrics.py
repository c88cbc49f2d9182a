"""A job's operator metrics, exported through Ray's metrics API (``ray.util.metrics``): Ray's
metrics agent serves them on each node's Prometheus endpoint (``ray.init(_metrics_export_port=...)``,
``ray start --metrics-export-port``) as ``ray_tierwise_*`` (the dashboard in
``infra/grafana/tierwise.json`` plots them).

They live in the job's ledger actor (``tierwise.ray_cluster.ledger.BudgetLedger``), the one process that
outlives every replica: the budget gauges follow its ledger; the driver reports each committed
part (rows by status and tier, tokens) and the engines' busy fraction to it.

Every metric carries the tag ``tierwise_job`` (the spec's ``name``; ``job`` is Prometheus's own label).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge

PREFIX = "tierwise_"


class JobMetrics:
    """The metrics of one job; its methods turn the ledger's snapshot and the driver's reports into
    metric values (created inside an actor or driver connected to Ray)."""

    def __init__(self, job: str):
        self.tags = {"tierwise_job": job}
        g = lambda name, desc, keys=(): Gauge(PREFIX + name, desc, tag_keys=("tierwise_job", *keys))  # noqa: E731
        c = lambda name, desc, keys=(): Counter(PREFIX + name, desc, tag_keys=("tierwise_job", *keys))  # noqa: E731
        self.budget = g("budget", "the job's budget, in its unit")
        self.spent = g("budget_spent", "budget spent so far (settled work)")
        self.reserved = g("budget_reserved", "budget reserved by work in flight and the replicas' leases")
        self.left = g("budget_left", "budget neither spent nor reserved")
        self.denied = g("budget_denied", "reservations the ledger refused so far")
        self.rows = c("rows", "rows committed, by status and tier", ("status", "tier"))
        self.tokens = c("tokens", "tokens of committed rows, by kind (prompt, output)", ("kind",))
        self.busy = g("engine_busy_fraction", "share of wall time a replica's engine was stepping", ("replica",))

    def budget_snapshot(self, snap: dict) -> None:
        """Sets the budget gauges from ``tierwise.pipelines.plan.budget.Ledger.snapshot``."""
        self.budget.set(snap["budget"], self.tags)
        self.spent.set(snap["spent"], self.tags)
        self.reserved.set(snap["reserved"], self.tags)
        self.left.set(max(0.0, snap["budget"] - snap["spent"] - snap["reserved"]), self.tags)
        self.denied.set(snap["n_denied"], self.tags)

    def part(self, tier: str, summary: dict) -> None:
        """Counts a committed part (``tierwise.ray_cluster.replica.summarize``'s summary) run by ``tier``."""
        for status, n in summary.get("status", {}).items():
            if n:
                self.rows.inc(n, self.tags | {"status": status, "tier": tier or "none"})
        for kind in ("prompt", "output"):
            if summary.get(f"{kind}_tokens"):
                self.tokens.inc(summary[f"{kind}_tokens"], self.tags | {"kind": kind})

    def engines(self, busy: dict[str, float]) -> None:
        """Sets each replica's engine busy fraction (over the driver's last reporting interval)."""
        for replica, fraction in busy.items():
            if fraction is not None:
                self.busy.set(fraction, self.tags | {"replica": replica})
