"""How a replica scores its samples: a pure verifier, or an LLM judge it pays for.

A ``Scorer`` is built once per job on a replica (``ReplicaActor._scoring``) and
gives each row a ``RowScorer``; after every generation round the replica awaits
``RowScorer.score(samples, ledger)`` for the round's scores, in sample order.

Pure verifiers (``f(prompt, text) -> float``) run inline: the coroutine never
suspends. A judge (``pipelines.judge``) sends requests to an engine (the replica's
own, or a second one hosting the judge model); each request reserves its worst case
from the ledger first and settles its actual cost after, as generation does, and the
row's ``judge_tokens`` and ``cost`` include it. A sample whose judge call the budget
denies keeps a null score; ``judge_issues`` says why for every sample that has no
verdict of the judge's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace

from pipelines.answers import Extractor
from pipelines.budget import DENIED
from pipelines.generation import Sample
from pipelines.judge import BUDGET, ENGINE_ERROR, TOO_LONG, UNPARSEABLE, JudgeConfig, agree_scores, render, verdict

log = logging.getLogger(__name__)

# Judge requests draw seeds apart from the row's samples (whose seeds are seed + i).
_JUDGE_SEED_OFFSET = 1 << 40


class Scorer:
    """A job's scoring on one replica.

    Args:
        extract: the job's answer extractor (``agree`` compares answers with it).
        verifier: a verifier name (``arithmetic_steps``, ``module:function``), a
            ``JudgeConfig``, or None (no scores).
        judge_engine: the engine that serves the judge (needed with a ``JudgeConfig``).
    """

    def __init__(self, extract: Extractor, verifier: str | JudgeConfig | None, judge_engine=None):
        self.extract = extract
        self.judge = verifier if isinstance(verifier, JudgeConfig) else None
        self.verify = self.prefix_ok = None
        if isinstance(verifier, str) and verifier:
            from pipelines.verifiers import make_prefix_check, make_verifier
            self.verify = make_verifier(verifier)
            self.prefix_ok = make_prefix_check(verifier)  # a step verifier's check of unfinished traces
        if self.judge is not None and judge_engine is None:
            raise ValueError("an llm_judge verifier needs an engine to serve the judge")
        self.engine = judge_engine

    @property
    def scores(self) -> bool:
        """Whether samples get scores at all."""
        return self.verify is not None or self.judge is not None

    def for_row(self, row_id: str, prompt: str, seed: int, cost_per_token: float) -> RowScorer:
        return RowScorer(self, row_id, prompt, seed, cost_per_token)


class RowScorer:
    """One row's scoring, with its judge spend (``tokens``, ``cost`` in the budget's unit)
    and ``issues`` (reason -> samples; see ``pipelines.judge``)."""

    def __init__(self, scorer: Scorer, row_id: str, prompt: str, seed: int, cost_per_token: float):
        self.s, self.row_id, self.prompt, self.seed, self.cpt = scorer, row_id, prompt, seed, cost_per_token
        self.tokens, self.cost, self.issues = 0, 0.0, Counter()
        self._calls = 0
        self._judge_answer: tuple[str | None] | None = None  # agree: the judge's answer, once it has one

    async def score(self, samples: list[Sample], ledger) -> list[float | None]:
        """Scores of ``samples`` (one round of this row), in order; None = unscored."""
        s, texts = self.s, [x.text for x in samples]
        if s.judge is None:
            return [s.verify(self.prompt, t) if s.verify else None for t in texts]
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
            if engine.dead:
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
        """The row's judge columns (null without a judge)."""
        if self.s.judge is None:
            return {"judge_tokens": None, "judge_issues": None}
        return {"judge_tokens": self.tokens, "judge_issues": dict(self.issues) or None}
