"""An LLM judge's verdicts as scores in [0, 1]: the pure half of the judge verifier.

The judge is a model served by a replica's engine (``tierwise.ray_cluster.scoring`` sends its
requests and pays for them from the budget); this module holds what needs no engine:
the judge's config, its prompts and how a score is read from what it wrote.

Modes:

- ``yes_prob``: the judge writes one token; the score is the probability mass of the
  yes-tokens among that token's top log-probabilities.
- ``score``: the judge writes (reasoning first, if allowed the tokens) a line the
  ``score_pattern`` matches; its number over ``score_max`` is the score.
- ``agree``: the judge solves the prompt itself; a sample scores 1 when its answer
  (the job's extractor) equals the judge's, else 0. Self-verification: it needs no
  judge-specific training, so it works with any model, the embedded one included.

A verdict that cannot be read scores 0 and is counted (``UNPARSEABLE``). No mode
ever sees gold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tierwise.pipelines.tiers.generation import SamplingConfig

MODES = ("yes_prob", "score", "agree")

# Why a sample's judge score is what it is, when it is not the judge's verdict
# (the row's ``judge_issues`` column counts samples per reason).
BUDGET = "budget"            # null: the ledger denied the judge call
TOO_LONG = "too_long"        # null: the judge prompt does not fit the judge's context
ENGINE_ERROR = "error"       # null: the judge's request failed (the engine still serves)
UNPARSEABLE = "unparseable"  # 0: the judge wrote no readable verdict

_PLACEHOLDER = re.compile(r"\{(prompt|response)\}")


@dataclass(frozen=True)
class JudgeConfig:
    """A judge verifier, as a replica needs it (``tierwise.jobs.spec.JudgeSpec`` resolves defaults).

    Attributes:
        mode: ``yes_prob``, ``score`` or ``agree``.
        template: the judge prompt, with ``{prompt}`` and (not in ``agree``) ``{response}``.
        model: None: the job's own model on the replica's engine; else the judge engine's model.
        max_tokens: most tokens the judge writes per request (1 in ``yes_prob``).
        temperature: judge sampling temperature (0: greedy, a deterministic verdict).
        top_logprobs: how many first-token log-probabilities ``yes_prob`` reads.
        yes_tokens: tokens (compared stripped of whitespace) whose mass is the ``yes_prob`` score.
        score_pattern: regex whose first group is the number, in ``score`` mode (last match counts).
        score_max: the score scale's top; scores are divided by it.
    """

    mode: str
    template: str
    model: str | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_logprobs: int = 20
    yes_tokens: tuple[str, ...] = ("Yes", "yes")
    score_pattern: str = r"Score:\s*([0-9.]+)"
    score_max: float = 10.0

    @property
    def per_sample(self) -> bool:
        """One judge request per sample (``yes_prob``, ``score``); ``agree`` asks once per row."""
        return self.mode != "agree"

    def sampling(self, seed: int | None = None) -> SamplingConfig:
        """One judge request's sampling (one sample; the replica clips ``max_tokens`` to the context)."""
        one_token = self.mode == "yes_prob"
        return SamplingConfig(n=1, temperature=self.temperature, max_tokens=1 if one_token else self.max_tokens,
                              seed=seed, top_logprobs=self.top_logprobs if one_token else 0)


def render(template: str, prompt: str, response: str | None = None) -> str:
    """The judge prompt: ``{prompt}`` and ``{response}`` replaced in one pass, so other
    braces in the template, and placeholders inside the prompt or response, stay as written."""
    values = {"prompt": prompt, "response": response or ""}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def yes_probability(top_logprobs: dict[str, float] | None, yes_tokens: tuple[str, ...] | list[str]) -> float | None:
    """Probability mass of the yes-tokens among a token's top log-probabilities.

    Args:
        top_logprobs: decoded token text -> log-probability (``Sample.top_logprobs``).
        yes_tokens: tokens that mean yes, compared with whitespace stripped (``" Yes"`` is ``Yes``).

    Returns:
        The summed probability in [0, 1], or None when there are no log-probabilities to read.
    """
    if not top_logprobs:
        return None
    wanted = {t.strip() for t in yes_tokens}
    mass = sum(math.exp(lp) for tok, lp in top_logprobs.items() if tok.strip() in wanted and math.isfinite(lp))
    return min(1.0, mass)


def parse_score(text: str, pattern: str, score_max: float) -> float | None:
    """The judge's score over ``score_max``, from the last match of ``pattern`` in ``text``.

    Returns None (unparseable) when nothing matches, the group is not a number, or the
    number lies outside [0, score_max] (the judge ignored the scale).
    """
    matches = re.findall(pattern, text or "")
    if not matches:
        return None
    last = matches[-1]
    try:  # a sentence's full stop may follow the number ("Score: 8.")
        value = float((last[0] if isinstance(last, tuple) else last).strip().rstrip("."))
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0 or value > score_max:
        return None
    return value / score_max


def agree_scores(judge_answer: str | None, answers: list[str | None]) -> list[float]:
    """1.0 for each sample whose answer equals the judge's own answer, else 0.0 (no
    answer on either side never agrees)."""
    return [1.0 if judge_answer is not None and a == judge_answer else 0.0 for a in answers]


def verdict(config: JudgeConfig, text: str, top_logprobs: dict[str, float] | None) -> float | None:
    """A per-sample judge's score from what it wrote (``score``) or its first token's top
    log-probabilities (``yes_prob``); None when unreadable."""
    if config.mode == "yes_prob":
        return yes_probability(top_logprobs, config.yes_tokens)
    if config.mode == "score":
        return parse_score(text, config.score_pattern, config.score_max)
    raise ValueError(f"mode {config.mode!r} has no per-sample verdict")
