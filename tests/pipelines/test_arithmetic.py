"""Fast unit tests for the chain-of-thought addition task (no torch/vllm needed)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:  # allow running without an installed package
    sys.path.insert(0, str(_REPO_ROOT))

from tierwise.pipelines.tiers.tasks import arithmetic as ar  # noqa: E402
from tierwise.pipelines.tiers.tasks.arithmetic import (  # noqa: E402
    DEFAULT_MODEL_DIR,
    DEMO_MIX,
    EASY_DIGITS,
    HEADROOM_DIGITS,
    HOPELESS_DIGITS,
    check_steps,
    extract_answer,
    generate_dataset,
    make_problem,
    solution,
    trace_prefix_ok,
)


def _random_problems(n: int = 600, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        d = rng.randint(1, 8)
        yield d, *make_problem(rng, d)


def test_module_does_not_import_heavy_deps():
    code = (
        "import sys; import tierwise.pipelines.tiers.tasks.arithmetic; "
        "bad = [m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(DEFAULT_MODEL_DIR.parents[1]))


def test_make_problem_shape():
    rng = random.Random(1)
    for d in range(1, 9):
        for _ in range(50):
            prompt, gold = make_problem(rng, d)
            assert prompt.endswith("=\n")
            a, b = prompt[:-2].split("+")
            assert max(len(a), len(b)) == d
            assert 1 <= min(len(a), len(b)) <= d
            assert a == str(int(a)) and b == str(int(b))  # no leading zeros
            assert gold == str(int(a) + int(b))
    with pytest.raises(ValueError):
        make_problem(rng, 0)


def test_solution_verified_by_checker_and_extractor():
    for _d, prompt, gold in _random_problems():
        sol = solution(prompt)
        assert check_steps(prompt, sol) == 1.0, (prompt, sol)
        assert extract_answer(sol) == gold
        # EOS text / trailing whitespace after the answer does not matter.
        assert extract_answer(sol + "\n") == gold
        assert check_steps(prompt, sol + "\n") == 1.0


def test_solution_format_example():
    assert solution("57+8=\n") == "7+8+0=15 5\n5+0+1=6 65\nA: 65"
    assert solution("5+5=\n") == "5+5+0=10 0\n0+0+1=1 10\nA: 10"
    assert solution("0+0=\n") == "0+0+0=0 0\nA: 0"


def test_completions_stay_short():
    # byte-level tokens: one per char; 8-digit worst case must stay < 160 tokens
    worst = solution("99999999+99999999=\n")
    assert len(worst) + 1 < 160
    rng = random.Random(3)
    for _ in range(200):
        p, _ = make_problem(rng, 8)
        assert len(solution(p)) + 1 < 160


def _corruptions(prompt: str, sol: str, rng: random.Random):
    lines = sol.split("\n")
    steps, ans = lines[:-1], lines[-1]
    # wrong final answer
    wrong = str(int(ans[3:]) + 1)
    yield "\n".join(steps + ["A: " + wrong])
    # missing answer
    yield "\n".join(steps)
    # a dropped step
    if len(steps) > 1:
        i = rng.randrange(len(steps))
        yield "\n".join(steps[:i] + steps[i + 1 :] + [ans])
    # a duplicated step
    i = rng.randrange(len(steps))
    yield "\n".join(steps[: i + 1] + [steps[i]] + steps[i + 1 :] + [ans])
    # flip one character of one step line to another digit
    i = rng.randrange(len(steps))
    line = steps[i]
    digit_pos = [j for j, c in enumerate(line) if c.isdigit()]
    j = rng.choice(digit_pos)
    new = str((int(line[j]) + rng.randint(1, 9)) % 10)
    bad = line[:j] + new + line[j + 1 :]
    yield "\n".join(steps[:i] + [bad] + steps[i + 1 :] + [ans])
    # truncated mid-trace
    yield sol[: rng.randrange(len(sol) - 1)]
    # garbage line inserted
    yield "\n".join(steps + ["blah"] + [ans])


def test_corrupted_traces_score_below_one():
    rng = random.Random(7)
    n_checked = 0
    for _d, prompt, _gold in _random_problems(400, seed=11):
        sol = solution(prompt)
        for bad in _corruptions(prompt, sol, rng):
            if bad == sol:
                continue
            score = check_steps(prompt, bad)
            assert 0.0 <= score < 1.0, (prompt, bad, score)
            n_checked += 1
    assert n_checked > 2000


def test_prefix_check_never_rejects_a_verifying_trace():
    """Aborting a sample when ``trace_prefix_ok`` fails loses nothing: every prefix of a
    trace that verifies passes, and once a prefix fails the finished trace does not verify."""
    rng = random.Random(3)
    n_rejected = 0
    for _d, prompt, _gold in _random_problems(200, seed=5):
        sol = solution(prompt)
        variants = [sol, sol + "\n", " " + sol.replace("\n", " \n\n"), sol.replace("A: ", "A:")]
        for text in variants:
            assert check_steps(prompt, text) == 1.0
            assert all(trace_prefix_ok(prompt, text[:k]) for k in range(len(text) + 1)), (prompt, text)
        for bad in _corruptions(prompt, sol, rng):
            first_fail = next((k for k in range(len(bad) + 1) if not trace_prefix_ok(prompt, bad[:k])), None)
            if first_fail is not None:
                n_rejected += 1
                assert check_steps(prompt, bad) < 1.0, (prompt, bad)
                # failing is final: no longer prefix passes again
                assert not any(trace_prefix_ok(prompt, bad[:k]) for k in range(first_fail, len(bad) + 1))
    assert n_rejected > 700


def test_prefix_check_stops_at_the_first_wrong_character():
    prompt = "57+8=\n"
    assert trace_prefix_ok(prompt, "7+8+0=1")
    assert not trace_prefix_ok(prompt, "7+8+0=14")  # wrong sum, caught before the line ends
    assert trace_prefix_ok(prompt, "7+8+0=15 5\n5+0+1=6 65\n")
    assert not trace_prefix_ok(prompt, "7+8+0=15 5\nA: 5")  # answer before the last step
    assert not trace_prefix_ok(prompt, "7+8+0=15 5\n5+0+1=6 65\nA: 66\n")
    assert trace_prefix_ok(prompt, "7+8+0=15 5\n5+0+1=6 65\nA: 65\nanything")
    assert trace_prefix_ok(prompt, "7+8+0=15 5\n5+0+1=06 65")  # check_steps takes a padded sum
    assert trace_prefix_ok("hello", "whatever")  # not this task's prompt: no opinion


def test_checker_partial_credit_and_no_gold():
    prompt = "57+8=\n"
    # arithmetic slip in the first step: later steps are locally consistent
    slip = "7+8+0=14 4\n5+0+1=6 64\nA: 64"
    s = check_steps(prompt, slip)
    assert 0.0 < s < 1.0
    assert s == pytest.approx(2 / 3)
    # right digits picked from the wrong operand position
    assert check_steps(prompt, "5+8+0=13 3\n7+0+1=8 83\nA: 83") < 0.5
    # answer inconsistent with the last partial
    assert check_steps(prompt, "7+8+0=15 5\n5+0+1=6 65\nA: 66") == pytest.approx(2 / 3)
    # final carry step must be present
    assert check_steps("5+5=\n", "5+5+0=10 0\nA: 0") < 1.0
    assert check_steps("5+5=\n", "5+5+0=10 0\nA: 10") < 1.0
    # nothing / bad prompt
    assert check_steps(prompt, "") == 0.0
    assert check_steps(prompt, None) == 0.0
    assert check_steps("hello", solution(prompt)) == 0.0


@pytest.mark.parametrize(
    "text",
    [None, "", "garbage", "A:", "A: ", "A: 12x", "A: -5", "A: 1 2", "The answer is 5", "A: ١٢", "a: 12"],
)
def test_extract_answer_garbage(text):
    assert extract_answer(text) is None


def test_extract_answer_forms():
    assert extract_answer("A: 42") == "42"
    assert extract_answer("1+1+0=2 2\nA: 2\n") == "2"
    assert extract_answer("A: 007") == "7"
    assert extract_answer("A: 0") == "0"
    assert extract_answer("junk\nA: 12\nA: 13") == "12"


def test_generate_dataset_columns_and_determinism():
    df = generate_dataset(500, [1, 2, 3], seed=5)
    assert df.columns == ["id", "prompt", "gold", "digits"]
    assert df.schema == pl.Schema({"id": pl.Utf8, "prompt": pl.Utf8, "gold": pl.Utf8, "digits": pl.Int64})
    assert df.height == 500
    assert df["id"].to_list()[:2] == ["q0000000", "q0000001"]
    assert df["id"].n_unique() == 500
    assert df.equals(generate_dataset(500, [1, 2, 3], seed=5))
    assert not df.equals(generate_dataset(500, [1, 2, 3], seed=6))
    for row in df.iter_rows(named=True):
        a, b = row["prompt"][:-2].split("+")
        assert max(len(a), len(b)) == row["digits"]
        assert row["gold"] == str(int(a) + int(b))
    counts = df["digits"].value_counts().sort("digits")["count"].to_list()
    assert sorted(counts) in ([166, 167, 167],)


def test_generate_dataset_mix_proportions():
    n = 1000
    df = generate_dataset(n, DEMO_MIX, seed=1)
    got = dict(df["digits"].value_counts().iter_rows())
    tot = sum(DEMO_MIX.values())
    for d, w in DEMO_MIX.items():
        assert abs(got.get(d, 0) - n * w / tot) <= 1
    # rows are shuffled, not grouped by digit count
    assert df["digits"].head(50).n_unique() > 3
    weighted = generate_dataset(300, {2: 2.0, 7: 1.0}, seed=0)
    assert dict(weighted["digits"].value_counts().iter_rows()) == {2: 200, 7: 100}
    assert generate_dataset(0, [1], seed=0).height == 0


def test_demo_mix_and_regimes():
    assert set(EASY_DIGITS).isdisjoint(HEADROOM_DIGITS)
    assert set(EASY_DIGITS).isdisjoint(HOPELESS_DIGITS)
    assert set(HEADROOM_DIGITS).isdisjoint(HOPELESS_DIGITS)
    tot = sum(DEMO_MIX.values())
    share = lambda ds: sum(DEMO_MIX.get(d, 0.0) for d in ds) / tot  # noqa: E731
    assert share(EASY_DIGITS) >= 0.40
    assert share(HEADROOM_DIGITS) >= 0.30
    assert share(HOPELESS_DIGITS) >= 0.10
    assert set(DEMO_MIX) <= set(EASY_DIGITS) | set(HEADROOM_DIGITS) | set(HOPELESS_DIGITS)


def test_default_model_dir():
    assert DEFAULT_MODEL_DIR.name == "tiny-adder"
    assert DEFAULT_MODEL_DIR.parent.name == "models"
    assert (DEFAULT_MODEL_DIR.parents[1] / "pipelines" / "tiers" / "tasks" / "arithmetic.py").exists()
    assert ar.DEFAULT_MODEL_DIR == DEFAULT_MODEL_DIR
