"""Driver-side skips: the budget's floor, the deadline, and bulk commits (no Ray, no engine)."""

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from tierwise.jobs.skipping import BudgetFloor, PromptTokens, commit_bulk, first_round, job_deadline, round_worst
from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data import io, manifest
from tierwise.pipelines.tiers.base import uniform_tier

PROMPTS = ["1+2=\n", "12+34=\n", None, "x" * 300, "1+1=\n", "99+99=\n", "5+5=\n", "7+7=\n", "", "3+3=\n"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "in.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(10)], "prompt": PROMPTS,
                  "gold": ["3", "46", "0", "0", "2", None, "10", "14", "0", "6"]}).write_parquet(path)
    return path


def spec_for(data, out, **budget):
    return parse_spec({"input": {"path": str(data), "gold_column": "gold"}, "output": {"path": str(out), "part_rows": 4},
                       "budget": {"amount": 100, **budget}})


@pytest.fixture(scope="module")
def tokens():
    return PromptTokens("embedded:tiny-adder", 256)


def test_the_embedded_byte_tokenizer_bounds_are_exact(tokens):
    prompts = pl.Series(["1+2=\n", "héllo", "a<|endoftext|>b"])
    lo, hi = tokens.bounds(prompts)
    exact = tokens.exact(prompts.to_list())
    assert tokens.longest == 1 and lo[:2].tolist() == exact[:2].tolist()
    assert (lo <= exact).all() and (exact <= hi).all()  # the special token's text: a bound of one


def test_bulk_commit_writes_every_id_once_with_row_errors_as_a_replica_would(data, tmp_path, tokens):
    spec = spec_for(data, tmp_path / "out")
    parts = io.plan_parts(io.list_input_files(str(data)), 4)
    summaries = commit_bulk(spec, parts, "skipped_deadline", tokens)
    df = pl.read_parquet(f"{tmp_path}/out/part-*.parquet").sort("id")
    assert df["id"].to_list() == sorted(f"r{i}" for i in range(10)) and sorted(summaries) == [0, 1, 2]
    errors = dict(df.filter(pl.col("status") == "error").select("id", "error").iter_rows())
    assert errors == {"r2": "prompt is null", "r3": "prompt has 300 tokens; the model's context is 256",
                      "r8": "prompt is empty"}
    assert (df.filter(pl.col("status") != "error")["status"] == "skipped_deadline").all()
    assert (df["cost"] == 0).all() and df["answer"].is_null().all()
    assert df.filter(pl.col("id") == "r5")["correct"].item() is None  # no gold: not graded
    assert df.filter(pl.col("id") == "r0")["correct"].item() is False
    assert sum(s["status"]["skipped_deadline"] for s in summaries.values()) == 7
    assert all(s["cost"] == 0 for s in io.committed_parts(str(tmp_path / "out")).values())


def test_the_floor_is_the_cheapest_first_round_of_the_parts_not_yet_sent(data, tmp_path, tokens):
    spec = spec_for(data, tmp_path / "out")
    parts = io.plan_parts(io.list_input_files(str(data)), 4)
    tier = uniform_tier(1, 0.0, 1.0, 40)
    assert first_round(tier) == [(1, 40)]
    floor = BudgetFloor(spec, parts, first_round(tier), tokens, price=1.0)
    # Part 0's cheapest valid row "1+2=\n" reserves 5 + 40; the null and the over-long prompt never reserve.
    assert floor.covers_none(44.9) and not floor.covers_none(45.0)
    floor.mark_sent(parts[0])
    floor.mark_sent(parts[1])
    assert floor.covers_none(45.0) is False  # part 2: "3+3=\n" is 5 tokens too
    floor.mark_sent(parts[2])
    assert floor.covers_none(1e9)  # nothing left to send


def test_first_round_worst_case_matches_the_replicas_clipping():
    k = np.array([5, 250])
    assert round_worst(k, [(2, 40)], 256, 1.0).tolist() == [5 + 80, 250 + 2 * 6]
    assert round_worst(k, [(1, 40)], 256, 0.5).tolist() == [2.5 + 40, 125 + 6]


def test_deadline_is_the_earlier_of_deadline_and_max_wall_s(data, tmp_path):
    at = datetime(2030, 1, 1, 12, 0, 0)
    spec = spec_for(data, tmp_path / "o", deadline=at.isoformat(), max_wall_s=60)
    assert spec.budget.deadline == at.replace(tzinfo=UTC)  # a deadline without a zone is UTC
    d = job_deadline(spec, started=at.replace(tzinfo=UTC).timestamp() - 30, rows_todo=100_000)
    assert d.at == at.replace(tzinfo=UTC).timestamp()
    assert d.at - 10 < d.rows_stop_at < d.at  # time kept for the bulk write and the report
    assert d.due(now=d.rows_stop_at) and not d.due(now=d.rows_stop_at - 5) and d.due(5.1, now=d.rows_stop_at - 5)
    assert job_deadline(spec_for(data, tmp_path / "o"), 0.0, 10) is None


