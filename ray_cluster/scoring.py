"""How a replica scores its samples: a pure verifier, or an LLM judge it pays for.

A ``Scorer`` is built once per job on a replica (``ReplicaActor._scoring``) and
gives each row a ``RowScorer``; after every generation round the replica awaits
``RowScorer.score(samples, ledger)`` for the round's scores, in sample order.

Pure verifiers (``f(prompt, text) -> float``): the built-in ``arithmetic_steps`` runs
inline (the coroutine never suspends); a user's ``module:function`` runs off the event
loop, in the replica's bounded thread pool, each call within ``verifier_timeout_s`` of
its sample's round, so a slow or stuck verifier delays only its own row. A call that
times out or raises scores null, and the row's ``verifier_issues`` counts it by reason
(``timeout``, ``error``); the row goes on, and keeps what it spent. A judge (``tierwise.pipelines.tiers.judge``) sends requests to an engine (the replica's
own, or a second one hosting the judge model); each request reserves its worst case
from the ledger first and settles its actual cost after, as generation does, and the
row's ``judge_tokens`` and ``cost`` include it. A sample whose judge call the budget
denies keeps a null score; ``judge_issues`` says why for every sample that has no
verdict of the judge's own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from tierwise.pipelines.data.errors import EngineDead
from tierwise.pipelines.plan.budget import DENIED
from tierwise.pipelines.tiers.answers import Extractor
from tierwise.pipelines.tiers.generation import Sample
from tierwise.pipelines.tiers.judge import (
    BUDGET,
    ENGINE_ERROR,
    TOO_LONG,
    UNPARSEABLE,
    JudgeConfig,
    agree_scores,
    render,
    verdict,
)
from tierwise.pipelines.tiers.verifiers import (
    ERROR,
    INLINE_VERIFIERS,
    TIMEOUT,
    ReferenceConfig,
    prepare_reference,
    reference_score,
)

log = logging.getLogger(__name__)

# Judge requests draw seeds apart from the row's samples (whose seeds are seed + i).
_JUDGE_SEED_OFFSET = 1 << 40

# Threads a replica runs user verifiers on (all its jobs share them). Verifiers that wait
# (on a sandbox, a service, a sleep) overlap; pure-Python ones share the GIL with the
# event loop in 5 ms slices, so they slow the replica instead of stopping it. A call that
# never returns holds its thread for good: the others go on serving, and once all are held
# every call times out, so the job still ends.
VERIFIER_THREADS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _verifier_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(VERIFIER_THREADS, thread_name_prefix="tierwise-verifier")
        return _pool


class Scorer:
    """A job's scoring on one replica.

    Args:
        extract: the job's answer extractor (``agree`` compares answers with it).
        verifier: a verifier name (``arithmetic_steps``, ``module:function``), a
            ``JudgeConfig``, or None (no scores).
        judge_engine: the engine that serves the judge (needed with a ``JudgeConfig``).
        timeout_s: how long a user verifier's call may take (seconds, from its round's end).
    """

    def __init__(self, extract: Extractor, verifier: str | JudgeConfig | None, judge_engine=None,
                 timeout_s: float = 30.0):
        self.extract = extract
        self.judge = verifier if isinstance(verifier, JudgeConfig) else None
        self.reference = verifier if isinstance(verifier, ReferenceConfig) else None
        self.verify = self.prefix_ok = None
        self.inline, self.timeout_s = True, timeout_s
        self._logged: set[str] = set()
        if isinstance(verifier, str) and verifier:
            from tierwise.pipelines.tiers.verifiers import make_prefix_check, make_verifier
            self.verify = make_verifier(verifier)
            self.inline = verifier in INLINE_VERIFIERS
            # A step verifier's check of unfinished traces. It runs inline, once per streamed
            # piece of a sample (a thread hop each would cost more than the check).
            self.prefix_ok = make_prefix_check(verifier)
        if self.judge is not None and judge_engine is None:
            raise ValueError("an llm_judge verifier needs an engine to serve the judge")
        self.engine = judge_engine

    def log_once(self, reason: str, row_id: str, exc: BaseException | None = None) -> None:
        """Logs a verifier's first failure of each kind on this replica (later ones are counted)."""
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("verifier call for row %s: %s (%s); its score is null, and later such calls are only "
                        "counted (verifier_issues)", row_id, reason,
                        f"{type(exc).__name__}: {exc}" if exc is not None else f"over {self.timeout_s} s")

    @property
    def scores(self) -> bool:
        """Whether samples get scores at all."""
        return self.verify is not None or self.judge is not None or self.reference is not None

    def for_row(self, row_id: str, prompt: str, seed: int, cost_per_token: float,
                reference: str | None = None) -> RowScorer:
        """A row's scoring; ``reference``: its reference answer (a reference verifier's column)."""
        return RowScorer(self, row_id, prompt, seed, cost_per_token, reference)


