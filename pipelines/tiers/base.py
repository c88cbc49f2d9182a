"""Compute tiers as small row programs.

A tier decides, from what a row has produced so far, the next request to send
(or that the row is done and why). Replicas run these programs row by row with
many rows in flight, so a row's round 2 starts the moment its round 1 finishes,
never waiting for other rows: no round is a barrier across rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tierwise.pipelines.tiers.answers import Extractor, verifier_weights, vote
from tierwise.pipelines.tiers.generation import GenResult, Sample, SamplingConfig


@dataclass
class RowState:
    """What one row has produced so far."""

    row_id: str
    prompt_tokens: int
    samples: list[Sample] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    rounds: int = 0
    stop_reason: str | None = None
    tier: str | None = None            # set by tiers that choose per row (adaptive)
    difficulty: float | None = None
    bucket: int | None = None
    features: dict[str, float] = field(default_factory=dict)  # row-level difficulty signals (adaptive)
    scratch: Any = None                # a tier's own per-row state (the search tier's beams)

    def add(self, result: GenResult, extract: Extractor, scores: list[float | None] | None = None) -> None:
        """Records a round: its samples, their answers and (when scored) their scores."""
        self.rounds += 1
        for i, s in enumerate(result.samples):
            self.samples.append(s)
            self.answers.append(extract(s.text))
            self.scores.append(scores[i] if scores is not None else None)


@dataclass(frozen=True)
class Tier:
    """Base tier: one round of ``n`` samples, then stop.

    A round is what ``next_request`` returns: one request, or a list of requests that
    the replica reserves as one (all or nothing), runs concurrently and hands back
    together to ``absorb``.

    Attributes:
        name: what the output's ``tier`` column says.
        n: samples per row.
        temperature / top_p / max_tokens: sampling of each round.
        weighted: select by verifier-weighted vote instead of plain majority.
        logprobs: ask the engine for each sample's mean token log-prob (off unless read:
            per-token log-probs cost the engine's Python front end about a fifth of its throughput).
    """

    name: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    weighted: bool = False
    logprobs: bool = False
    prompt_variant: str | None = None  # the prompt rendering its requests read (SamplingConfig.prompt_variant)

    def next_request(self, state: RowState, seed: int | None) -> SamplingConfig | list[SamplingConfig] | None:
        """The next round of this row (one request or a list), or None when it is done.

        ``seed`` is the row's seed for its next sample (vLLM gives sample i of a
        request ``seed + i``); None lets the engine choose. A list's requests must
        offset their seeds so that no two samples of the row share one.
        """
        if state.rounds:
            state.stop_reason = state.stop_reason or "done"
            return None
        return SamplingConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=seed, logprobs=self.logprobs,
                              prompt_variant=self.prompt_variant)

    def absorb(self, state: RowState, requests: list[SamplingConfig], results: list[GenResult],
               extract: Extractor, scores: list[list[float | None] | None] | None = None) -> None:
        """Adds a round's results (``results[i]`` answers ``requests[i]``) to the row.

        ``scores[i][j]`` is the verifier's score of request i's prefix + sample j (None:
        no verifier). The default adds every sample as it is (``RowState.add``).
        """
        for i, result in enumerate(results):
            state.add(result, extract, scores[i] if scores is not None else None)

    def select(self, state: RowState) -> tuple[str | None, dict[str, float]]:
        weights = verifier_weights(state.scores).tolist() if self.weighted else None
        return vote(state.answers, weights)


def uniform_tier(n: int, temperature: float, top_p: float, max_tokens: int, weighted: bool = False,
                 logprobs: bool = False) -> Tier:
    """The uniform policy's tier: ``single`` (one greedy pass) for n=1, else
    ``vote`` (majority of n samples) or ``best_of_n`` (verifier-weighted vote)."""
    if n == 1:
        return Tier("single", 1, 0.0, 1.0, max_tokens, logprobs=logprobs)
    return Tier("best_of_n" if weighted else "vote", n, temperature, top_p, max_tokens, weighted, logprobs)


def think_tier(n: int, temperature: float, top_p: float, think_max_tokens: int, weighted: bool = False,
               logprobs: bool = False, prompt_variant: str | None = None) -> Tier:
    """The ``think`` tier: the uniform tier's samples with a larger thinking budget
    (``think_max_tokens`` per sample); n=1 is one greedy pass, selection as ``uniform_tier``.
    ``prompt_variant``: its requests read the rung's own prompt rendering (``policy.rung_chat_template_kwargs``,
    e.g. thinking on for a hybrid model whose other rungs run with it off)."""
    if n == 1:
        return Tier("think", 1, 0.0, 1.0, think_max_tokens, logprobs=logprobs, prompt_variant=prompt_variant)
    return Tier("think", n, temperature, top_p, think_max_tokens, weighted, logprobs, prompt_variant)
