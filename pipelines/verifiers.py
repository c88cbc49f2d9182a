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

import difflib
import importlib
import re
from collections.abc import Callable

from pipelines.errors import unknown_name

Verifier = Callable[[str, str], float]
PrefixCheck = Callable[[str, str], bool]

# The verifiers a spec may name; anything else is ``module:function`` (or an LLM judge mapping).
VERIFIERS = ("arithmetic_steps",)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_verifier_name(name: str) -> None:
    """Checks the form of a verifier name without importing anything (spec validation).

    Raises:
        ValueError: neither a built-in name (the message lists them) nor ``module:function``
            with a dotted module path and a function name.
    """
    if name in VERIFIERS:
        return
    if ":" not in name:
        raise ValueError(unknown_name("verifier", name, VERIFIERS + ("module:function", "{kind: llm_judge, ...}")))
    module, func = name.split(":", 1)
    if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(func):
        raise ValueError(f"verifier {name!r} is not of the form module:function (e.g. my_pkg.checks:score)")
INLINE_VERIFIERS = frozenset({"arithmetic_steps"})
# Why a sample has no score of a pure verifier's (the row's ``verifier_issues``).
TIMEOUT, ERROR = "timeout", "error"


def make_verifier(name: str) -> Verifier:
    """The verifier function ``name`` names. A ``module:function`` is imported here: trusted
    code, run on the driver (``jobs.preflight``) and on every replica.

    Raises:
        ValueError: an unknown name, a module that fails to import (whatever it raised), or a
            function the module lacks or that is not callable.
    """
    check_verifier_name(name)
    if name == "arithmetic_steps":
        from pipelines.tasks.arithmetic import check_steps
        return check_steps
    module, func = name.split(":", 1)
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a user module may raise anything while it imports
        raise ValueError(f"verifier {name!r}: module {module!r} cannot be imported: "
                         f"{type(exc).__name__}: {exc}") from exc
    obj = mod
    for attr in func.split("."):
        if not hasattr(obj, attr):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            close = difflib.get_close_matches(attr, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"verifier {name!r}: {module!r} has no {func!r}{hint}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"verifier {name!r}: {func!r} is a {type(obj).__name__}, not a function")
    return obj


def make_prefix_check(name: str | None) -> PrefixCheck | None:
    """The prefix check of the verifier ``name``, or None when it has none."""
    if not name:
        return None
    if name == "arithmetic_steps":
        from pipelines.tasks.arithmetic import trace_prefix_ok
        return trace_prefix_ok
    return getattr(make_verifier(name), "prefix_ok", None)