class RowScorer:
    """One row's scoring, with its judge spend (``tokens``, ``cost`` in the budget's unit),
    the judge's ``issues`` (reason -> samples; see ``tierwise.pipelines.tiers.judge``) and a pure
    verifier's ``verifier_issues`` (``timeout`` / ``error`` -> samples)."""

    def __init__(self, scorer: Scorer, row_id: str, prompt: str, seed: int, cost_per_token: float,
                 reference: str | None = None):
        self.s, self.row_id, self.prompt, self.seed, self.cpt = scorer, row_id, prompt, seed, cost_per_token
        self._reference = None if scorer.reference is None else prepare_reference(scorer.reference, reference)
        self.tokens, self.cost, self.issues = 0, 0.0, Counter()
        self.verifier_issues: Counter[str] = Counter()
        self._calls = 0
        self._judge_answer: tuple[str | None] | None = None  # agree: the judge's answer, once it has one

    async def score(self, samples: list[Sample], ledger) -> list[float | None]:
        """Scores of ``samples`` (one round of this row), in order; None = unscored."""
        s, texts = self.s, [x.text for x in samples]
        if s.reference is not None:  # inline: a string compare, or a math-verify parse of a short answer
            return [reference_score(s.reference, self._reference, s.extract(t), t) for t in texts]
        if s.judge is None:
            if s.verify is None:
                return [None] * len(texts)
            if s.inline:
                return [self._verify_inline(t) for t in texts]
            return list(await asyncio.gather(*(self._verify_off_loop(t) for t in texts)))
        if s.judge.per_sample:
            # One request per sample, all in flight at once.
            asked = await asyncio.gather(*(self._ask(render(s.judge.template, self.prompt, t), 1, ledger) for t in texts))
            scores = []
            for out in asked:
                score = None if out is None else verdict(s.judge, out.text, out.top_logprobs)
                if out is not None and score is None:
                    self.issues[UNPARSEABLE] += 1
                    score = 0.0
                scores.append(score)
            return scores
        # agree: the judge solves the prompt once per row; later rounds reuse its answer.
        if self._judge_answer is None:
            out = await self._ask(render(s.judge.template, self.prompt), len(texts), ledger)
            if out is None:
                return [None] * len(texts)
            self._judge_answer = (s.extract(out.text),)
        (answer,) = self._judge_answer
        if answer is None:
            self.issues[UNPARSEABLE] += len(texts)
        return agree_scores(answer, [s.extract(t) for t in texts])

    def _verify_inline(self, text: str) -> float | None:
        try:
            return self.s.verify(self.prompt, text)
        except Exception as exc:
            return self._failed(ERROR, exc)

    async def _verify_off_loop(self, text: str) -> float | None:
        call = asyncio.get_running_loop().run_in_executor(_verifier_pool(), self.s.verify, self.prompt, text)
        try:
            # A call still queued when its time is up is dropped from the queue; one running
            # finishes on its thread, unheeded.
            return await asyncio.wait_for(call, self.s.timeout_s)
        except TimeoutError:
            return self._failed(TIMEOUT)
        except Exception as exc:
            return self._failed(ERROR, exc)

    def _failed(self, reason: str, exc: BaseException | None = None) -> None:
        self.verifier_issues[reason] += 1
        self.s.log_once(reason, self.row_id, exc)
        return None

    async def _ask(self, judge_prompt: str, affected: int, ledger) -> Sample | None:
        """One judge request, paid from the ledger; None (and ``affected`` samples
        counted under the reason) when it cannot run."""
        engine, cfg = self.s.engine, self.s.judge
        token_ids = engine.tokenize(judge_prompt)
        room = engine.max_model_len - len(token_ids)
        if room < 1:
            self.issues[TOO_LONG] += affected
            return None
        self._calls += 1
        sampling = cfg.sampling(self.seed + _JUDGE_SEED_OFFSET * self._calls)
        sampling = replace(sampling, max_tokens=min(sampling.max_tokens, room))
        worst = (len(token_ids) + sampling.max_tokens) * self.cpt
        if await ledger.reserve(worst) == DENIED:
            self.issues[BUDGET] += affected
            return None
        try:
            result = await engine.generate(f"{self.row_id}#judge{self._calls}", token_ids, sampling)
        except Exception as exc:
            await ledger.release(worst)
            if isinstance(exc, EngineDead):
                raise  # the replica is lost: the pool retries the part elsewhere
            log.warning("judge request for row %s failed: %s", self.row_id, exc)
            self.issues[ENGINE_ERROR] += affected
            return None
        tokens = result.prompt_tokens + result.output_tokens
        await ledger.settle(worst, tokens * self.cpt, kind="judge")
        self.tokens += tokens
        self.cost += tokens * self.cpt
        return result.samples[0]

    def columns(self) -> dict:
        """The row's judge columns (null without a judge) and ``verifier_issues`` (null when none)."""
        issues = {"verifier_issues": dict(self.verifier_issues) or None}
        if self.s.judge is None:
            return {"judge_tokens": None, "judge_issues": None} | issues
        return {"judge_tokens": self.tokens, "judge_issues": dict(self.issues) or None} | issues
