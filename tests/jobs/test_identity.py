"""Job identity, resume and one writer per output (issue 16, points 1-6 and 11), on the real stack.

A run's output records what made it (``_tierwise/manifest.json``); a different job on
the same output is refused before any work, naming the change; committed parts are
kept only when their ids match their input part and their rows did not fail for a
job-level cause; two drivers never write one output at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from test_faults import spec_dict as fault_spec  # tests/jobs is on sys.path under pytest

from tierwise.jobs.cli import main
from tierwise.jobs.resume import JobChanged
from tierwise.jobs.runner import _commit_failed_part, run_job
from tierwise.jobs.spec import SpecError, load_spec, parse_spec, resolve_output_path
from tierwise.pipelines.data import io
from tierwise.pipelines.data.report import build_report
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

ROWS = 30


def spec_dict(inp, out, **over) -> dict:
    """The fault tests' job, one sample per row (``over`` merges into its sections)."""
    return fault_spec(inp, out, **({"policy": {"n": 1}} | over))


def write_input(path: Path, rows: int = ROWS, seed: int = 11) -> Path:
    generate_dataset(rows, DEMO_MIX, seed=seed).write_parquet(path)  # ids q0000000.. whatever the seed
    return path


def output(out: Path) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/part-*.parquet")


def ledger(out: Path) -> float:
    return json.loads((out / "_tierwise" / "ledger.json").read_text())["spent"]


