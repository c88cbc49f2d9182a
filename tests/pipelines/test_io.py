import polars as pl
import pyarrow as pa
import pytest

from tierwise.pipelines.data import io
from tierwise.pipelines.data.errors import InputError


def _write(tmp_path, name, n, row_group_size, start=0):
    path = tmp_path / name
    pl.DataFrame({"id": [f"r{i}" for i in range(start, start + n)], "prompt": [f"p{i}" for i in range(start, start + n)]}
                 ).write_parquet(path, row_group_size=row_group_size)
    return path


def test_parts_cover_every_row_once_across_files_and_row_groups(tmp_path):
    _write(tmp_path, "a.parquet", 23, 5)
    _write(tmp_path, "b.parquet", 7, 3, start=23)
    files = io.list_input_files(str(tmp_path))
    assert [f.num_rows for f in files] == [23, 7]
    parts = io.plan_parts(files, part_rows=4)
    assert [p.part_id for p in parts] == list(range(len(parts)))
    ids = []
    for p in parts:
        t = io.read_part(p, ["id"])
        assert t.num_rows == p.length <= 4
        ids += t.column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(30)]


def test_parts_are_deterministic(tmp_path):
    _write(tmp_path, "a.parquet", 50, 7)
    a = io.plan_parts(io.list_input_files(str(tmp_path)), 9)
    b = io.plan_parts(io.list_input_files(str(tmp_path)), 9)
    assert a == b


def test_write_part_commits_atomically_with_summary(tmp_path):
    out = str(tmp_path / "out")
    table = pa.table({"id": ["a", "b"]})
    io.write_part(table, out, 3, {"rows": 2, "cost": 5.0})
    assert io.committed_parts(out) == {3: {"rows": 2, "cost": 5.0}}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp")]
    assert io.committed_parts(str(tmp_path / "nothing")) == {}


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        io.list_input_files(str(tmp_path / "nope"))


def test_directory_without_parquet_is_an_input_error(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="no .parquet"):
        io.list_input_files(str(tmp_path))


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="bad.parquet"):
        io.list_input_files(str(tmp_path))


@pytest.mark.slow
def test_s3_round_trip(s3_bucket):
    bucket, so = s3_bucket
    df = pl.DataFrame({"id": [str(i) for i in range(10)], "prompt": ["x"] * 10})
    fs, _ = io.filesystem(f"s3://{bucket}", so)
    with fs.open(f"{bucket}/in/data.parquet", "wb") as fh:
        df.write_parquet(fh, row_group_size=3)
    files = io.list_input_files(f"s3://{bucket}/in", so)
    assert files[0].path == f"s3://{bucket}/in/data.parquet"
    parts = io.plan_parts(files, 4)
    assert sum(io.read_part(p, ["id"], so).num_rows for p in parts) == 10
    io.write_part(pa.table({"id": ["a"]}), f"s3://{bucket}/out", 0, {"cost": 1.0}, so)
    assert io.committed_parts(f"s3://{bucket}/out", so) == {0: {"cost": 1.0}}


def _corrupt(tmp_path, column, row_group):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from corrupt_parquet import corrupt_chunk

    path = _write(tmp_path, "in.parquet", 30, 10)
    corrupt_chunk(path, column, row_group)
    return path


def test_corrupt_prompt_page_names_the_file_and_row_group(tmp_path):
    """Regression: a corrupt data page in the prompt column surfaced as a bare pyarrow OSError
    (20 error rows naming no file); the footer-only pre-flight cannot see it."""
    path = _corrupt(tmp_path, "prompt", 1)
    files = io.list_input_files(str(path))  # footers are intact
    first, second, third = io.plan_parts(files, 10)
    assert io.read_part(first, ["id", "prompt"]).num_rows == 10
    assert io.read_part(second, ["id"]).num_rows == 10  # the id chunk of the group is fine
    with pytest.raises(InputError, match=r"in\.parquet row group 1 \(rows 10-19\), column\(s\) id, prompt: "
                                         r"cannot be read"):
        io.read_part(second, ["id", "prompt"])
    # A part spanning groups names the group that failed.
    with pytest.raises(InputError, match="row group 1"):
        io.read_part(io.Part(0, first.file, 5, 10), ["prompt"])


def test_corrupt_id_page_is_an_input_error_naming_the_file_and_row_group(tmp_path):
    """Regression: a corrupt id column at the pre-flight id check was a raw pyarrow traceback."""
    path = _corrupt(tmp_path, "id", 2)
    files = io.list_input_files(str(path))
    with pytest.raises(InputError, match=r"in\.parquet row group 2 \(rows 20-29\), column\(s\) id"):
        list(io.iter_column(files, "id"))
    assert sum(len(c) for c in io.iter_column(files, "prompt")) == 30


def test_jsonl_and_openai_batch_files_stream_in_parts(tmp_path, monkeypatch):
    """A JSONL file is read block by block (its blocks stand for row groups): parts cover every row
    once, in order; an OpenAI batch file's body fields (messages, max_tokens) become columns."""
    import json

    monkeypatch.setattr(io, "JSON_BLOCK_BYTES", 4096)  # many blocks from a small file
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "m", "messages": [{"role": "user", "content": f"{i}+1=\n"}], "max_tokens": 9}}
            for i in range(1500)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (files,) = io.list_input_files(str(tmp_path))
    assert files.num_rows == 1500 and len(files.row_groups) > 10
    schema = io.read_schema(files)
    assert {"custom_id", "messages", "max_tokens", "model"} <= set(schema.names)
    assert pa.types.is_list(schema.field("messages").type)
    ids, contents = [], []
    for p in io.plan_parts([files], 64):
        t = io.read_part(p, ["custom_id", "messages"])
        assert t.num_rows == p.length
        ids += t.column("custom_id").to_pylist()
        contents += [m[0]["content"] for m in t.column("messages").to_pylist()]
    assert ids == [f"r{i}" for i in range(1500)] and contents[7] == "7+1=\n"
    assert sum(len(c) for c in io.iter_column([files], "custom_id")) == 1500
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl").write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(InputError, match=r"x.jsonl is not readable JSON Lines"):
        io.list_input_files(str(tmp_path / "bad"))
