"""Fault tests on the real stack: lost replicas, a killed driver, flaky S3.

Each checks the output contract afterwards: every input id exactly once, and
spend never above the budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from jobs.runner import run_job
from jobs.spec import parse_spec
from pipelines import io
from pipelines.errors import StorageError
from pipelines.tasks.arithmetic import DEMO_MIX, generate_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from flaky_proxy import FlakyProxy  # noqa: E402

ROWS = 120


def spec_dict(inp, out, **over) -> dict:
    d = {
        "input": {"path": str(inp), "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": 10},
        "model": {"max_model_len": 256},
        "sampling": {"max_tokens": 200},
        "replicas": {"parts_per_replica": 1, "max_part_retries": 3},
        "budget": {"amount": 1e7},
        "policy": {"kind": "uniform", "n": 2},
        "answer_extractor": "arithmetic",
    }
    for k, v in over.items():
        d[k] = d.get(k, {}) | v
    return d


def assert_exactly_once(out_df: pl.DataFrame, inp) -> None:
    ids = pl.read_parquet(inp)["id"]
    assert out_df.height == len(ids)
    assert sorted(out_df["id"].to_list()) == sorted(ids.to_list())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "in.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=11).write_parquet(path)
    return path


def _wait_for_parts(out: Path, n: int, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if out.exists() and len(list(out.glob("part-*.parquet"))) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} parts committed in {timeout}s")


@pytest.mark.slow
def test_killed_replica_is_replaced_and_output_is_exactly_once(data, tmp_path, ray_cluster, shared_pool):
    out = tmp_path / "out"
    killed = []

    def killer():
        _wait_for_parts(out, 2)
        pid = next(iter(shared_pool.info().values()))["pid"]
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    report = run_job(parse_spec(spec_dict(data, out)), show_progress=False, pool=shared_pool)
    t.join(timeout=5)
    assert killed, "the replica was never killed"
    df = pl.read_parquet(f"{out}/part-*.parquet")
    assert_exactly_once(df, data)
    assert (df["status"] == "ok").all()
    assert report["spent"] <= 1e7 and report["complete"]


@pytest.mark.slow
def test_kill_9_driver_then_resume(data, tmp_path, ray_cluster, shared_pool):
    """A driver killed with SIGKILL mid-run, then the same spec again: exactly-once,
    spend never above the budget, and at most one part's worth above a clean run."""
    out = tmp_path / "out"
    budget = 1e7
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(data, out, budget={"amount": budget})))
    address = ray_cluster.get_runtime_context().gcs_address
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "run", str(spec_path), "--quiet",
                             "--address", address], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_parts(out, 3)
        time.sleep(1.0)  # let the next part get under way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    before = io.committed_parts(str(out))
    assert 0 < len(before) < ROWS // 10, "the kill should land mid-run"
    time.sleep(3)  # the dead driver's actors are reaped by Ray
    report = run_job(parse_spec(spec_dict(data, out, budget={"amount": budget})), show_progress=False,
                     pool=shared_pool)
    df = pl.read_parquet(f"{out}/part-*.parquet")
    assert_exactly_once(df, data)
    assert report["resumed_parts"] == len(before)
    ledger = json.loads((out / "_tierwise" / "ledger.json").read_text())
    clean_cost = df["cost"].sum()           # what these exact rows cost, each once
    part_costs = df.with_columns((pl.col("id").rank("ordinal") // 10).alias("p")).group_by("p").agg(pl.col("cost").sum())
    assert ledger["spent"] <= budget
    assert clean_cost <= ledger["spent"] <= clean_cost + part_costs["cost"].max()


@pytest.mark.slow
def test_flaky_s3_writes_are_retried(data, s3_bucket, s3_endpoint, shared_pool):
    bucket, so = s3_bucket
    with FlakyProxy(s3_endpoint, fail_every=3) as proxy:
        flaky = {**so, "client_kwargs": {**so["client_kwargs"], "endpoint_url": proxy.url}}
        out = f"s3://{bucket}/out"
        spec = spec_dict(data, out, output={"path": out, "storage_options": flaky, "part_rows": 30})
        report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
        assert proxy.failed > 0, "the proxy never failed a request"
    fs, _ = io.filesystem(out, so)
    df = pl.concat([pl.read_parquet(fs.open(p, "rb")) for p in fs.glob(f"{bucket}/out/part-*.parquet")])
    assert_exactly_once(df, data)
    assert report["complete"]


def test_missing_bucket_is_a_clear_job_error(data, s3_endpoint):
    so = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint,
                                                                  "region_name": "us-east-1"}}
    with pytest.raises(StorageError, match="no-such-bucket"):
        io.write_part(pl.DataFrame({"id": ["a"]}).to_arrow(), "s3://no-such-bucket/out", 0, {}, so)


@pytest.mark.slow
def test_worker_node_lost_mid_run(data, tmp_path):
    """A 3-node ray.cluster_utils.Cluster (own process): the node hosting the
    replica is removed mid-run; the replica comes back on the other node."""
    script = Path(__file__).resolve().parents[1] / "support" / "multinode_job.py"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, str(script), str(data), str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["removed"], "the replica's node was never removed"
    assert result["complete"]
    assert_exactly_once(pl.read_parquet(f"{out}/part-*.parquet"), data)


@pytest.mark.slow
def test_sigint_drains_commits_and_resumes(data, tmp_path, ray_cluster, shared_pool):
    out = tmp_path / "out"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(data, out)))
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "run", str(spec_path), "--quiet", "--address", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_parts(out, 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "re-run the same spec to resume" in err
    report = json.loads((out / "run_report.json").read_text())
    assert not report["complete"]
    committed = len(io.committed_parts(str(out)))
    assert report["rows_written"] == committed * 10
    again = run_job(parse_spec(spec_dict(data, out)), show_progress=False, pool=shared_pool)
    assert again["complete"] and again["resumed_parts"] == committed
    assert_exactly_once(pl.read_parquet(f"{out}/part-*.parquet"), data)
