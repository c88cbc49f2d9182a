"""Answer extraction and selection among samples.

An extractor turns a sample's text into a comparable answer string (or None when
no answer can be read). Selection picks a row's answer from its samples: majority
vote, or a vote weighted by verifier scores. None of this ever sees gold.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from pipelines.errors import unknown_name

Extractor = Callable[[str], "str | None"]

# The extractors a spec may name (and ``regex:PATTERN``).
EXTRACTORS = ("arithmetic", "last_line", "full")


def make_extractor(name: str) -> Extractor:
    """Returns the extractor named by a spec.

    ``arithmetic``: the demo task's ``A: ...`` line; ``regex:PATTERN``: the first
    group of the last match (the whole match without a group); ``last_line``: the
    last non-empty line; ``full``: the stripped text.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or a pattern
            that is empty or not a valid regex.
    """
    if name == "arithmetic":
        from pipelines.tasks.arithmetic import extract_answer
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
    if name == "last_line":
        return lambda text: next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), None)
    if name == "full":
        return lambda text: text.strip() or None
    raise ValueError(unknown_name("answer extractor", name, EXTRACTORS + ("regex:PATTERN",)))


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
