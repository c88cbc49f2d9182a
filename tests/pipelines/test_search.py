"""The search tier's bookkeeping, driven by hand-built results (no Ray, no vLLM)."""

from __future__ import annotations

import pytest

from tierwise.pipelines.tiers.base import RowState, Tier, think_tier, uniform_tier
from tierwise.pipelines.tiers.generation import GenResult, Sample, SamplingConfig
from tierwise.pipelines.tiers.search import SearchTier, _shares
from tierwise.pipelines.tiers.tasks.arithmetic import check_steps, extract_answer, solution

PROMPT = "57+8=\n"          # solution: "7+8+0=15 5\n5+0+1=6 65\nA: 65"
STEP1, STEP2, ANSWER = "7+8+0=15 5\n", "5+0+1=6 65\n", "A: 65"


def step(text: str, reason: str = "stop", lp: float = -0.1) -> Sample:
    """One continuation as the engine returns it: a byte per token."""
    return Sample(text, len(text), lp, reason)


def scores(requests, results, verify, prompt):
    """What the replica's scorer hands ``absorb``: each sample scored after its request's prefix."""
    return [[verify(prompt, q.prefix + x.text) for x in r.samples] for q, r in zip(requests, results)]


def run_round(tier: Tier, state: RowState, by_prefix: dict[str, list[Sample]], seed: int = 100):
    """One round as the replica runs it; ``by_prefix`` answers each request."""
    asked = tier.next_request(state, seed + len(state.samples))
    if asked is None:
        return None
    requests = asked if isinstance(asked, list) else [asked]
    results = [GenResult(f"r.{i}", 6 + len(r.prefix), by_prefix[r.prefix]) for i, r in enumerate(requests)]
    tier.absorb(state, requests, results, extract_answer, scores(requests, results, check_steps, PROMPT))
    return requests


def test_first_round_asks_one_step_per_expansion():
    tier = SearchTier(beam_width=2, expansions=3, max_tokens=100, temperature=0.7, allocate="even")
    state = RowState("r", 6)
    asked = tier.next_request(state, 10)
    assert asked == [SamplingConfig(n=3, temperature=0.7, top_p=1.0, max_tokens=100, seed=10, prefix="", logprobs=True,
                                    stop=("\n",))]
    assert tier.n == 3 and tier.name == "search" and tier.weighted
    # by_score (the default): the lone first beam gets the round's beam_width * expansions.
    assert SearchTier(beam_width=2, expansions=3).next_request(RowState("r", 6), 10)[0].n == 6


def test_by_score_shares_a_round_by_vote_weight():
    assert _shares([4 / 7, 3 / 7, 3 / 7, 3 / 7], 16) == [16, 0, 0, 0]   # one valid prefix takes all
    assert _shares([0.5, 0.5, 0.5, 0.5], 16) == [4, 4, 4, 4]
    assert _shares([None, 0.0], 5) == [3, 2]                            # nothing weighs: even
    assert _shares([0.9, 0.88, 0.1], 10) == [7, 3, 0]                   # 0.9**32 : 0.88**32 is about 2 : 1
    tier = SearchTier(beam_width=3, expansions=2, max_tokens=100)
    state = RowState("r", 6)
    run_round(tier, state, {"": [step(STEP1), step("7+8+0=14 4\n"), step("7+8+1=16 6\n")] + [step(STEP1)] * 3})
    assert len(state.scratch.live) == 3
    asked = run_round(tier, state, {STEP1: [step(STEP2)] * 6})
    # The two invalid traces get no share and drop out; the valid one gets all six.
    assert [(r.prefix, r.n, r.seed) for r in asked] == [(STEP1, 6, 106)]
    assert [b.text for b in state.scratch.live] == [STEP1 + STEP2]


