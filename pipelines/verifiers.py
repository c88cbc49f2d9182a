"""Verifiers score a sample in [0, 1] from the prompt and the sample's text.

No verifier ever sees gold. ``arithmetic_steps`` checks every step of the demo
task's trace; ``module:function`` loads a user function ``f(prompt, text) -> float``.
These are pure and run inline on the replica. An LLM judge (``pipelines.judge``) is a
verifier too, but one an engine serves and the budget pays for (``ray_cluster.scoring``).

A step verifier may also judge a trace while it is being generated: its prefix check
``g(prompt, text_so_far) -> bool`` turns False once no continuation can verify, and the
sampler then stops that sample (``policy.abort_failed_steps``). ``arithmetic_steps`` has
one; a user function offers one as its attribute ``prefix_ok``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Verifier = Callable[[str, str], float]
PrefixCheck = Callable[[str, str], bool]


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
