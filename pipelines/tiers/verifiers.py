"""Verifiers score a sample in [0, 1] from the prompt and the sample's text.

No verifier ever sees gold. ``arithmetic_steps`` checks every step of the demo
task's trace; ``module:function`` loads a user function ``f(prompt, text) -> float``.
These are pure and run inline on the replica. An LLM judge (``tierwise.pipelines.tiers.judge``) is a
verifier too, but one an engine serves and the budget pays for (``tierwise.ray_cluster.scoring``).

A step verifier may also judge a trace while it is being generated: its prefix check
``g(prompt, text_so_far) -> bool`` turns False once no continuation can verify, and the
sampler then stops that sample (``policy.abort_failed_steps``). ``arithmetic_steps`` has
one; a user function offers one as its attribute ``prefix_ok``.

The built-in verifiers (``INLINE_VERIFIERS``) are fast and run inline on the replica; a
user's ``module:function`` runs off its event loop, in a bounded thread pool, within the
job's ``verifier_timeout_s`` (``tierwise.ray_cluster.scoring``): a call that times out (``TIMEOUT``)
or raises (``ERROR``) scores null, counted in the row's ``verifier_issues``.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from tierwise.pipelines.data.errors import unknown_name

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
    code, run on the driver (``tierwise.jobs.preflight``) and on every replica.

    Raises:
        ValueError: an unknown name, a module that fails to import (whatever it raised), or a
            function the module lacks or that is not callable.
    """
    check_verifier_name(name)
    if name == "arithmetic_steps":
        from tierwise.pipelines.tiers.tasks.arithmetic import check_steps
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
        from tierwise.pipelines.tiers.tasks.arithmetic import trace_prefix_ok
        return trace_prefix_ok
    return getattr(make_verifier(name), "prefix_ok", None)


# How a reference verifier compares a sample's answer with the row's reference answer.
REFERENCE_MATCHES = ("math", "exact", "choice")


@dataclass(frozen=True)
class ReferenceConfig:
    """A reference-answer verifier, as a replica needs it (``tierwise.jobs.spec.ReferenceSpec``): each sample
    scores 1.0 when its answer matches the row's ``column`` under ``match``, else 0.0.

    ``math``: equivalence by math-verify (the sample's last ``\\boxed{}``, else its extracted answer,
    against the reference, each parsed as LaTeX, then as a plain expression); ``exact``: the stripped
    strings are equal; ``choice``: the same A-E letter (``tierwise.pipelines.tiers.answers.choice_answer``)."""

    column: str
    match: str = "exact"


def prepare_reference(cfg: ReferenceConfig, reference: str):
    """The row's reference in the form ``reference_score`` compares against (parsed once per row)."""
    if cfg.match == "math":
        return reference.strip(), _math_parse(reference)
    if cfg.match == "choice":
        return _letter(reference)
    return reference.strip()


def reference_score(cfg: ReferenceConfig, prepared, answer: str | None, text: str) -> float:
    """1.0 when the sample (its extracted ``answer``, its ``text``) matches the prepared reference, else 0.0."""
    if cfg.match == "math":
        from math_verify import verify

        from tierwise.pipelines.tiers.answers import last_boxed
        raw, parsed = prepared
        candidate = last_boxed(text)
        candidate = answer if candidate is None else candidate
        if candidate is None:
            return 0.0
        if candidate.strip() == raw:
            return 1.0
        got = _math_parse(candidate)
        # timeout_seconds=None: math-verify's timeout is a SIGALRM (main thread only); _math_parse bounds length.
        return float(bool(parsed and got and verify(parsed, got, timeout_seconds=None)))
    if answer is None:
        return 0.0
    if cfg.match == "choice":
        return float(_letter(answer) == prepared)
    return float(answer.strip() == prepared)


def _letter(value: str) -> str:
    """A choice answer's letter (``(b)``, ``Answer: B`` and ``B`` are ``B``); the stripped, upper-cased
    value when it holds no A-E letter."""
    from tierwise.pipelines.tiers.answers import choice_answer

    value = value.strip().upper()
    return choice_answer(value) or value


MAX_MATH_PARSE = 200  # characters math-verify parses (SymPy may take unbounded time on a long expression)


def _math_parse(value: str) -> list:
    """math-verify's parse of an answer: as LaTeX (``$...$``), else as a plain expression; [] if neither."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    value = value.strip()
    if not value or len(value) > MAX_MATH_PARSE:
        return []
    return (parse(f"${value}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
            or parse(value, extraction_config=[ExprExtractionConfig()], parsing_timeout=None))