def test_keeps_the_best_distinct_partial_traces_and_finishes_by_eos():
    tier = SearchTier(beam_width=2, expansions=4, max_tokens=100, allocate="even")
    state = RowState("r", 6)
    wrong = "7+8+0=14 4\n"
    run_round(tier, state, {"": [step(wrong, lp=-0.05), step(STEP1, lp=-0.3), step(STEP1, lp=-0.3),
                                 step("7+8+1=16 6\n", lp=-0.01)]})
    live = state.scratch.live
    # The valid step ranks first; duplicates collapse; the two wrong ones tie on score and
    # log-probability breaks the tie.
    assert [b.text for b in live] == [STEP1, "7+8+1=16 6\n"]
    assert state.stop_reason is None and state.rounds == 1
    assert len(state.samples) == 4 and state.answers == [None] * 4

    asked = run_round(tier, state, {STEP1: [step(STEP2), step("5+0+1=6 75\n"), step(STEP2), step(STEP2)],
                                    "7+8+1=16 6\n": [step("5+0+1=6 66\n")] * 4}, seed=100)
    # One request per live beam; seeds never repeat within the row; each continues its beam.
    assert [r.prefix for r in asked] == [STEP1, "7+8+1=16 6\n"]
    assert [r.seed for r in asked] == [104, 108]
    assert [r.max_tokens for r in asked] == [100 - len(STEP1)] * 2
    assert state.scratch.live[0].text == STEP1 + STEP2

    run_round(tier, state, {STEP1 + STEP2: [step(ANSWER), step("A: 66"), step(ANSWER), step(ANSWER)],
                            "7+8+1=16 6\n5+0+1=6 66\n": [step("A: 66")] * 4})
    search = state.scratch
    assert search.live == [] and {b.text for b in search.finished} == {
        STEP1 + STEP2 + ANSWER, STEP1 + STEP2 + "A: 66", "7+8+1=16 6\n5+0+1=6 66\nA: 66"}
    assert tier.next_request(state, 0) is None and state.stop_reason == "search_done"
    answer, votes = tier.select(state)
    # Two of three finished traces say 66, but only the valid one scores 1.0.
    assert answer == "65" and votes["65"] > 100 * votes["66"]
    # Accounting: every expansion is a sample, holding the whole trace and its step's tokens.
    assert len(state.samples) == 4 + 2 * 4 + 2 * 4 and state.rounds == 3
    assert state.samples[-8].text == STEP1 + STEP2 + ANSWER and state.samples[-8].output_tokens == len(ANSWER)
    assert state.scores[-8] == 1.0 and state.answers[-8] == "65"


def test_partial_traces_score_by_valid_steps_so_far():
    assert check_steps(PROMPT, STEP1) == pytest.approx(1 / 3)
    assert check_steps(PROMPT, STEP1 + STEP2) == pytest.approx(2 / 3)
    assert check_steps(PROMPT, STEP1 + "5+0+1=6 75\n") == pytest.approx(1 / 3)
    assert check_steps(PROMPT, STEP1 + STEP2 + ANSWER) == 1.0


def test_length_finishes_a_trace_and_max_tokens_bounds_the_whole_trace():
    tier = SearchTier(beam_width=2, expansions=2, max_tokens=len(STEP1) + 4, allocate="even")
    state = RowState("r", 6)
    run_round(tier, state, {"": [step(STEP1), step("7+8", reason="length")]})
    search = state.scratch
    assert [b.text for b in search.live] == [STEP1] and [b.text for b in search.finished] == ["7+8"]
    asked = run_round(tier, state, {STEP1: [step("5+0\n"), step("5+0+")]})
    assert asked[0].max_tokens == 4
    # "5+0\n" ended at the delimiter but used the trace's last token: it is finished too.
    assert search.live == [] and len(search.finished) == 3
    assert tier.next_request(state, 0) is None and state.stop_reason == "search_done"
    assert tier.select(state) == (None, {})


