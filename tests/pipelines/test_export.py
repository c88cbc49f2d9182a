import json

import polars as pl

from tierwise.pipelines.data.export import batch_lines


def test_batch_lines_follow_openai_batch_output():
    out = pl.DataFrame({"id": ["b", "a", "c"], "status": ["ok", "error", "skipped_budget"],
                        "error": [None, "messages is empty", None], "answer": ["46", None, None],
                        "prompt_tokens": [6, None, 6], "output_tokens": [30, 0, 0]})
    lines = [json.loads(line) for line in batch_lines(out).write_ndjson().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "b", "c"]
    a, b, c = lines
    assert a["response"] is None and a["error"] == {"code": "error", "message": "messages is empty"}
    assert b["error"] is None and b["response"]["status_code"] == 200
    body = b["response"]["body"]
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "46"}, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 30, "total_tokens": 36}
    assert c["error"]["code"] == "skipped_budget" and c["id"] == "batch_req_c"


def test_export_batch_command_reads_the_specs_output(tmp_path):
    import yaml

    from tierwise.jobs.cli import main
    from tierwise.pipelines.data import io, records

    recs = [records.empty_record("r1", "skipped_budget", None, 5),
            {**records.empty_record("r0", "ok"), "answer": "7", "prompt_tokens": 4, "output_tokens": 9}]
    io.write_part(records.to_table(recs), str(tmp_path / "out"), 0, {})
    spec = {"input": {"path": "in.parquet"}, "output": {"path": str(tmp_path / "out")}, "budget": {"amount": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["export-batch", str(tmp_path / "spec.yaml"), str(tmp_path / "batch_out.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "batch_out.jsonl").read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["r0", "r1"]
    assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == "7"
    assert lines[1]["error"]["code"] == "skipped_budget"