def test_budget_spec_rules_for_metering_and_deadlines(data, tmp_path):
    with pytest.raises(SpecError, match="metering 'measured'.*gpu_hours or usd"):
        spec_for(data, tmp_path / "o", metering="measured")
    with pytest.raises(SpecError, match="max_wall_s"):
        spec_for(data, tmp_path / "o", max_wall_s=0)
    ok = spec_for(data, tmp_path / "o", unit="gpu_hours", tokens_per_gpu_hour=1e6, metering="measured",
                  prompt_token_weight=0.5)
    assert ok.budget.metering == "measured" and ok.budget.prompt_token_weight == 0.5


def test_a_new_deadline_is_the_same_job_and_its_skipped_parts_run_again(data, tmp_path):
    a = spec_for(data, tmp_path / "o", max_wall_s=10).model_dump(mode="json")
    b = spec_for(data, tmp_path / "o", deadline="2031-01-01T00:00:00").model_dump(mode="json")
    assert manifest.identity_fields(a) == manifest.identity_fields(b)
    s = {"rows": 4, "status": {"ok": 1, "skipped_budget": 0, "skipped_deadline": 3, "error": 0}}
    check = manifest.classify_parts({0: s}, {0: "h"}, {}, ["h"], budget_raised=False)
    assert check.redone() == {"deadline_skipped": [0]} and not check.done


def test_with_every_part_sent_no_row_is_left_to_cover(data, tmp_path, tokens):
    """Regression: the floor's first use after every part was sent read no part and raised."""
    spec = spec_for(data, tmp_path / "out")
    parts = io.plan_parts(io.list_input_files(str(data)), 4)
    floor = BudgetFloor(spec, parts, first_round(uniform_tier(1, 0.0, 1.0, 40)), tokens, price=1.0)
    for p in parts:
        floor.mark_sent(p)
    assert floor.covers_none(0.0)


def test_bulk_commit_reads_chat_rows_without_a_prompt_column_and_carries_lost_spend(tmp_path):
    path = tmp_path / "chat.parquet"
    turn = [{"role": "user", "content": "1+2=\n"}]
    pl.DataFrame({"custom_id": ["a", "b", "c", "d", "e"],
                  "messages": [turn, None, [], [{"role": "robot", "content": "x"}], turn]}).write_parquet(path)
    spec = parse_spec({"input": {"path": str(path), "id_column": "custom_id", "messages_column": "messages"},
                       "output": {"path": str(tmp_path / "out"), "part_rows": 4}, "budget": {"amount": 10}})
    parts = io.plan_parts(io.list_input_files(str(path)), 4)
    summaries = commit_bulk(spec, parts, "skipped_budget", lost={0: 0.8})
    df = pl.read_parquet(f"{tmp_path}/out/part-*.parquet").sort("id")
    assert df["id"].to_list() == ["a", "b", "c", "d", "e"] and sorted(summaries) == [0, 1]
    assert df["status"].to_list() == ["skipped_budget", "error", "error", "error", "skipped_budget"]
    assert df["error"].to_list()[1:3] == ["messages is null", "messages is empty"]
    assert df["lost_cost"].to_list() == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.0])
    assert df["cost"].sum() == pytest.approx(0.8) and summaries[0]["cost"] == pytest.approx(0.8)


def test_bulk_commit_of_template_prompts_names_a_null_field_and_a_bad_sampling_cell(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "x": ["1", None, "3"], "y": ["2", "2", "4"],
                  "mt": [8, 8, 0]}).write_parquet(path)
    spec = parse_spec({"input": {"path": str(path), "sampling_columns": {"max_tokens": "mt"}},
                       "prompt": {"template": "{x}+{y}=\n"},
                       "output": {"path": str(tmp_path / "out")}, "budget": {"amount": 10}})
    commit_bulk(spec, io.plan_parts(io.list_input_files(str(path)), 10), "skipped_deadline")
    df = pl.read_parquet(f"{tmp_path}/out/part-*.parquet").sort("id")
    assert df["status"].to_list() == ["skipped_deadline", "error", "error"]
    assert df["error"][1] == "prompt.template field 'x' is null" and "'mt' (max_tokens) is 0" in df["error"][2]
    with pytest.raises(ValueError, match="max_tokens"):  # first rounds differ by row: no floor
        BudgetFloor(spec, [], [(1, 8)], None, price=1.0)


def test_chat_prompts_are_counted_as_the_chat_template_renders_them():
    from tierwise.pipelines.data.prompts import PromptConfig

    chat = PromptTokens("embedded:tiny-adder", 256, PromptConfig(system_prompt="Add."))
    assert chat.chat.prefix == "Add.\n" and chat.chat.suffix == ""  # tiny-adder: a system turn and a newline
    prompts = pl.Series(["1+2=\n", "héllo"])
    exact = chat.exact(prompts.to_list())
    rendered = [chat.chat.render(chat.tok, p) for p in prompts]
    assert rendered == ["Add.\n1+2=\n", "Add.\nhéllo"]
    ids = [chat.tok.apply_chat_template(chat.chat.conversation(p), tokenize=True, add_generation_prompt=True)
           for p in prompts]
    assert exact.tolist() == [len(i["input_ids"] if hasattr(i, "keys") else i) for i in ids]
    lo, hi = chat.bounds(prompts)
    assert (lo <= exact).all() and (exact <= hi).all()
    with pytest.raises(ValueError, match="messages_column"):
        PromptTokens("embedded:tiny-adder", 256, PromptConfig(messages_column="m"))
    assert PromptTokens("embedded:tiny-adder", 256, PromptConfig(chat=False)).chat is None
