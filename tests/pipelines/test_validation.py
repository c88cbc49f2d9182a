import polars as pl
import pyarrow as pa
import pytest

from tierwise.pipelines.data.errors import InputError
from tierwise.pipelines.data.validation import check_columns, check_unique_ids, row_errors


def test_missing_columns_are_named_with_their_spec_field():
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pytest.raises(InputError, match=r"'prompt' \(input.prompt_column\)"):
        check_columns(schema, {"id_column": "id", "prompt_column": "prompt"}, "data.parquet")


def test_prompt_column_must_be_text():
    schema = pa.schema([("id", pa.string()), ("prompt", pa.int64())])
    with pytest.raises(InputError, match="must be a string column"):
        check_columns(schema, {"id_column": "id", "prompt_column": "prompt"}, "x")


def test_duplicate_ids_list_examples():
    with pytest.raises(InputError, match=r"2 duplicated id\(s\), e.g. 'a', 'c'"):
        check_unique_ids([pa.array(["a", "b", "a"]), pa.array(["c", "c", "d"])], "id")
    assert check_unique_ids([pa.array([1, 2, 3])], "id") == 3


def test_null_ids_are_a_job_error():
    with pytest.raises(InputError, match="null id"):
        check_unique_ids([pa.array(["a", None])], "id")


def test_row_errors_flag_null_and_empty_prompts():
    assert row_errors(pl.Series(["ok", None, "  ", ""])).to_list() == [
        None, "prompt is null", "prompt is empty", "prompt is empty"]


def test_difficulty_columns_must_exist_and_be_numeric():
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("level", pa.string()), ("n", pa.int64())])
    check_columns(schema, {"id_column": "id", "policy.difficulty.feature_columns[n]": "n"}, "f.parquet")
    with pytest.raises(InputError, match=r"'level' \(policy.difficulty.column\[level\]\) must be numeric"):
        check_columns(schema, {"id_column": "id", "policy.difficulty.column[level]": "level"}, "f.parquet")
    with pytest.raises(InputError, match=r"'nope' \(policy.difficulty.feature_columns\[nope\]\)"):
        check_columns(schema, {"policy.difficulty.feature_columns[nope]": "nope"}, "f.parquet")