def snapshot(out: Path) -> dict[str, int]:
    """Every file of the output and its mtime: what a refused run must leave untouched (the lease and
    the job's log file, which records the refused attempt, aside)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and "lease" not in p.parts and p.name != "tierwise.log"}


def assert_exactly_once(out: Path, inp: Path) -> pl.DataFrame:
    df = output(out)
    assert sorted(df["id"].to_list()) == sorted(pl.read_parquet(inp)["id"].to_list())
    return df


# ---------------------------------------------------------------- fast: no engine

def test_output_path_placeholders(monkeypatch):
    spec = parse_spec(spec_dict("in.parquet", "s3://b/answers/{date}/{run_id}"))
    monkeypatch.setenv("TIERWISE_RUN_ID", "nightly-1")
    monkeypatch.delenv("TIERWISE_RUN_DATE", raising=False)
    night = resolve_output_path(spec, now=datetime(2026, 12, 2, 1, 0, tzinfo=UTC))
    assert night.output.path == "s3://b/answers/2026-12-02/nightly-1"
    monkeypatch.setenv("TIERWISE_RUN_DATE", "2026-12-01")  # a retry after midnight resumes yesterday's
    assert resolve_output_path(spec).output.path == "s3://b/answers/2026-12-01/nightly-1"
    monkeypatch.delenv("TIERWISE_RUN_ID")
    fresh = resolve_output_path(spec).output.path
    assert fresh.startswith("s3://b/answers/2026-12-01/") and "{" not in fresh
    assert resolve_output_path(parse_spec(spec_dict("in", "out"))).output.path == "out"
    with pytest.raises(SpecError, match=r"unknown placeholder\(s\) \['day'\]"):
        parse_spec(spec_dict("in", "out/{day}"))
    # The nightly recipe's spec (infra/kuberay): each night its own output.
    monkeypatch.setenv("TIERWISE_RUN_ID", "nightly-20261202")
    monkeypatch.setenv("TIERWISE_RUN_DATE", "2026-12-02")
    nightly = load_spec(Path(__file__).resolve().parents[2] / "jobs" / "examples" / "nightly.yaml")
    assert resolve_output_path(nightly).output.path == "s3://my-bucket/answers/2026-12-02/nightly-20261202/"


def test_a_resumed_report_separates_this_attempts_work():
    """Issue 16: a fully resumed run printed 373,041 generated tok/s for work it never did."""
    spec = parse_spec(spec_dict("in", "out"))
    found = [{"part_id": i, "rows": 10, "output_tokens": 5000, "cost": 6000.0, "status": {"ok": 10}} for i in range(6)]
    report = build_report(spec, found, {"spent": 36000.0}, 60, 6, resumed_parts=6, wall_s=0.1, attempt=[],
                          prior_spent=36000.0)
    assert report["output_tokens_per_s"] is None and report["output_tokens"] == 30000
    assert report["this_attempt"] == {"parts": 0, "rows": 0, "output_tokens": 0, "spent": 0.0, "wall_s": 0.1,
                                      "output_tokens_per_s": None}
    one = build_report(spec, found, {"spent": 36000.0}, 60, 6, resumed_parts=5, wall_s=2.0, attempt=found[-1:],
                       prior_spent=30000.0)
    assert one["this_attempt"]["spent"] == 6000.0 and one["output_tokens_per_s"] == 2500.0


# ---------------------------------------------------------------- slow: the real engine

@pytest.mark.slow
def test_a_different_job_is_refused_naming_the_change_and_overwrite_archives(tmp_path, shared_pool, capsys):
    """Issue 16 (1, 2): new prompts at the same path, and --set policy.n=4, were 'resumed' with
    last night's answers. Each change is now refused before any work; --overwrite archives."""
    inp, out = write_input(tmp_path / "in.parquet"), tmp_path / "out"
    first = run_job(parse_spec(spec_dict(inp, out)), show_progress=False, pool=shared_pool)
    assert first["complete"] and first["resumed_parts"] == 0
    before = snapshot(out)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(inp, out)))

    def refused(argv: list[str], message: str) -> None:
        assert main(["run", str(spec_path), "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "--overwrite to archive the old output" in err, err
        assert snapshot(out) == before  # nothing written, nothing spent

    refused(["--set", "policy.n=4"], "policy.n: 1 -> 4")
    refused(["--set", "model.path=models/tiny-adder"], "model.path: embedded:tiny-adder -> models/tiny-adder")
    refused(["--set", "sampling.temperature=0.2"], "sampling.temperature: 0.7 -> 0.2")
    original, stat = inp.read_bytes(), inp.stat()
    write_input(inp, rows=ROWS + 5)
    refused([], f"input rows {ROWS} -> {ROWS + 5}")
    size = len(original)
    write_input(inp, seed=99)  # new prompts, the same ids, the same path
    new_size = inp.stat().st_size
    refused([], "input file in.parquet changed: ")
    if new_size != size:
        refused([], f"size {size:,} -> {new_size:,}")
    # The input as it was (bytes and mtime), and more budget: the same job.
    inp.write_bytes(original)
    os.utime(inp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_job(parse_spec(spec_dict(inp, out, budget={"amount": 2e7})), show_progress=False, pool=shared_pool)
    assert again["resumed_parts"] == 3 and again["this_attempt"]["parts"] == 0
    assert again["output_tokens_per_s"] is None

    write_input(inp, seed=99)
    new = run_job(parse_spec(spec_dict(inp, out)), show_progress=False, pool=shared_pool, overwrite=True)
    archive = Path(new["archived_output"])
    assert archive.name.startswith("out.archived-") and new["resumed_parts"] == 0 and new["complete"]
    assert sorted(p.name for p in archive.glob("part-*.parquet")) == [f"part-00000{i}.parquet" for i in range(3)]
    assert (archive / "_tierwise" / "manifest.json").exists() and (archive / "run_report.json").exists()
    df = assert_exactly_once(out, inp)
    assert set(df["answer"].to_list()) != set(output(archive)["answer"].to_list())  # answered anew
    assert ledger(out) == pytest.approx(df["cost"].sum())  # a fresh ledger: this job's spend only


@pytest.mark.slow
def test_a_larger_budget_resumes_and_stays_under_the_new_cap(tmp_path, shared_pool):
    """Raising budget.amount continues the job: parts whose every row was skipped for budget run,
    parts with answers are kept, and the total stays under the new cap."""
    inp = write_input(tmp_path / "in.parquet", rows=40)
    full = run_job(parse_spec(spec_dict(inp, tmp_path / "full")), show_progress=False, pool=shared_pool)["spent"]
    out, small, large = tmp_path / "out", 0.35 * full, 2 * full
    first = run_job(parse_spec(spec_dict(inp, out, budget={"amount": small})), show_progress=False, pool=shared_pool)
    assert first["spent"] <= small and first["status"]["skipped_budget"] > 0
    parts = io.committed_parts(str(out))
    skipped = [p for p, s in parts.items() if s["status"]["skipped_budget"] == s["rows"]]
    assert skipped, f"no part was wholly skipped at {small:.0f} of {full:.0f}"
    same = run_job(parse_spec(spec_dict(inp, out, budget={"amount": small})), show_progress=False, pool=shared_pool)
    assert same["resumed_parts"] == 4 and same["this_attempt"]["parts"] == 0  # the same budget: nothing to do
    kept = snapshot(out)
    more = run_job(parse_spec(spec_dict(inp, out, budget={"amount": large})), show_progress=False, pool=shared_pool)
    assert more["redone_parts"] == {"budget_skipped": skipped} and more["resumed_parts"] == 4 - len(skipped)
    assert more["spent"] <= large and more["this_attempt"]["parts"] == len(skipped)
    for p in set(parts) - set(skipped):  # answers already bought are never bought again
        assert snapshot(out)[f"part-{p:06d}.parquet"] == kept[f"part-{p:06d}.parquet"]
    df = assert_exactly_once(out, inp)
    assert ledger(out) == pytest.approx(df["cost"].sum())
    assert df.filter(pl.col("id").is_in(pl.read_parquet(inp)["id"][skipped[0] * 10:skipped[0] * 10 + 10].to_list())
                     )["status"].to_list().count("ok") > 0


@pytest.mark.slow
def test_tampered_and_job_failed_parts_are_redone(tmp_path, shared_pool):
    """Issue 16 (3, 11): a part whose ids differ from its input part, and a part whose rows failed for a
    job-level cause (after a misspelled-extractor run: 60 error rows 'resumed'), are not done."""
    inp, out = write_input(tmp_path / "in.parquet"), tmp_path / "out"
    spec = parse_spec(spec_dict(inp, out))
    run_job(spec, show_progress=False, pool=shared_pool)
    path = out / "part-000001.parquet"
    table = pq.read_table(path)
    tampered_cost = pl.from_arrow(table)["cost"].sum()
    ids = table.column("id").to_pylist()
    pq.write_table(table.set_column(0, "id", [ids[:-1] + ["intruder"]]), path)  # metadata (summary) kept
    lost_cost = pl.read_parquet(out / "part-000002.parquet")["cost"].sum()
    _commit_failed_part(spec, io.plan_parts(io.list_input_files(str(inp)), 10)[2], "replica lost")
    again = run_job(spec, show_progress=False, pool=shared_pool)
    assert again["redone_parts"] == {"ids_mismatch": [1], "job_errors": [2]} and again["resumed_parts"] == 1
    df = assert_exactly_once(out, inp)
    assert again["status"].get("error", 0) == 0 and (df["status"] == "ok").all()
    # The first generations of both parts were spent: the ledger keeps them, and the redone rows carry them.
    assert again["lost_spent"] == pytest.approx(tampered_cost + lost_cost)
    assert ledger(out) == pytest.approx(df["cost"].sum(), rel=1e-9)

    # Every part failed for a job-level cause: nothing of the old job is worth keeping, so a corrected
    # spec is not refused (its parts are all redone).
    for p in io.plan_parts(io.list_input_files(str(inp)), 10):
        _commit_failed_part(spec, p, "engine dead")
    fixed = run_job(parse_spec(spec_dict(inp, out, policy={"n": 2})), show_progress=False, pool=shared_pool)
    assert fixed["redone_parts"] == {"job_errors": [0, 1, 2]} and fixed["resumed_parts"] == 0
    assert fixed["status"].get("error", 0) == 0 and fixed["complete"]


@pytest.mark.slow
def test_a_second_driver_on_the_same_output_exits_and_the_first_completes_exactly_once(tmp_path, ray_cluster,
                                                                                        capsys):
    """Issue 16 (5): the same spec started twice, 5 s apart, on one output: both spent (168,790 tokens
    against a 100,000 budget). The second now exits non-zero before any work."""
    inp, out = write_input(tmp_path / "in.parquet", rows=60), tmp_path / "out"
    budget = 1e5
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(inp, out, budget={"amount": budget})))
    address = ray_cluster.get_runtime_context().gcs_address
    first = subprocess.Popen([sys.executable, "-m", "tierwise.jobs.cli", "run", str(spec_path), "--quiet", "--address", address],
                             env=os.environ | {"PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not list((out / "_tierwise" / "lease").glob("*.json")) and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        time.sleep(5)
        assert first.poll() is None, "the first driver ended before the second started"
        assert main(["run", str(spec_path), "--quiet", "--address", address]) == 2
        assert "is being written by another driver" in capsys.readouterr().err
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    df = assert_exactly_once(out, inp)
    assert report["spent"] <= budget and ledger(out) == pytest.approx(df["cost"].sum())
    assert ledger(out) == pytest.approx(report["spent"])


@pytest.mark.slow
def test_changed_s3_input_is_refused_by_its_etag(s3_bucket, shared_pool):
    bucket, so = s3_bucket
    fs, _ = io.filesystem(f"s3://{bucket}", so)

    def put_input(seed: int) -> None:
        with fs.open(f"{bucket}/in/data.parquet", "wb") as fh:
            generate_dataset(20, DEMO_MIX, seed=seed).write_parquet(fh)

    put_input(1)
    d = spec_dict(f"s3://{bucket}/in", f"s3://{bucket}/out")
    d["input"]["storage_options"] = d["output"]["storage_options"] = so
    run_job(parse_spec(d), show_progress=False, pool=shared_pool)
    put_input(2)
    with pytest.raises(JobChanged, match=r"input file data.parquet changed: etag \w+ -> \w+"):
        run_job(parse_spec(d), show_progress=False, pool=shared_pool)
