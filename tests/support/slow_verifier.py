"""``module:function`` verifiers for the fault tests (``tests.support.slow_verifier:NAME``):
the demo task's step check, as given, slow on some rows, or broken. They run in the
replica's process, imported by name, as a user's verifier would be."""

from __future__ import annotations

import time
import zlib

from tierwise.pipelines.tiers.tasks.arithmetic import check_steps

SLEEP_S = 10.0  # long enough that calls run one after another would dwarf the job


def is_slow_row(prompt: str) -> bool:
    """About one row in 32 (by the prompt's checksum)."""
    return zlib.crc32(prompt.encode()) % 32 == 0


def steps(prompt: str, text: str) -> float:
    return check_steps(prompt, text)


def sometimes_slow(prompt: str, text: str) -> float:
    if is_slow_row(prompt):
        time.sleep(SLEEP_S)
    return check_steps(prompt, text)


def sleepy(prompt: str, text: str) -> float:
    """Unit tests: sleeps 2 s on a sample whose text says "slow"."""
    if "slow" in text:
        time.sleep(2.0)
    return 1.0


def broken(prompt: str, text: str) -> float:
    raise RuntimeError("a user's verifier with a bug")
