"""Answer extraction and selection among samples.

An extractor turns a sample's text into a comparable answer string (or None when
no answer can be read). Selection picks a row's answer from its samples: majority
vote, or a vote weighted by verifier scores. None of this ever sees gold.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from functools import partial

from tierwise.pipelines.data.errors import unknown_name

Extractor = Callable[[str], "str | None"]

# The extractors a spec may name (and ``regex:PATTERN``).
EXTRACTORS = ("arithmetic", "boxed", "choice", "last_line", "full")


def make_extractor(name: str) -> Extractor:
    """Returns the extractor named by a spec.

    ``arithmetic``: the demo task's ``A: ...`` line; ``boxed``: the last LaTeX
    ``\\boxed{}``, normalised by math-verify so that equivalent answers vote together;
    ``choice``: a multiple-choice letter A-E; ``json:FIELD``: a field of the JSON text
    (dotted for nested objects); ``regex:PATTERN``: the first group of the last match
    (the whole match without a group); ``last_line``: the last non-empty line;
    ``full``: the stripped text.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a pattern
            that is empty or not a valid regex.
    """
    if name == "arithmetic":
        from tierwise.pipelines.tiers.tasks.arithmetic import extract_answer
        return extract_answer
    if name.startswith("regex:"):
        source = name[len("regex:"):]
        if not source:
            raise ValueError("answer extractor 'regex:' needs a pattern after the colon")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise ValueError(f"answer extractor {name!r} is not a valid regex: {exc}") from None

        def by_regex(text: str) -> str | None:
            matches = pattern.findall(text)
            if not matches:
                return None
            last = matches[-1]
            return (last[0] if isinstance(last, tuple) else last).strip() or None
        return by_regex
    if name == "boxed":
        return boxed_answer
    if name == "choice":
        return choice_answer
    if name.startswith("json:"):
        path = name[len("json:"):]
        if not path or any(not k for k in path.split(".")):
            raise ValueError(f"answer extractor {name!r} needs a field name after the colon, e.g. json:label")
        return partial(json_field, path=tuple(path.split(".")))
    if name == "last_line":
        return lambda text: next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), None)
    if name == "full":
        return lambda text: text.strip() or None
    raise ValueError(unknown_name("answer extractor", name, EXTRACTORS + ("json:FIELD", "regex:PATTERN")))


MAX_BOXED_PARSE = 200  # characters of a box math-verify parses


def boxed_answer(text: str) -> str | None:
    """The last ``\\boxed{...}`` of ``text`` in a canonical form: math-verify's parse of it (a SymPy
    expression, simplified and printed), so 0.5, \\frac{1}{2} and \\tfrac12 are one answer; its stripped content
    when math-verify cannot parse it; None without a box."""
    from math_verify import LatexExtractionConfig, parse

    box = last_boxed(text)
    if box is None:
        return None
    if len(box) > MAX_BOXED_PARSE:  # SymPy may take unbounded time on a long expression
        return box.strip() or None
    # parsing_timeout=None: math-verify's timeout is a SIGALRM, which only the main thread may set
    # (extractors run on a replica's event loop); the length bound above stands in for it.
    parsed = parse(f"\\boxed{{{box}}}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                   parsing_timeout=None)
    if not parsed:
        return box.strip() or None
    return str(_simplified(parsed[0]))


def _simplified(expr):
    """SymPy's ``simplify`` of a parsed answer (sqrt(8) and 2*sqrt(2) print alike); atoms as they are."""
    import sympy

    if not isinstance(expr, sympy.Basic) or expr.is_Atom:
        return expr
    try:
        return sympy.simplify(expr)
    except Exception:  # an expression SymPy cannot simplify is still an answer
        return expr


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unclosed


# "Answer: C", "the answer is (C)", then a letter alone on the last line ("C", "(C)", "C."), upper case.
_CHOICE_STATED = re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?([A-E])\b\)?", re.IGNORECASE)
_CHOICE_ALONE = re.compile(r"^\s*\(?([A-E])\)?[.:)]?\s*$", re.MULTILINE)


def choice_answer(text: str) -> str | None:
    """A multiple-choice letter (A-E, upper case): the last stated answer ("the answer is (C)"),
    else the last line that is only a letter; None when neither appears."""
    stated = _CHOICE_STATED.findall(text)
    if stated:
        return stated[-1].upper()
    alone = _CHOICE_ALONE.findall(text)
    return alone[-1] if alone else None


def json_field(text: str, path: tuple[str, ...]) -> str | None:
    """The field at ``path`` of the JSON object ``text`` holds: a string as it is, any other value
    as JSON (``true``, ``3``); None when the text is not JSON or lacks the field."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


# Verifier scores are sharpened before they weight a vote: with a step checker, a
# fully valid trace (1.0) must outweigh many partly valid ones (0.8 each). Measured on
# bench/data/demo_samples.parquet at n=8: plain scores 0.625 accuracy, score**8 0.675,
# score**32 0.701 (majority without the verifier: 0.614).
VERIFIER_SHARPNESS = 32


def verifier_weights(scores):
    """Vote weights from verifier scores in [0, 1] (None/NaN count 0); works on
    lists and numpy arrays alike."""
    import numpy as np

    arr = np.nan_to_num(np.asarray([np.nan if s is None else s for s in scores] if isinstance(scores, list)
                                   else scores, dtype=np.float64), nan=0.0)
    return np.clip(arr, 0.0, 1.0) ** VERIFIER_SHARPNESS


def vote(answers: list[str | None], weights: list[float] | None = None) -> tuple[str | None, dict[str, float]]:
    """Majority (or weighted) vote over extracted answers; None answers abstain.

    Ties go to the answer reached first. Returns ``(winner, {answer: votes})``.
    """
    counts: Counter[str] = Counter()
    for i, a in enumerate(answers):
        if a is not None:
            counts[a] += 1.0 if weights is None else float(weights[i] or 0.0)
    if not counts:
        return None, {}
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return winner, dict(counts)


def label_distribution(top: dict[str, float] | None, labels: tuple[str, ...]) -> dict[str, float] | None:
    """A structured choice's labels as the model weighs them at the first generated token: each label gets
    the probability of the top tokens it starts with (``top``: token text -> log-probability, the model's raw
    distribution, before the constraint), a token shared by several labels split evenly among them,
    normalised over the labels. Labels whose first token is outside ``top`` get 0; None when no top token
    starts a label."""
    import math

    if not top:
        return None
    probs = dict.fromkeys(labels, 0.0)
    for token, lp in top.items():
        for t in (token, token.lstrip()):
            starts = [lab for lab in labels if t and lab.startswith(t)]
            for lab in starts:
                probs[lab] += math.exp(lp) / len(starts)
            if starts:
                break
    total = sum(probs.values())
    return {lab: p / total for lab, p in probs.items()} if total > 0 else None
