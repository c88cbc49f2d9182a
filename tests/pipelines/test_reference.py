"""The reference-answer verifier (``verifier: {kind: reference, ...}``) and the verified-trace export."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data.export import verified_traces
from tierwise.pipelines.tiers.verifiers import ReferenceConfig, prepare_reference, reference_score


def _score(match, reference, answer, text=""):
    cfg = ReferenceConfig("ref", match)
    return reference_score(cfg, prepare_reference(cfg, reference), answer, text)


@pytest.mark.parametrize("reference, answer, text, want", [
    ("1/2", "0.5", "", 1.0),
    ("\\frac{1}{2}", None, "so \\boxed{\\tfrac12}", 1.0),   # the sample's box, not its extracted answer
    ("2\\sqrt{2}", None, "\\boxed{\\sqrt{8}}", 1.0),
    ("1,234", "1234", "", 1.0),
    ("579", "579", "... A: 579", 1.0),
    ("12", "13", "", 0.0),
    ("3", None, "no answer here", 0.0),
    ("3", "x+", "", 0.0),
])
def test_math_match_is_math_verify_equivalence(reference, answer, text, want):
    assert _score("math", reference, answer, text) == want


def test_exact_and_choice_matches():
    assert _score("exact", " even ", "even") == 1.0
    assert _score("exact", "even", "Even") == 0.0
    assert _score("exact", "even", None) == 0.0
    assert _score("choice", "(b)", "The answer is B") == 1.0
    assert _score("choice", "C", "B") == 0.0


BASE = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "budget": {"amount": 1}}


def test_reference_spec_parses_and_is_checked():
    spec = parse_spec(BASE | {"verifier": {"kind": "reference", "column": "answer", "match": "math"}})
    assert spec.verifier.config() == ReferenceConfig("answer", "math")
    with pytest.raises(SpecError, match="match"):
        parse_spec(BASE | {"verifier": {"kind": "reference", "column": "answer", "match": "fuzzy"}})
    with pytest.raises(SpecError, match="verifier.column must not be read by the prompt"):
        parse_spec(BASE | {"verifier": {"kind": "reference", "column": "prompt"}})
    with pytest.raises(SpecError, match="export.traces needs a `verifier`"):
        parse_spec(BASE | {"export": {"traces": "t.jsonl"}, "output": {"path": "out", "keep_samples": True}})
    with pytest.raises(SpecError, match="keep_samples"):
        parse_spec(BASE | {"export": {"traces": "t.jsonl"}, "verifier": {"kind": "reference", "column": "a"}})
    # An objective that counts verified samples takes a reference verifier; a judge mapping is still a judge.
    parse_spec(BASE | {"verifier": {"kind": "reference", "column": "a"},
                       "policy": {"kind": "adaptive", "objective": "verified_yield"}})
    assert parse_spec(BASE | {"verifier": {"kind": "llm_judge", "mode": "agree"}}).verifier.kind == "llm_judge"


def test_a_missing_or_nested_reference_column_is_a_job_error(tmp_path):
    from tierwise.jobs.runner import _check_input
    from tierwise.pipelines.data.errors import InputError

    pl.DataFrame({"id": ["a"], "prompt": ["1+1=\n"], "tags": [["t"]]}).write_parquet(tmp_path / "in.parquet")
    for column, msg in [("answer", r"lacks column\(s\) 'answer' \(verifier.column\)"),
                        ("tags", "'tags' \\(verifier.column\\) must be text or a number")]:
        spec = parse_spec(BASE | {"input": {"path": str(tmp_path / "in.parquet")},
                                  "verifier": {"kind": "reference", "column": column}})
        with pytest.raises(InputError, match=msg):
            _check_input(spec)


def test_reference_cells_that_are_null_are_row_errors():
    from tierwise.ray_cluster.replica import reference_answers

    refs, errors = reference_answers(pl.DataFrame({"a": [7, None, 3]}), "a")
    assert refs == ["7", None, "3"]
    assert errors == [None, "reference answer (verifier.column 'a') is null or empty", None]


OUTPUT = pl.DataFrame({
    "id": ["a", "b", "c"], "status": ["ok", "ok", "error"], "samples": [["x", "y", "x"], ["z"], None],
    "sample_answers": [["1", "2", "1"], ["3"], None], "sample_output_tokens": [[5, 6, 5], [7], None],
    "verifier_scores": [[1.0, 0.0, 1.0], [0.0], None]})
CONVERSATIONS = pl.DataFrame({"id": ["a", "b", "c"], "messages": [
    [{"role": "system", "content": "Add."}, {"role": "user", "content": "q1"}],
    [{"role": "user", "content": "q2"}], None]})


def test_verified_traces_are_one_row_per_distinct_passing_sample_in_chat_form():
    t = verified_traces(OUTPUT, CONVERSATIONS)
    assert t.to_dicts() == [{"id": "a", "sample_idx": 0, "answer": "1", "tokens": 5, "score": 1.0, "messages": [
        {"role": "system", "content": "Add."}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "x"}]}]
    assert verified_traces(OUTPUT, CONVERSATIONS, min_score=0.0)["id"].to_list() == ["a", "a", "b"]
    with pytest.raises(ValueError, match="keep_samples"):
        verified_traces(OUTPUT.with_columns(samples=pl.lit(None, pl.List(pl.String))), CONVERSATIONS)


def test_export_traces_command_writes_jsonl_and_parquet(tmp_path):
    import yaml

    from tierwise.jobs.cli import main
    from tierwise.pipelines.data import io, records

    pl.DataFrame({"id": ["r0", "r1"], "prompt": ["1+1=\n", "2+2=\n"], "ref": ["2", "4"]}).write_parquet(
        tmp_path / "in.parquet")
    recs = [{**records.empty_record("r0", "ok"), "answer": "2", "samples": ["A: 2", "A: 3"],
             "sample_answers": ["2", "3"], "sample_output_tokens": [4, 4], "verifier_scores": [1.0, 0.0]},
            records.empty_record("r1", "skipped_budget")]
    io.write_part(records.to_table(recs), str(tmp_path / "out"), 0, {})
    spec = BASE | {"input": {"path": str(tmp_path / "in.parquet")},
                   "output": {"path": str(tmp_path / "out"), "keep_samples": True},
                   "prompt": {"system_prompt": "Add."}, "verifier": {"kind": "reference", "column": "ref"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["export-traces", str(tmp_path / "spec.yaml"), str(tmp_path / "t.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert lines == [{"id": "r0", "sample_idx": 0, "answer": "2", "tokens": 4, "score": 1.0, "messages": [
        {"role": "system", "content": "Add."}, {"role": "user", "content": "1+1=\n"},
        {"role": "assistant", "content": "A: 2"}]}]
    assert main(["export-traces", str(tmp_path / "spec.yaml"), str(tmp_path / "t.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "t.parquet").to_dicts() == lines
