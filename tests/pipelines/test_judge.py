"""The judge verifier's pure half: prompts, and scores read from what a judge wrote."""

import math

import pytest

from tierwise.pipelines.tiers.judge import JudgeConfig, agree_scores, parse_score, render, verdict, yes_probability


def test_render_fills_placeholders_once_and_leaves_other_braces():
    t = 'Q: {prompt}\nA: {response}\nReply as {"ok": true}'
    assert render(t, "1+1=\n", "A: 2") == 'Q: 1+1=\n\nA: A: 2\nReply as {"ok": true}'
    # A placeholder inside the prompt is text, not a slot for the response.
    assert render("{prompt}|{response}", "say {response}", "R") == "say {response}|R"
    assert render("{prompt}", "57+8=\n") == "57+8=\n"


def test_yes_probability_sums_the_yes_tokens_mass():
    top = {"Yes": math.log(0.6), " yes": math.log(0.1), "No": math.log(0.25), "\n": math.log(0.05)}
    assert yes_probability(top, ("Yes", "yes")) == pytest.approx(0.7)
    assert yes_probability(top, (" YES ",)) == 0.0  # compared stripped, not case-folded
    assert yes_probability({"No": 0.0}, ("Yes",)) == 0.0
    assert yes_probability({"Yes": -math.inf, "yes": math.log(0.2)}, ("Yes", "yes")) == pytest.approx(0.2)
    assert yes_probability({"Yes": 0.0, "yes": 0.0}, ("Yes", "yes")) == 1.0  # never above 1
    assert yes_probability(None, ("Yes",)) is None and yes_probability({}, ("Yes",)) is None


@pytest.mark.parametrize("text, expected", [
    ("The steps add up.\nScore: 7", 0.7),
    ("Score: 3\n...on reflection, no.\nScore: 1", 0.1),   # the last match counts
    ("Score: 8.", 0.8),                                      # a full stop after the number
    ("Score:10", 1.0),
    ("Score: 0.5", 0.05),
    ("Score: 11", None),                                     # off the scale: unparseable
    ("Score: ...", None),
    ("I cannot tell.", None),
    ("", None),
])
def test_parse_score(text, expected):
    got = parse_score(text, r"Score:\s*([0-9.]+)", 10.0)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_parse_score_takes_the_first_group_of_a_custom_pattern():
    assert parse_score("rating 4/5", r"(\d+)/(\d+)", 5) == pytest.approx(0.8)


def test_agree_scores_compare_answers_with_the_judges():
    assert agree_scores("65", ["65", "64", None, "65"]) == [1.0, 0.0, 0.0, 1.0]
    assert agree_scores(None, ["65", None]) == [0.0, 0.0]  # a judge without an answer agrees with nothing


def test_verdict_and_sampling_per_mode():
    yes = JudgeConfig("yes_prob", "{prompt}{response}", top_logprobs=5)
    assert verdict(yes, "ignored", {"Yes": math.log(0.9)}) == pytest.approx(0.9)
    s = yes.sampling(seed=3)
    assert (s.n, s.max_tokens, s.top_logprobs, s.temperature, s.seed) == (1, 1, 5, 0.0, 3)
    score = JudgeConfig("score", "{prompt}{response}", max_tokens=64, score_max=5)
    assert verdict(score, "Score: 4", None) == pytest.approx(0.8)
    assert score.sampling().max_tokens == 64 and score.sampling().top_logprobs == 0 and score.per_sample
    agree = JudgeConfig("agree", "{prompt}")
    assert not agree.per_sample
    with pytest.raises(ValueError, match="agree"):
        verdict(agree, "A: 1", None)
