import pytest

from jobs.cli import build_parser, main, summary_line, tier_lines

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