def test_max_steps_finishes_the_live_traces():
    tier = SearchTier(beam_width=1, expansions=2, max_steps=2, max_tokens=100, allocate="even")
    state = RowState("r", 6)
    run_round(tier, state, {"": [step(STEP1), step(STEP1)]})
    run_round(tier, state, {STEP1: [step(STEP2), step("5+0+1=6 75\n")]})
    assert state.stop_reason == "max_steps" and state.scratch.live == []
    assert [b.text for b in state.scratch.finished] == [STEP1 + STEP2]
    assert tier.next_request(state, 0) is None and state.stop_reason == "max_steps"
    assert tier.select(state) == (None, {})  # a partial trace has no answer line
    assert len(state.samples) == 4


def test_budget_stop_votes_over_what_finished():
    tier = SearchTier(beam_width=2, expansions=2, max_tokens=100, allocate="even")
    state = RowState("r", 6)
    run_round(tier, state, {"": [step("A: 65"), step(STEP1)]})
    state.stop_reason = "budget"  # the replica's ledger denied the next round
    assert tier.next_request(state, 0) is None and state.stop_reason == "budget"
    answer, votes = tier.select(state)
    assert answer == "65" and list(votes) == ["65"]


def test_absorb_checks_results_against_live_beams():
    tier = SearchTier(beam_width=2, expansions=1, allocate="even")
    state = RowState("r", 6)
    tier.next_request(state, 0)
    with pytest.raises(ValueError, match="2 results for 1 live beams"):
        tier.absorb(state, [], [GenResult("a", 6, []), GenResult("b", 6, [])], extract_answer)


@pytest.mark.parametrize("bad", [{"beam_width": 0}, {"expansions": 0}, {"max_steps": 0}, {"step_stop": ""},
                                 {"allocate": "greedy"}])
def test_search_tier_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchTier(**bad)


def test_search_finds_the_valid_trace_of_a_noisy_stepper():
    """A stand-in model that gets each step right only sometimes: beam search with the
    step checker keeps the valid prefix alive and finishes on the right answer."""
    prompt = "4821+677=\n"
    lines = solution(prompt).split("\n")
    tier = SearchTier(beam_width=2, expansions=3, max_tokens=200, allocate="even")
    state = RowState("r", 10)
    while (asked := tier.next_request(state, len(state.samples))) is not None:
        results = []
        for r in asked:
            k = r.prefix.count("\n")
            good = lines[k] + ("\n" if k < len(lines) - 1 else "")
            bad = lines[k].replace("+", "-", 1) + "\n" if k < len(lines) - 1 else "A: 1"
            samples = [step(bad), step(bad), step(good)][: r.n]
            results.append(GenResult("x", 10 + len(r.prefix), samples))
        tier.absorb(state, asked, results, extract_answer, scores(asked, results, check_steps, prompt))
    answer, _ = tier.select(state)
    assert answer == str(4821 + 677) and state.stop_reason == "search_done"


def test_think_tier_raises_only_the_token_budget():
    base, think = uniform_tier(4, 0.7, 1.0, 64, weighted=True), think_tier(4, 0.7, 1.0, 256, weighted=True)
    assert think.name == "think" and think.max_tokens == 256 and think.weighted
    assert (think.n, think.temperature) == (base.n, base.temperature)
    assert think_tier(1, 0.7, 1.0, 256).temperature == 0.0  # one pass is greedy, as `single`
    state = RowState("r", 6)
    req = think.next_request(state, 5)
    assert req.max_tokens == 256 and req.n == 4 and req.prefix == "" and req.stop == ()
    results = [GenResult("r", 6, [step(STEP1 + STEP2 + ANSWER, lp=-0.1)] * 4)]
    think.absorb(state, [req], results, extract_answer, scores([req], results, check_steps, PROMPT))
    assert state.answers == ["65"] * 4 and state.rounds == 1
    assert think.next_request(state, 9) is None and think.select(state)[0] == "65"
