from pipelines.answers import make_extractor, vote


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
