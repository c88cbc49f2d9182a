"""Ray's Prometheus endpoint serves the job's metrics (``tierwise.ray_cluster.metrics``) while the job runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A local cluster of its own (in a subprocess: the test session's shared cluster has no export port)
# with a ledger that is spending: the endpoint must show its budget gauges before it is killed.
SCRIPT = textwrap.dedent("""
    import sys, time, urllib.request
    from tierwise.ray_cluster.cluster import connect
    from tierwise.ray_cluster.ledger import BudgetLedger

    port = int(sys.argv[1])
    ray = connect(num_cpus=1, _metrics_export_port=port)
    ledger = BudgetLedger.remote(1000.0, job="metrics-test")
    assert ray.get(ledger.reserve.remote(100.0, "r")) == "granted"
    ray.get(ledger.settle.remote(100.0, 40.0, "r"))
    ray.get(ledger.record_part.remote("pilot", {"status": {"ok": 7}, "prompt_tokens": 11, "output_tokens": 5}))
    ray.get(ledger.record_engines.remote({"replica-0": 0.5}))
    ray.get(ledger.snapshot.remote())
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            text = ""
        if "ray_tierwise_rows" in text and "ray_tierwise_budget_spent" in text:
            break
        time.sleep(2)
    print(text)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.mark.slow
def test_prometheus_endpoint_serves_the_budget_gauges():
    pytest.importorskip("opencensus", reason="Ray's metrics agent needs ray[default]")
    port = _free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    spent = _sample(out.stdout, "ray_tierwise_budget_spent")
    assert spent and 'tierwise_job="metrics-test"' in spent[0] and float(spent[0].rsplit(" ", 1)[1]) == 40.0, out.stdout[-3000:]
    left = _sample(out.stdout, "ray_tierwise_budget_left")
    assert left and float(left[0].rsplit(" ", 1)[1]) == 960.0
    rows = _sample(out.stdout, "ray_tierwise_rows_total") or _sample(out.stdout, "ray_tierwise_rows")
    assert rows and 'tier="pilot"' in rows[0] and 'status="ok"' in rows[0] and float(rows[0].rsplit(" ", 1)[1]) == 7
    busy = _sample(out.stdout, "ray_tierwise_engine_busy_fraction")
    assert busy and float(busy[0].rsplit(" ", 1)[1]) == 0.5
