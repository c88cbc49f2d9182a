"""The small protocol between tierwise and any generation backend.

Everything above the engine (replicas, policies, replay) speaks these plain
dataclasses; only ``ray_cluster.engine`` translates them to vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters of one request (``n`` samples of one prompt)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    logprobs: bool = False  # each sample's mean token log-prob (costs the engine's front end per token)


@dataclass
class Sample:
    """One generated sample."""

    text: str
    output_tokens: int
    mean_logprob: float | None = None
    finish_reason: str | None = None


@dataclass
class GenResult:
    """All samples of one request."""

    request_id: str
    prompt_tokens: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.samples)
