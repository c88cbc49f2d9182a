import polars as pl
import pyarrow as pa
import pytest

from pipelines import io
from pipelines.errors import InputError


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
