"""Verifiers score a sample in [0, 1] from the prompt and the sample's text.

No verifier ever sees gold. ``arithmetic_steps`` checks every step of the demo
task's trace; ``module:function`` loads a user function ``f(prompt, text) -> float``.
These are pure and run inline on the replica. An LLM judge (``pipelines.judge``) is a
verifier too, but one an engine serves and the budget pays for (``ray_cluster.scoring``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Verifier = Callable[[str, str], float]


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
