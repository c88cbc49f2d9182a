"""Step-level beam search scored by the verifier: the ``search`` tier.

A trace grows one step at a time (a step ends at ``step_stop``, a newline by
default). Each round asks continuations of prompt + trace, for each live trace,
that stop at the delimiter; the verifier scores every partial trace (the prompt
and the trace so far) and the ``beam_width`` best distinct ones live on. How a
round's continuations are split (``allocate``): ``"even"`` gives every live trace
``expansions``; ``"by_score"`` (the default) shares ``beam_width * expansions`` in
proportion to the traces' vote weights (the sharpened verifier scores), so a trace
far behind the best gets none and drops out, and when the verifier leaves one valid
prefix every continuation retries its next step. A continuation that ends any
other way (EOS, or the trace's ``max_tokens``) finishes its trace; after
``max_steps`` rounds the live traces finish as they are. The row's answer is the
verifier-weighted vote over finished traces.

Ranking partial traces needs no partial mode of the verifier: all candidates of a
round are one step deeper than their parents, so a step checker that counts valid
steps (``check_steps``) ranks them by valid steps so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tierwise.pipelines.tiers.answers import Extractor, verifier_weights, vote
from tierwise.pipelines.tiers.base import RowState, Tier
from tierwise.pipelines.tiers.generation import GenResult, Sample, SamplingConfig


@dataclass(frozen=True)
class Beam:
    """One trace (the text after the prompt) and what is known of it."""

    text: str
    tokens: int = 0                  # output tokens of all its steps
    score: float | None = None       # verifier score of the trace so far
    logprob: float = 0.0             # sum of its tokens' log-probabilities: breaks score ties
    answer: str | None = None        # set when it finishes


@dataclass
class SearchState:
    """A row's search: the live beams, the finished traces and the rounds run."""

    live: list[Beam] = field(default_factory=lambda: [Beam("")])
    finished: list[Beam] = field(default_factory=list)
    steps: int = 0


