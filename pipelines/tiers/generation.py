"""The small protocol between tierwise and any generation backend.

Everything above the engine (replicas, policies, replay) speaks these plain
dataclasses; only ``tierwise.ray_cluster.engine`` translates them to vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters of one request (``n`` samples of one prompt).

    Attributes:
        prefix: text the request continues after the prompt (a partial trace, as in
            step-level search); the model sees prompt + prefix, and the prefix's
            tokens count as prompt tokens. Samples hold only the new text.
        stop: strings that end a sample; the matched string is kept at the end of
            the sample's text (its ``finish_reason`` is then ``"stop"``).
        structured: every sample obeys this constraint (vLLM's structured outputs).
        top_logprobs: when > 0, each sample carries the top log-probabilities of its
            first generated token (``Sample.top_logprobs``; a judge's yes/no verdict).
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    logprobs: bool = False  # each sample's mean token log-prob (costs the engine's front end per token)
    top_logprobs: int = 0  # > 0: the first generated token's top log-probs too (an LLM judge's verdict)
    prefix: str = ""
    stop: tuple[str, ...] = ()
    # Constrained decoding: (kind, JSON-encoded value), kind "choice" | "json_schema" | "regex"
    # (``tierwise.jobs.spec.StructuredSpec.constraint``); None: free text.
    structured: tuple[str, str] | None = None
    # The rendering of the row's prompt the request reads: a ladder rung's name with its own
    # chat_template_kwargs (``tierwise.pipelines.data.prompts.PromptConfig.variants``); None: the job's rendering.
    prompt_variant: str | None = None


@dataclass
class Sample:
    """One generated sample.

    ``finish_reason`` is the backend's: ``"stop"`` (EOS or a stop string), ``"length"``
    (``max_tokens`` or the context ran out), or None when unknown (replay).
    ``top_logprobs``: decoded token text -> log-probability of the first generated
    token's most likely tokens (top ``SamplingConfig.top_logprobs``, plus the sampled
    one), None unless requested. ``reasoning``: the sample's thought when the job splits
    reasoning from answers (``text`` is then the answer part).
    """

    text: str
    output_tokens: int
    mean_logprob: float | None = None
    finish_reason: str | None = None
    top_logprobs: dict[str, float] | None = None
    reasoning: str | None = None  # the thought, split from ``text`` (``tierwise.pipelines.tiers.reasoning``); None: none


@dataclass
class GenResult:
    """All samples of one request."""

    request_id: str
    prompt_tokens: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.samples)
