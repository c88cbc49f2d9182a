import pytest

from tierwise.pipelines.tiers.answers import make_extractor, vote


def test_vote_majority_and_tie_break_by_first_seen():
    assert vote(["3", "4", "4", None]) == ("4", {"3": 1.0, "4": 2.0})
    assert vote(["5", "6"])[0] == "5"
    assert vote([None, None]) == (None, {})


def test_weighted_vote_follows_verifier_scores():
    assert vote(["1", "2", "2"], [0.9, 0.1, 0.2])[0] == "1"


def test_extractors():
    assert make_extractor("regex:answer is (\\d+)")("the answer is 4, no, answer is 5") == "5"
    assert make_extractor("last_line")("a\nb\n\n") == "b"
    assert make_extractor("full")("  x ") == "x"
    assert make_extractor("full")("   ") is None


@pytest.mark.parametrize("a, b", [
    (r"so \boxed{\frac{1}{2}}", r"\boxed{0.5}"),
    (r"\boxed{\tfrac12}", r"the answer: \boxed{\dfrac{1}{2}}"),
    (r"\boxed{x^2+2x}", r"\boxed{2x + x^2}"),
    (r"\boxed{2\sqrt{2}}", r"\boxed{\sqrt{8}}"),
    (r"first \boxed{3}, finally \boxed{\{1,2\}}", r"\boxed{\{2, 1\}}"),
])
def test_boxed_equivalent_answers_vote_together(a, b):
    """math-verify's parse makes equivalent LaTeX answers one answer string (so they pool their votes)."""
    boxed = make_extractor("boxed")
    assert boxed(a) is not None and boxed(a) == boxed(b)


def test_boxed_distinct_and_missing_answers():
    boxed = make_extractor("boxed")
    assert boxed(r"\boxed{2}") != boxed(r"\boxed{3}")
    assert boxed("no box here") is None and boxed(r"\boxed{unclosed") is None
    assert boxed(r"\boxed{\text{blue}}") == "blue"  # not math: its content
    assert boxed(r"\boxed{" + "1+" * 150 + "1}") == "1+" * 150 + "1"  # too long to parse: kept as written


def test_choice_json_and_bad_names():
    choice = make_extractor("choice")
    assert choice("The answer is (c).") == "C" and choice("Thinking...\nB") == "B"
    assert choice("A is wrong; Answer: E") == "E" and choice("no letter") is None
    field = make_extractor("json:label")
    assert field('{"label": "pos", "p": 0.9}') == "pos" and field('{"label": 3}') == "3"
    assert field("not json") is None and field('{"other": 1}') is None and field('["label"]') is None
    assert make_extractor("json:a.b")('{"a": {"b": true}}') == "true"
    for bad in ("json:", "json:a..b"):
        with pytest.raises(ValueError, match="needs a field name"):
            make_extractor(bad)


def test_label_distribution_from_first_token_top_logprobs():
    import math

    from tierwise.pipelines.tiers.answers import label_distribution

    top = {"p": math.log(0.6), " n": math.log(0.3), "x": math.log(0.1)}  # "x" starts no label
    d = label_distribution(top, ("pos", "neg", "neu"))
    assert d == pytest.approx({"pos": 2 / 3, "neg": 1 / 6, "neu": 1 / 6})  # "n" is shared by two labels
    assert label_distribution({"z": 0.0}, ("a",)) is None and label_distribution(None, ("a",)) is None
