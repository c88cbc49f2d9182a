"""A part's prompts before the tokenizer: user turns from a template, conversations checked per row."""

import polars as pl
import pyarrow as pa
import pytest

from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data.errors import InputError
from tierwise.pipelines.data.prompts import PromptConfig, message_errors, row_prompts, variant_ids
from tierwise.pipelines.data.validation import check_messages_type

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
BASE = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "budget": {"amount": 1000}}


def test_template_fields_fill_the_user_turn_and_a_null_field_is_named():
    frame = pl.DataFrame({"q": ["1+1", None, "3+4"], "n": [1, 2, None]})
    rows = row_prompts(frame, PromptConfig(template="Q{n}: {q}=\n", system_prompt="Add."), chat=True)
    assert rows.text == ["Q1: 1+1=\n", None, None]
    assert rows.errors == [None, "prompt.template field 'q' is null", "prompt.template field 'n' is null"]
    assert rows.messages[0] == [{"role": "system", "content": "Add."}, {"role": "user", "content": "Q1: 1+1=\n"}]
    assert rows.messages[1:] == [None, None]
    raw = row_prompts(pl.DataFrame({"prompt": ["x", "  ", None]}), PromptConfig(), chat=False)
    assert raw.messages is None and raw.errors == [None, "prompt is empty", "prompt is null"]


def test_message_cells_are_checked_per_row():
    cells = [[{"role": "user", "content": "hi"}], None, [], [{"role": "bot", "content": "x"}],
             [{"role": None, "content": "x"}], [{"role": "user", "content": None}],
             [{"role": "assistant", "content": "x"}], [None]]
    errors = message_errors(pl.from_arrow(pa.array(cells, MESSAGES))).to_list()
    assert errors == [None, "messages is null", "messages is empty",
                      "messages: turn 0 has unknown role 'bot' (known: system, developer, user, assistant, tool)",
                      "messages: turn 0 has no role", "messages: turn 0 has no content",
                      "messages has no user turn", "messages: turn 0 is null"]
    frame = pl.DataFrame({"m": pl.from_arrow(pa.array(cells[:2] + [[{"role": "system", "content": "S"},
                                                                      {"role": "user", "content": "u"}]], MESSAGES))})
    rows = row_prompts(frame, PromptConfig(messages_column="m", system_prompt="Sys"), chat=True)
    assert rows.messages == [[{"role": "system", "content": "Sys"}, {"role": "user", "content": "hi"}], None,
                             [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]]
    assert rows.text == ["hi", None, "u"]


def test_messages_column_type():
    check_messages_type(MESSAGES, "m")
    with pytest.raises(InputError, match=r"'m' \(input.messages_column\) must be a list of"):
        check_messages_type(pa.string(), "m")
    with pytest.raises(InputError, match="must be a list of"):
        check_messages_type(pa.list_(pa.struct([("role", pa.string())])), "m")


@pytest.mark.parametrize("patch, message", [
    ({"prompt": {"chat": False, "system_prompt": "x"}}, "prompt.system_prompt needs a chat template"),
    ({"prompt": {"template": "no fields"}}, "reads no input column"),
    ({"prompt": {"template": "{a.b}"}}, "must name an input column"),
    ({"prompt": {"template": "{a:>3}"}}, "must name an input column"),
    ({"prompt": {"template": "{a"}}, "literal brace"),
    ({"input": {"path": "x", "gold_column": "g"}, "prompt": {"template": "{q} {g}"}}, "must not be read by the prompt"),
    ({"input": {"path": "x", "messages_column": "m"}, "prompt": {"template": "{q}"}}, "whole conversation"),
    ({"structured": {"choice": []}}, "structured.choice is empty"),
    ({"structured": {"choice": ["a", "a"]}}, "distinct"),
    ({"structured": {}}, "exactly one of"),
    ({"structured": {"regex": "a"}, "policy": {"tier": "search"}, "verifier": "arithmetic_steps"},
     "step-level search"),
])
def test_prompt_and_structured_spec_rules(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(BASE | patch)


def test_structured_constraint_is_stable():
    spec = parse_spec(BASE | {"structured": {"json_schema": {"b": 1, "a": {"type": "object"}}}})
    assert spec.structured.constraint() == ("json_schema", '{"a": {"type": "object"}, "b": 1}')
    assert parse_spec(BASE | {"structured": {"choice": ["x", "y"]}}).structured.constraint() == ("choice", '["x", "y"]')


def test_row_sampling_overrides_and_bad_cells():
    from tierwise.pipelines.data.prompts import row_sampling

    frame = pl.DataFrame({"mt": [5, None, 0, 7], "t": ["0.5", "hot", None, "-1"]})
    overrides, errors = row_sampling(frame, {"max_tokens": "mt", "temperature": "t"})
    assert overrides == [{"max_tokens": 5, "temperature": 0.5}, {}, {}, {"max_tokens": 7}]
    assert errors == [None, "input column 't' (temperature) is hot: it must be a number at least 0",
                      "input column 'mt' (max_tokens) is 0: it must be a number at least 1",
                      "input column 't' (temperature) is -1: it must be a number at least 0"]
    assert row_sampling(frame, {}) == ([{}] * 4, [None] * 4)
    with pytest.raises(SpecError, match="sampling_columns applies to policy kind 'uniform' with tier 'sample'"):
        parse_spec(BASE | {"input": {"path": "x", "sampling_columns": {"max_tokens": "mt"}},
                           "policy": {"kind": "uniform", "tier": "think"}})


def test_variant_ids_group_each_rows_renderings_and_a_failed_one_is_the_rows_error():
    base = [[1, 2], [3], "chat template failed: base"]
    think = [[1, 2, 9], "chat template failed: think", [5]]
    got = variant_ids(base, {"think": think})
    assert got == [{None: [1, 2], "think": [1, 2, 9]}, "chat template failed: think", "chat template failed: base"]
