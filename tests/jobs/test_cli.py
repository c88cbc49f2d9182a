import pytest

from tierwise.jobs.cli import build_parser, main
from tierwise.jobs.cli_common import summary_line, tier_lines

REPORT = {
    "rows": 3, "status": {"ok": 2, "skipped_budget": 1, "error": 0}, "spent": 90.0,
    "budget": {"amount": 100.0, "unit": "tokens"}, "utilization": 0.9, "accuracy": 0.5,
    "output_tokens_per_s": 10.0, "wall_s": 1.5,
    "by_tier": [{"tier": "vote", "bucket": 2, "rows": 2, "mean_samples": 3.0, "cost": 90.0, "accuracy": 0.75},
                {"tier": None, "bucket": None, "rows": 1, "mean_samples": 0.0, "cost": 0.0, "accuracy": 0.0}],
}


def test_summary_and_tier_lines():
    line = summary_line(REPORT)
    assert "spent 90 of 100 tokens (90.0%)" in line and "accuracy 0.500" in line and "skipped_budget=1" in line
    lines = tier_lines(REPORT)
    assert lines[0].split() == ["vote", "b2", "2", "rows,", "3.00", "samples/row,", "cost", "90,", "accuracy", "0.750"]
    assert lines[1].split()[0] == "(none)"


def test_bad_spec_exits_2_with_the_field(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("input: {path: x}\noutput: {path: y}\nbudget: {amount: -5}\n")
    assert main(["run", str(spec)]) == 2
    assert "budget.amount" in capsys.readouterr().err


def test_every_subcommand_is_wired():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"run", "demo-data", "sample", "replay"} <= set(sub)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run"])


def test_replay_verified_yield_with_yield_cap(capsys):
    import json
    from pathlib import Path

    recorded = Path(__file__).resolve().parents[2] / "bench" / "data" / "demo_samples.parquet"
    assert main(["replay", str(recorded), "--budget", "16000", "--objective", "verified_yield",
                 "--yield-cap", "2", "--policy", "uniform"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["objective"] == "verified_yield" and out["yield_cap"] == 2 and 0 < out["score"] < 1
    assert main(["replay", str(recorded), "--budget", "10", "--objective", "verified_yield", "--yield-cap", "0"]) == 2


@pytest.mark.slow
def test_sample_records_a_replay_table(tmp_path, ray_cluster, capsys):
    """`tierwise sample` on the real engine: one row per sample in the replay schema, graded by gold,
    with the log-probs and verifier scores replay's policies read; `replay` then runs on it."""
    import json

    import polars as pl

    from tierwise.pipelines.replay.table import build_table, load_samples
    from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

    generate_dataset(24, DEMO_MIX, seed=5).write_parquet(tmp_path / "in.parquet")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"input: {{path: {tmp_path / 'in.parquet'}, gold_column: gold}}\n"
                    f"output: {{path: {tmp_path / 'out'}}}\nbudget: {{amount: 1.0e9}}\n"
                    "model: {max_model_len: 256}\nsampling: {max_tokens: 200}\n"
                    "answer_extractor: arithmetic\nverifier: arithmetic_steps\n")
    out = tmp_path / "samples.parquet"
    assert main(["sample", str(spec), "--n", "4", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    samples = pl.read_parquet(out)
    assert printed["samples"] == samples.height == 24 * 4 and samples["query_id"].n_unique() == 24
    assert samples["correct"].null_count() == 0 and samples["correct"].any()
    assert samples["mean_logprob"].null_count() == 0 and samples["verifier_score"].null_count() == 0
    table = build_table(load_samples(str(out)))
    assert table.shape == (24, 4) and table.mean_logprob is not None and table.verifier_score is not None


def _demo_spec(tmp_path, name: str, rows: int, extra: str = "") -> str:
    from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

    generate_dataset(rows, DEMO_MIX, seed=len(name)).write_parquet(tmp_path / f"{name}.parquet")
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\ninput: {{path: {tmp_path / name}.parquet, gold_column: gold}}\n"
                    f"output: {{path: {tmp_path / name}-out}}\nbudget: {{amount: 1.0e9}}\n"
                    f"model: {{max_model_len: 256}}\nanswer_extractor: arithmetic\n{extra}")
    return str(spec)


def test_specs_with_the_same_replicas_share_a_pool(tmp_path):
    """`tierwise run A B` starts engines once for A and B when their replicas are the same: sampling,
    policy and budget may differ, not the model, its engine settings or the replica count."""
    from tierwise.jobs.cli_common import load_job_spec
    from tierwise.jobs.runner import pool_spec

    base = _demo_spec(tmp_path, "a", 4)
    same = load_job_spec(base, ["sampling.temperature=0.2", "policy.n=3", "budget.amount=10"])
    for change in (["model.max_model_len=200"], ["replicas.count=2"], ["model.engine_kwargs.max_num_seqs=8"]):
        assert pool_spec(load_job_spec(base, change)) != pool_spec(load_job_spec(base, [])), change
    assert pool_spec(same) == pool_spec(load_job_spec(base, []))


@pytest.mark.slow
def test_run_several_specs_on_one_pool(tmp_path, ray_cluster, capsys):
    """Two jobs in one `tierwise run`: each writes its complete output and prints its summary; their
    one pool started once (the CLI names each start on stderr)."""
    import polars as pl

    a = _demo_spec(tmp_path, "first", 30)
    b = _demo_spec(tmp_path, "second", 20, "policy: {kind: uniform, n: 2}\n")
    assert main(["run", a, b, "--quiet", "--brief"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("tierwise: starting 1 replica(s)") == 1
    summaries = [line for line in captured.out.splitlines() if line.startswith("tierwise: rows")]
    assert [s.split(" | ")[0] for s in summaries] == ["tierwise: rows 30", "tierwise: rows 20"]
    for name, rows, samples in (("first", 30, 1), ("second", 20, 2)):
        out = pl.read_parquet(tmp_path / f"{name}-out" / "part-*.parquet")
        assert out.height == rows and out["id"].n_unique() == rows and (out["status"] == "ok").all()
        assert (out["n_samples"] == samples).all()
