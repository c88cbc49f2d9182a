"""Fail before spending, on what a spec can know (issue 16, points 7 and 12).

Each bad spec is refused on the driver, naming the field, before any engine starts; a job
whose budget is already spent writes its rows from the driver; replicas the cluster can
never host are refused at once, and a wait for resources is bounded and stops on a signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tierwise.jobs.cli import main
from tierwise.jobs.cli_common import EXIT_EVERY_ROW_FAILED, every_row_failed
from tierwise.jobs.preflight import check_job, check_model, hosts
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data.errors import InputError
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from corrupt_parquet import corrupt_chunk  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ROWS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("preflight") / "in.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=3).write_parquet(path, row_group_size=20)
    return path


def spec_dict(inp, out, **over) -> dict:
    d = {"input": {"path": str(inp), "gold_column": "gold"}, "output": {"path": str(out), "part_rows": 10},
         "model": {"max_model_len": 256}, "sampling": {"max_tokens": 200}, "budget": {"amount": 1e6},
         "policy": {"kind": "uniform", "n": 2}, "answer_extractor": "arithmetic"}
    for k, v in over.items():
        d[k] = d[k] | v if k != "policy" and isinstance(d.get(k), dict) and isinstance(v, dict) else v
    return d


# ---------------------------------------------------------------- the spec alone

@pytest.mark.parametrize("patch, message", [
    ({"verifier": "arithmetic_step"}, r"verifier: .*unknown verifier 'arithmetic_step' \(did you mean "
                                      r"'arithmetic_steps'\?\); valid: arithmetic_steps, module:function"),
    ({"verifier": "my mod:f"}, r"verifier: .*not of the form module:function"),
    ({"verifier": "mod:"}, r"verifier: .*not of the form module:function"),
    ({"answer_extractor": "arithmatic"}, r"answer_extractor: .*unknown answer extractor 'arithmatic' \(did you "
                                         r"mean 'arithmetic'\?\); valid: arithmetic, boxed, choice, last_line, full, json:FIELD, regex:PATTERN"),
    ({"answer_extractor": "regex:A: ([0-9+"}, r"answer_extractor: .*'regex:A: \(\[0-9\+' is not a valid regex"),
    ({"answer_extractor": "regex:"}, r"answer_extractor: .*needs a pattern"),
    ({"model": {"path": "embedded:nope"}}, r"model.path: .*unknown embedded model 'nope'; valid: tiny-adder"),
    ({"verifier": {"kind": "llm_judge", "mode": "agree", "model": "embedded:tiny-addr"}},
     r"verifier.llm_judge.model: .*unknown embedded model 'tiny-addr' \(did you mean 'tiny-adder'\?\)"),
    ({"replicas": {"start_timeout_s": 0}}, r"replicas.start_timeout_s"),
])
def test_bad_names_are_refused_by_the_spec_naming_the_valid_ones(patch, message):
    """Regression: a misspelled answer_extractor was accepted and every row ended `error` after the
    engine started (60 of 60 rows, exit 0); a bad `regex:` crashed with a traceback at run time."""
    with pytest.raises(SpecError, match=message):
        parse_spec(spec_dict("in.parquet", "out", **patch))


@pytest.mark.parametrize("verifier, message", [
    ("math:isclos", r"verifier: verifier 'math:isclos': 'math' has no 'isclos' \(did you mean 'isclose'\?\)"),
    ("no_such_module_tw:score", r"module 'no_such_module_tw' cannot be imported: ModuleNotFoundError"),
    ("math:pi", r"'pi' is a float, not a function"),
])
def test_module_function_verifiers_are_imported_on_the_driver(verifier, message):
    """Regression: a `module:function` verifier that does not exist was found only on the replicas,
    after the engine started, as one error per row."""
    spec = parse_spec(spec_dict("in.parquet", "out", verifier=verifier))  # its form is fine
    with pytest.raises(SpecError, match=message):
        check_job(spec)
    check_job(parse_spec(spec_dict("in.parquet", "out", verifier="math:isclose")))


def test_local_model_directories_are_checked_on_the_driver(tmp_path):
    """Regression: a missing model directory was found after 15-17 s, under a Ray actor's repr."""
    with pytest.raises(SpecError, match=r"model.path: local model directory '/nonexistent/model' does not exist"):
        check_model("model.path", "/nonexistent/model")
    (tmp_path / "weights").mkdir()
    with pytest.raises(SpecError, match=r"is not a model directory \(it holds no config.json\)"):
        check_model("verifier.model", str(tmp_path / "weights"))
    check_model("model.path", "embedded:tiny-adder")
    check_model("model.path", str(REPO / "models" / "tiny-adder"))
    check_model("model.path", "Qwen/Qwen2.5-0.5B-Instruct")  # a Hugging Face id: the replicas fetch it
    judge = {"kind": "llm_judge", "mode": "agree", "model": str(tmp_path / "nope")}
    with pytest.raises(SpecError, match=r"verifier.model: local model directory"):
        check_job(parse_spec(spec_dict("in.parquet", "out", verifier=judge)))


