"""Reasoning output: a sample's thought (between the reasoning markers) apart from its answer, and the
thinking budget's second request (budget forcing).

A sample of a reasoning model reads ``<think>thought</think>answer`` (markers configurable; the start
marker may sit in the prompt, as Qwen3's chat template puts it). ``split`` separates the two; answers are
extracted, voted and verified on the part after the end marker, and the output keeps the thought in its
``reasoning`` column. With ``max_thinking_tokens`` a sample first thinks at most that many tokens (it stops
at the end marker); a thought the budget cut is closed with the end marker, and a second request continues
the prompt + the thought + the end marker for the answer (``answer_request``), instead of the sample being
cut. The markers are plain text: a byte-level model (the shipped one) has no single token for them, which
vLLM's reasoning parsers and its ``thinking_token_budget`` need.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tierwise.pipelines.tiers.generation import Sample, SamplingConfig


@dataclass(frozen=True)
class ReasoningConfig:
    """The spec's ``reasoning`` section, for a replica.

    Attributes:
        start: the marker that opens a thought (None: the model thinks from its first token).
        end: the marker that closes it.
        max_thinking_tokens: the thought's budget (None: no budget; the sample is split as it is).
        answer_max_tokens: tokens the answer request may take after a forced end marker.
    """

    start: str | None = "<think>"
    end: str = "</think>"
    max_thinking_tokens: int | None = None
    answer_max_tokens: int = 64

    def thinking_request(self, request: SamplingConfig) -> SamplingConfig:
        """``request`` as a thought's request: at most ``max_thinking_tokens``, stopping at the end marker."""
        if self.max_thinking_tokens is None:
            return request
        return replace(request, max_tokens=min(request.max_tokens, self.max_thinking_tokens),
                       stop=tuple(dict.fromkeys(request.stop + (self.end,))))

    def needs_answer(self, sample: Sample) -> bool:
        """Whether a sample of a thinking request still owes its answer: its thought reached the end marker
        (the request stopped there) or ran out of budget (``length``). A sample that ended on its own
        (EOS, no marker) is done."""
        if self.max_thinking_tokens is None:
            return False
        return sample.finish_reason == "length" or sample.text.endswith(self.end)

    def answer_request(self, request: SamplingConfig, sample: Sample, index: int) -> SamplingConfig:
        """The request that continues the prompt + ``request``'s prefix + the sample's thought, closed with
        the end marker, for one answer (seeded apart from the row's samples)."""
        thought = sample.text if sample.text.endswith(self.end) else sample.text + self.end
        seed = None if request.seed is None else request.seed + (1 << 32) + index
        return replace(request, n=1, max_tokens=self.answer_max_tokens, seed=seed, prefix=request.prefix + thought,
                       stop=tuple(s for s in request.stop if s != self.end), logprobs=request.logprobs)

    def split(self, text: str) -> tuple[str | None, str]:
        """``(thought, answer)`` of a sample's text: the text before the end marker (the start marker
        dropped) and after it. A thought never closed is all thought (the answer is empty); a text with
        neither marker is all answer (the model did not think)."""
        head, sep, tail = text.partition(self.end)
        if not sep:
            if self.start and text.lstrip().startswith(self.start):
                return text.lstrip()[len(self.start):], ""
            return None, text
        head = head.lstrip()
        if self.start and head.startswith(self.start):
            head = head[len(self.start):]
        return head, tail


def merged(thought: Sample, answer: Sample | None, end: str) -> Sample:
    """One sample of a thought and its answer request's sample (None: no answer could be asked): the
    text closed with the end marker, tokens summed, the mean log-prob weighted by tokens."""
    if answer is None:
        return thought
    text = (thought.text if thought.text.endswith(end) else thought.text + end) + answer.text
    n1, n2 = thought.output_tokens, answer.output_tokens
    lp = None
    if thought.mean_logprob is not None and answer.mean_logprob is not None and n1 + n2:
        lp = (thought.mean_logprob * n1 + answer.mean_logprob * n2) / (n1 + n2)
    return Sample(text, n1 + n2, lp, answer.finish_reason, thought.top_logprobs)


def split_sample(sample: Sample, cfg: ReasoningConfig) -> Sample:
    """``sample`` with its text the answer part and its thought in ``reasoning``."""
    thought, answer = cfg.split(sample.text)
    return replace(sample, text=answer, reasoning=thought)