@dataclass(frozen=True)
class SearchTier(Tier):
    """Step-level beam search as a row program.

    Each round is a list of requests, one per live beam (``n`` its share of the
    round's continuations, see the module docstring; the
    beam's text as ``prefix``, ``step_stop`` as the stop string, ``max_tokens`` what
    is left of the trace's ``max_tokens``). Every expansion becomes one of the row's
    samples: its text is the whole trace so far, its ``output_tokens`` the step's, its
    score the verifier's on the trace, its answer the extracted one when the
    expansion finished the trace (else None).

    ``state.stop_reason``: ``search_done`` (every trace finished), ``max_steps``, or the
    replica's ``budget`` (a round was denied; finished traces still vote).

    Attributes:
        beam_width: live traces kept after each round.
        expansions: continuations asked of each live trace per round.
        max_steps: rounds before the live traces finish as they are.
        step_stop: the string that ends a step (kept in the text).
        allocate: ``"by_score"`` shares a round's ``beam_width * expansions``
            continuations by vote weight; ``"even"`` gives each live beam ``expansions``.
    """

    name: str = "search"
    temperature: float = 0.7
    weighted: bool = True
    beam_width: int = 4
    expansions: int = 4
    max_steps: int = 32
    step_stop: str = "\n"
    allocate: Literal["by_score", "even"] = "by_score"

    def __post_init__(self) -> None:
        for attr in ("beam_width", "expansions", "max_steps", "max_tokens"):
            if getattr(self, attr) < 1:
                raise ValueError(f"SearchTier.{attr} must be >= 1, got {getattr(self, attr)}")
        if not self.step_stop:
            raise ValueError("SearchTier.step_stop must be a non-empty string")
        if self.allocate not in ("by_score", "even"):
            raise ValueError(f"SearchTier.allocate must be 'by_score' or 'even', got {self.allocate!r}")
        object.__setattr__(self, "n", self.expansions)

    @staticmethod
    def search(state: RowState) -> SearchState:
        """The row's search state (created on first use)."""
        if state.scratch is None:
            state.scratch = SearchState()
        return state.scratch

    def next_request(self, state: RowState, seed: int | None) -> list[SamplingConfig] | None:
        """One request per live trace (those given no share under ``by_score`` drop out
        here); seeds run on across the round's requests."""
        if state.stop_reason is not None:
            return None
        search = self.search(state)
        if not search.live:
            state.stop_reason = "search_done"
            return None
        if self.allocate == "by_score":
            shares = _shares([b.score for b in search.live], self.beam_width * self.expansions)
            search.live = [b for b, k in zip(search.live, shares) if k]
            shares = [k for k in shares if k]
        else:
            shares = [self.expansions] * len(search.live)
        requests, offset = [], 0
        for beam, k in zip(search.live, shares):
            requests.append(SamplingConfig(n=k, temperature=self.temperature, top_p=self.top_p,
                                           max_tokens=self.max_tokens - beam.tokens,
                                           seed=None if seed is None else seed + offset,
                                           prefix=beam.text, stop=(self.step_stop,), logprobs=True))
            offset += k
        return requests

    def absorb(self, state: RowState, requests: list[SamplingConfig], results: list[GenResult],
               extract: Extractor, scores: list[list[float | None] | None] | None = None) -> None:
        search = self.search(state)
        if len(results) != len(search.live):
            raise ValueError(f"search round has {len(results)} results for {len(search.live)} live beams")
        state.rounds += 1
        search.steps += 1
        candidates: list[Beam] = []
        for i, (beam, result) in enumerate(zip(search.live, results)):
            for j, s in enumerate(result.samples):
                text = beam.text + s.text  # the verifier scored this whole partial trace
                tokens = beam.tokens + s.output_tokens
                score = scores[i][j] if scores is not None and scores[i] is not None else None
                going = self._continues(s, tokens)
                answer = None if going else extract(text)
                nxt = Beam(text, tokens, score, beam.logprob + (s.mean_logprob or 0.0) * s.output_tokens, answer)
                (candidates if going else search.finished).append(nxt)
                state.samples.append(Sample(text, s.output_tokens, s.mean_logprob, s.finish_reason))
                state.answers.append(answer)
                state.scores.append(score)
        search.finished = _distinct(search.finished)
        search.live = sorted(_distinct(candidates), key=_rank)[:self.beam_width]
        if search.live and search.steps >= self.max_steps:
            search.finished += [Beam(b.text, b.tokens, b.score, b.logprob, extract(b.text)) for b in search.live]
            search.live = []
            state.stop_reason = "max_steps"

    def _continues(self, sample: Sample, tokens: int) -> bool:
        """Whether a continuation ended at the step delimiter with room left to go on
        (vLLM reports a stop string and EOS alike as ``"stop"``: the text tells them apart)."""
        return (sample.finish_reason == "stop" and sample.text.endswith(self.step_stop)
                and tokens < self.max_tokens)

    def select(self, state: RowState) -> tuple[str | None, dict[str, float]]:
        """Verifier-weighted vote over the finished traces (plain vote when not
        ``weighted``); a row stopped by the budget before any finished has no answer."""
        done = self.search(state).finished
        weights = verifier_weights([b.score for b in done]).tolist() if self.weighted else None
        return vote([b.answer for b in done], weights)


def _shares(scores: list[float | None], total: int) -> list[int]:
    """``total`` continuations split in proportion to the vote weights of ``scores``
    (largest remainder, ties to the earlier, better-ranked beam); even when all weigh 0."""
    import numpy as np

    w = verifier_weights(scores)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
    raw = total * w
    shares = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - shares), kind="stable")[:total - shares.sum()]:
        shares[i] += 1
    return shares.tolist()


def _distinct(beams: list[Beam]) -> list[Beam]:
    """The beams with distinct texts, first occurrence kept."""
    seen: set[str] = set()
    return [b for b in beams if not (b.text in seen or seen.add(b.text))]


def _rank(beam: Beam) -> tuple[float, float]:
    """Sort key, best first: verifier score (None as 0), then log-probability."""
    return (-(beam.score or 0.0), -beam.logprob)
