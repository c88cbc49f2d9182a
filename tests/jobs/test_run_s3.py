"""Input and output on a real S3 endpoint (moto's server on 127.0.0.1)."""

import polars as pl
import pytest

from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import parse_spec
from tierwise.pipelines.data import io
from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset


@pytest.mark.slow
def test_s3_input_and_output(s3_bucket, shared_pool):
    bucket, so = s3_bucket
    df = generate_dataset(24, [1, 2, 3], seed=3)
    fs, _ = io.filesystem(f"s3://{bucket}", so)
    with fs.open(f"{bucket}/input/part0.parquet", "wb") as fh:
        df.write_parquet(fh, row_group_size=10)
    spec = parse_spec({
        "input": {"path": f"s3://{bucket}/input", "gold_column": "gold", "storage_options": so},
        "output": {"path": f"s3://{bucket}/output", "part_rows": 10, "storage_options": so},
        "model": {"max_model_len": 256},
        "sampling": {"max_tokens": 200},
        "budget": {"amount": 1e7},
        "answer_extractor": "arithmetic",
    })
    report = run_job(spec, show_progress=False, pool=shared_pool)
    out = pl.concat([pl.read_parquet(fs.open(p, "rb")) for p in sorted(fs.glob(f"{bucket}/output/part-*.parquet"))])
    assert sorted(out["id"].to_list()) == sorted(df["id"].to_list())
    assert (out["status"] == "ok").all() and (out["tier"] == "single").all()
    assert report["accuracy"] >= 0.9
    assert fs.exists(f"{bucket}/output/run_report.json")
