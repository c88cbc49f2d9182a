"""The row programs (tiers) a spec asks for: a uniform policy's tier, and the extra rungs of an
adaptive ladder. One place turns a spec's think and search settings into tiers."""

from __future__ import annotations

from tierwise.jobs.spec import AdaptivePolicy, JobSpec, SamplingSpec, UniformPolicy
from tierwise.pipelines.tiers.base import Tier, think_tier, uniform_tier
from tierwise.pipelines.tiers.search import SearchTier

THINK_TOKENS_PER_MAX_TOKENS = 4  # a thinking budget's default: this many times sampling.max_tokens


def policy_tier(policy: UniformPolicy, s: SamplingSpec) -> Tier:
    """The row program of a uniform policy: its ``tier`` (sample / think / search)."""
    if policy.tier == "think":
        return _think(policy, s, policy.n)
    if policy.tier == "search":
        return _search(policy, s)
    return uniform_tier(policy.n, s.temperature, s.top_p, s.max_tokens, policy.select == "verifier", bool(s.logprobs))


def rung_tiers(spec: JobSpec) -> tuple[Tier, ...]:
    """The row programs of the spec's extra rungs, in ladder order (empty for the default ladder)."""
    pol, s = spec.policy, spec.sampling
    # a think rung with its own prompt rendering (``PromptConfig.variants``) asks for it by name
    own = "think" in (pol.rung_chat_template_kwargs or {})
    return tuple(_think(pol, s, pol.think_samples, "think" if own else None) if rung == "think" else _search(pol, s)
                 for rung in pol.rungs)


def _think(policy: UniformPolicy | AdaptivePolicy, s: SamplingSpec, n: int, variant: str | None = None) -> Tier:
    max_tokens = policy.think_max_tokens or THINK_TOKENS_PER_MAX_TOKENS * s.max_tokens
    return think_tier(n, s.temperature, s.top_p, max_tokens, policy.select == "verifier", bool(s.logprobs), variant)


def _search(policy: UniformPolicy | AdaptivePolicy, s: SamplingSpec) -> SearchTier:
    b = policy.search_spec
    return SearchTier(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, beam_width=b.beam_width,
                      expansions=b.expansions, max_steps=b.max_steps, step_stop=b.step_stop, allocate=b.allocate)