@pytest.mark.parametrize("patch, message", [
    ({"verifier": "math:nosuch"}, "has no 'nosuch'"),
    ({"model": {"path": "/nonexistent/model"}}, "does not exist"),
])
def test_run_job_refuses_in_seconds_with_nothing_written(data, tmp_path, patch, message):
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(SpecError, match=message):
        run_job(parse_spec(spec_dict(data, out, **patch)), show_progress=False)
    assert time.monotonic() - t0 < 5
    assert not out.exists()  # nothing written, nothing spent, no engine


def test_replicas_per_node():
    assert hosts({"CPU": 2.0}, {"CPU": 8.0}) == 0
    assert hosts({"CPU": 8.0, "GPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}) == 2
    assert hosts({"CPU": 2.0}, {"CPU": 0.5}) == 4 and hosts({"CPU": 16.0}, {"GPU": 1.0}) == 0


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("pair, message", [
    ("budget.amount.x=1", r"--set budget.amount.x: budget.amount is 1000000.0, not a mapping with a field 'x'"),
    ("budget.amount=[1", r"--set 'budget.amount=\[1': the value is not valid YAML"),
    ("budget..amount=1", r"--set budget..amount: a key is dot-separated field names"),
    ("=1", r"--set expects KEY=VALUE"),
])
def test_bad_set_overrides_exit_2_without_a_traceback(data, tmp_path, capsys, pair, message):
    """Regression: `--set budget.amount.x=1` and `--set 'budget.amount=[1'` printed tracebacks."""
    import re

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(data, tmp_path / "out")))
    assert main(["run", str(spec), "--quiet", "--set", pair]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_corrupt_id_column_fails_the_job_naming_file_and_row_group(tmp_path):
    path = tmp_path / "in.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=3).write_parquet(path, row_group_size=20)
    corrupt_chunk(path, "id", 1)
    with pytest.raises(InputError, match=r"in\.parquet row group 1 \(rows 20-39\), column\(s\) id: cannot be read"):
        run_job(parse_spec(spec_dict(path, tmp_path / "out")), show_progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nothing left to spend

@pytest.mark.parametrize("policy", [{"kind": "uniform", "n": 2}, {"kind": "adaptive"}])
def test_zero_budget_writes_every_row_skipped_with_no_engine(data, tmp_path, policy):
    """Regression: a zero budget started the engine (about 60 s) only to mark every row skipped."""
    import ray

    was_connected = ray.is_initialized()
    out = tmp_path / "out"
    t0 = time.monotonic()
    report = run_job(parse_spec(spec_dict(data, out, budget={"amount": 0}, policy=policy)), show_progress=False)
    assert time.monotonic() - t0 < 10
    assert ray.is_initialized() == was_connected  # no cluster joined or started for it
    df = pl.read_parquet(f"{out}/part-*.parquet")
    assert sorted(df["id"].to_list()) == sorted(pl.read_parquet(data)["id"].to_list())  # every id once
    assert (df["status"] == "skipped_budget").all() and (df["cost"] == 0).all() and df["answer"].is_null().all()
    assert (df["correct"] == False).all()  # noqa: E712  (graded as a replica grades a row without answer)
    assert report["status"] == {"ok": 0, "skipped_budget": ROWS, "skipped_deadline": 0, "error": 0} and report["complete"]
    assert report["spent"] == 0 and report["parts"] == 4
    again = run_job(parse_spec(spec_dict(data, out, budget={"amount": 0}, policy=policy)), show_progress=False)
    assert again["resumed_parts"] == 4 and again["status"] == report["status"]


def test_an_exhausted_budget_skips_the_rest_from_the_driver(data, tmp_path):
    """A resumed job whose ledger already holds the whole budget starts no engine either."""
    out = tmp_path / "out"
    (out / "_tierwise").mkdir(parents=True)
    (out / "_tierwise" / "ledger.json").write_text(json.dumps({"spent": 500.0, "budget": 500.0}))
    report = run_job(parse_spec(spec_dict(data, out, budget={"amount": 500})), show_progress=False)
    assert report["status"]["skipped_budget"] == ROWS and report["spent"] == 500.0


# ---------------------------------------------------------------- every row failed

def test_every_row_failed_is_exit_4_naming_the_common_errors(data, tmp_path, capsys):
    """Every row `error` (parts committed from the driver, as a part whose retries ran out is):
    the CLI's exit code is 4, with the most common errors; some rows ok: 0."""
    from tierwise.jobs.runner import _commit_failed_part
    from tierwise.pipelines.data import io

    spec = parse_spec(spec_dict(data, tmp_path / "out"))
    for part in io.plan_parts(io.list_input_files(str(data)), 10):
        _commit_failed_part(spec, part, "boom")
    report = {"rows": ROWS, "status": {"ok": 0, "skipped_budget": 0, "error": ROWS}}
    assert every_row_failed(report, spec) == EXIT_EVERY_ROW_FAILED == 4
    err = capsys.readouterr().err
    assert f"every row ({ROWS} of {ROWS}) ended as an error" in err and "40 x part failed after retries: boom" in err
    assert every_row_failed({"rows": ROWS, "status": {"ok": 1, "error": ROWS - 1}}, spec) == 0
    assert every_row_failed({"rows": 0, "status": {}}, spec) == 0


@pytest.mark.slow
def test_a_job_whose_rows_all_fail_exits_non_zero(tmp_path, shared_pool, capsys):
    """Regression: a job whose 60 of 60 rows ended `error` exited 0."""
    pl.DataFrame({"id": ["a", "b", "c"], "prompt": ["", "  ", None]}).write_parquet(tmp_path / "in.parquet")
    spec = parse_spec({"input": {"path": str(tmp_path / "in.parquet")}, "output": {"path": str(tmp_path / "out")},
                       "model": {"max_model_len": 256}, "budget": {"amount": 1e5}})
    report = run_job(spec, show_progress=False, pool=shared_pool)
    assert report["status"]["error"] == 3
    assert every_row_failed(report, spec) == 4
    err = capsys.readouterr().err
    assert "2 x prompt is empty" in err and "1 x prompt is null" in err


@pytest.mark.slow
def test_corrupt_prompt_page_becomes_error_rows_naming_file_and_row_group(tmp_path, shared_pool):
    """Regression: a corrupt data page in the prompt column ended as 20 error rows naming no file."""
    path = tmp_path / "in.parquet"
    generate_dataset(ROWS, DEMO_MIX, seed=3).write_parquet(path, row_group_size=20)
    corrupt_chunk(path, "prompt", 1)
    spec = spec_dict(path, tmp_path / "out", replicas={"max_part_retries": 0}, sampling={"max_tokens": 60})
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    df = pl.read_parquet(f"{tmp_path / 'out'}/part-*.parquet").sort("id")
    assert df.height == ROWS and report["status"] == {"ok": 20, "skipped_budget": 0, "skipped_deadline": 0, "error": 20}
    bad = df.filter(pl.col("status") == "error")["error"].unique().to_list()
    assert len(bad) == 1 and "in.parquet row group 1 (rows 20-39)" in bad[0] and "prompt" in bad[0]


# ---------------------------------------------------------------- the cluster's resources

@pytest.mark.slow
@pytest.mark.parametrize("replicas, message", [
    ({"num_cpus": 64}, r"replicas: 1 x \{CPU: 64\} .*the cluster can never host them: no autoscaler can add "
                       r"nodes; its 1 node\(s\) can host 0 \(largest node \{CPU: 4, GPU: 0\}"),
    ({"count": 5, "num_cpus": 1}, r"replicas: 5 x \{CPU: 1\} .*can host 4"),
    ({"num_gpus": 1}, r"replicas: 1 x \{CPU: 1, GPU: 1\} .*can never host"),
])
def test_replicas_the_cluster_can_never_host_are_refused_at_once(data, tmp_path, ray_cluster, replicas, message):
    """Regression: `replicas.num_cpus: 8` on a 2-core machine waited forever on Ray's autoscaler ("No
    available node types can fulfill resource request"). A local cluster has no autoscaler: refused
    at once, with the numbers, before any engine starts."""
    t0 = time.monotonic()
    with pytest.raises(SpecError, match=message):
        run_job(parse_spec(spec_dict(data, tmp_path / "out", replicas=replicas)), show_progress=False)
    assert time.monotonic() - t0 < 15
    assert not list((tmp_path / "out").glob("part-*"))


def _cli(spec_path, address) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tierwise.jobs.cli", "run", str(spec_path), "--quiet", "--address", address],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_waiting_for_resources_is_bounded_and_stops_on_sigterm(data, tmp_path, ray_cluster):
    """A cluster joined by address may have an autoscaler the driver cannot see: the job waits for
    the replicas' resources, at most replicas.start_timeout_s, then fails naming the limit; SIGTERM
    stops the wait at once (regression: it was ignored while waiting for resources)."""
    address = ray_cluster.get_runtime_context().gcs_address
    bounded = tmp_path / "bounded.yaml"
    bounded.write_text(yaml.safe_dump(spec_dict(data, tmp_path / "o1", replicas={"num_cpus": 64,
                                                                                 "start_timeout_s": 3})))
    proc = _cli(bounded, address)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "not free within 3 s (replicas.start_timeout_s)" in err and "Traceback" not in err

    waiting = tmp_path / "waiting.yaml"
    waiting.write_text(yaml.safe_dump(spec_dict(data, tmp_path / "o2", replicas={"num_cpus": 64})))
    proc = _cli(waiting, address)
    try:
        seen = ""
        while "waiting up to 600 s" not in seen:
            line = proc.stderr.readline()
            assert line, f"the job never said it waits: {seen[-2000:]}"
            seen += line
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by signal 15 while waiting for the replicas' resources; nothing was spent" in err
