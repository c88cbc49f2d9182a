"""Reasoning output: thought/answer split, the thinking budget's requests, and the spec's rules."""

from __future__ import annotations

import polars as pl
import pytest

from tierwise.jobs.spec import SpecError, aborts_failed_steps, parse_spec
from tierwise.pipelines.data.export import verified_traces
from tierwise.pipelines.tiers.generation import Sample, SamplingConfig
from tierwise.pipelines.tiers.reasoning import ReasoningConfig, merged, split_sample

CFG = ReasoningConfig(max_thinking_tokens=10, answer_max_tokens=5)


@pytest.mark.parametrize("text, thought, answer", [
    ("<think>add 2 and 2</think>The sum is 4.", "add 2 and 2", "The sum is 4."),
    ("  <think>x</think>\n4", "x", "\n4"),
    ("thinking without a start</think>4", "thinking without a start", "4"),  # the template opened it
    ("<think>never closed", "never closed", ""),
    ("no thought at all: 4", None, "no thought at all: 4"),
    ("<think>a</think>b</think>c", "a", "b</think>c"),  # the first end marker closes the thought
])
def test_split(text, thought, answer):
    assert CFG.split(text) == (thought, answer)
    s = split_sample(Sample(text, 9), CFG)
    assert (s.reasoning, s.text, s.output_tokens) == (thought, answer, 9)


def test_custom_markers_and_no_start_marker():
    cfg = ReasoningConfig(start=None, end="A:")
    assert cfg.split("1+2=3 3\nA: 3") == ("1+2=3 3\n", " 3")


def test_thinking_and_answer_requests():
    req = SamplingConfig(n=3, temperature=0.7, max_tokens=200, seed=40, stop=("\n\n",))
    think = CFG.thinking_request(req)
    assert think.max_tokens == 10 and think.stop == ("\n\n", "</think>") and think.n == 3
    assert ReasoningConfig().thinking_request(req) == req  # no budget: the request as it is
    cut, closed, done = Sample("<think>abc", 10, finish_reason="length"), \
        Sample("<think>ab</think>", 6, finish_reason="stop"), Sample("4", 1, finish_reason="stop")
    assert [CFG.needs_answer(s) for s in (cut, closed, done)] == [True, True, False]
    ask = CFG.answer_request(think, cut, 2)
    assert ask.prefix == "<think>abc</think>" and ask.n == 1 and ask.max_tokens == 5
    assert ask.stop == ("\n\n",) and ask.seed == 40 + (1 << 32) + 2
    assert CFG.answer_request(think, closed, 0).prefix == "<think>ab</think>"  # not closed twice


def test_merged_sample_sums_tokens_and_weights_logprobs():
    m = merged(Sample("<think>abc", 10, -1.0, "length"), Sample(" 4", 2, -4.0, "stop"), "</think>")
    assert (m.text, m.output_tokens, m.finish_reason) == ("<think>abc</think> 4", 12, "stop")
    assert m.mean_logprob == pytest.approx(-1.5)
    s = Sample("x", 1)
    assert merged(s, None, "</think>") is s


BASE = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "budget": {"amount": 1}}


def test_reasoning_spec_rules():
    spec = parse_spec(BASE | {"reasoning": {"max_thinking_tokens": 64}, "sampling": {"max_tokens": 32}})
    assert spec.reasoning.config(32) == ReasoningConfig("<think>", "</think>", 64, 32)
    assert parse_spec(BASE | {"reasoning": {"start": None, "end": "A:"}}).reasoning.config(8).start is None
    with pytest.raises(SpecError, match="structured"):
        parse_spec(BASE | {"reasoning": {}, "structured": {"choice": ["a", "b"]}})
    with pytest.raises(SpecError, match="step-level search"):
        parse_spec(BASE | {"reasoning": {}, "policy": {"tier": "search"}, "verifier": "arithmetic_steps"})
    with pytest.raises(SpecError, match="abort_failed_steps"):
        parse_spec(BASE | {"reasoning": {"max_thinking_tokens": 8}, "verifier": "arithmetic_steps",
                           "policy": {"abort_failed_steps": True}})
    with pytest.raises(SpecError, match="end"):
        parse_spec(BASE | {"reasoning": {"end": ""}})
    adaptive = parse_spec(BASE | {"reasoning": {}, "verifier": "arithmetic_steps", "policy": {"kind": "adaptive"}})
    assert not aborts_failed_steps(adaptive)  # a thought is not a step trace


def test_exported_traces_hold_the_thought_and_the_answer():
    out = pl.DataFrame({"id": ["a"], "status": ["ok"], "samples": [[" 4", " 5"]], "sample_answers": [["4", "5"]],
                        "sample_output_tokens": [[9, 9]], "verifier_scores": [[1.0, 0.0]],
                        "reasoning": [["2+2", None]]})
    conv = pl.DataFrame({"id": ["a"], "messages": [[{"role": "user", "content": "2+2="}]]})
    t = verified_traces(out, conv, markers=("<think>", "</think>"))
    assert t["messages"].to_list() == [[{"role": "user", "content": "2+2="},
                                        {"role": "assistant", "content": "<think>2+2</think> 4"}]]
    t = verified_traces(out, conv, min_score=0.0, markers=("", "A:"))
    assert t["messages"].list.get(1).struct.field("content").to_list() == ["2+2A: 4", " 5"]
