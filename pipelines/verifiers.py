"""Verifiers score a sample in [0, 1] from the prompt and the sample's text.

No verifier ever sees gold. ``arithmetic_steps`` checks every step of the demo
task's trace; ``module:function`` loads a user function ``f(prompt, text) -> float``.
These are pure and run inline on the replica. An LLM judge (``pipelines.judge``) is a
verifier too, but one an engine serves and the budget pays for (``ray_cluster.scoring``).

A step verifier may also judge a trace while it is being generated: its prefix check
``g(prompt, text_so_far) -> bool`` turns False once no continuation can verify, and the
sampler then stops that sample (``policy.abort_failed_steps``). ``arithmetic_steps`` has
one; a user function offers one as its attribute ``prefix_ok``.

The built-in verifiers (``INLINE_VERIFIERS``) are fast and run inline on the replica; a
user's ``module:function`` runs off its event loop, in a bounded thread pool, within the
job's ``verifier_timeout_s`` (``ray_cluster.scoring``): a call that times out (``TIMEOUT``)
or raises (``ERROR``) scores null, counted in the row's ``verifier_issues``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Verifier = Callable[[str, str], float]
PrefixCheck = Callable[[str, str], bool]

INLINE_VERIFIERS = frozenset({"arithmetic_steps"})
# Why a sample has no score of a pure verifier's (the row's ``verifier_issues``).
TIMEOUT, ERROR = "timeout", "error"


def make_verifier(name: str) -> Verifier:
    if name == "arithmetic_steps":
        from pipelines.tasks.arithmetic import check_steps
        return check_steps
    if ":" in name:
        module, func = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"verifier {name!r} cannot be loaded: {exc}") from exc
        return fn
    raise ValueError(f"unknown verifier {name!r}: use arithmetic_steps or module:function")


def make_prefix_check(name: str | None) -> PrefixCheck | None:
    """The prefix check of the verifier ``name``, or None when it has none."""
    if not name:
        return None
    if name == "arithmetic_steps":
        from pipelines.tasks.arithmetic import trace_prefix_ok
        return trace_prefix_ok
    return getattr(make_verifier(name), "prefix_ok", None)
