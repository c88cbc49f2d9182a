"""One part's rows on a replica: each row runs its tier's program against the engine.

A ``RowRunner`` is built once per part by ``ReplicaActor.process_part`` with what
every row of the part shares (engine, tier, ledger client, scorer), and ``run`` is
awaited once per row, many rows at a time. It is a plain class rather than methods of
the actor because Ray wraps every method of an actor class in a tracing shim, paid on
each call and each resume of its coroutine: per row, on the core the engine's scheduler
shares (see ``bench/throughput.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from tierwise.pipelines.data import records
from tierwise.pipelines.data.errors import EngineDead
from tierwise.pipelines.plan.budget import DENIED
from tierwise.pipelines.plan.pricing import Pricer, PriceSpec
from tierwise.pipelines.plan.stopping import LABEL_TOP_PROB
from tierwise.pipelines.tiers.answers import label_distribution
from tierwise.pipelines.tiers.base import RowState, Tier
from tierwise.pipelines.tiers.reasoning import ReasoningConfig, merged, split_sample
from tierwise.ray_cluster.scoring import RowScorer, Scorer

log = logging.getLogger(__name__)

# Top log-probs of a row's first generated token read for a structured choice's label distribution
# (vLLM's default max_logprobs).
LABEL_TOP_LOGPROBS = 20


class RowRunner:
    """Runs rows of one part: at most ``sem``'s count at a time on the replica.

    Args:
        engine: the replica's ``VllmEngine``.
        sem: the replica's bound on rows in flight (shared by all its parts).
        tier: the part's row program.
        ledger: the replica's ``LedgerClient`` of the job's ledger.
        scorer: the job's ``Scorer`` on this replica.
        seed: the job's seed; cost_per_token: in the budget's unit (a float), or the replica's
            ``tierwise.pipelines.plan.pricing.Pricer`` of the job (weighted or metered prices); keep_samples: whether
            records keep the sampled texts; abort_failed_steps: stop samples at their first
            step the verifier's prefix check fails (when it has one).
        structured: the job's structured-output constraint, put on each of its requests. With a choice,
            the row's first request also reads its first token's top log-probs: the row's ``label_probs``.
        halt: the job's stop flag (``.stopped``): once set, rows start no new round (their
            records are never committed; ``ReplicaActor.halt``).
        rows_stop_at: the job's deadline for rows (unix seconds): a row starts no round past it
            (``stop_reason`` deadline; without a sample it is ``skipped_deadline``).
        reasoning: the job's reasoning markers and thinking budget (``tierwise.pipelines.tiers.reasoning``): samples are
            split into thought and answer, and with a budget each request thinks first, then asks for the
            answers its thoughts owe (budget forcing), within the round's reservation.
        started: called as each row takes its place among the rows in flight (the replica's count of
            rows not yet started, ``ReplicaActor.unstarted_rows``).
    """

    def __init__(self, engine, sem: asyncio.Semaphore, tier: Tier, ledger, scorer: Scorer, seed: int,
                 cost_per_token: float | Pricer, keep_samples: bool, abort_failed_steps: bool = False, halt=None,
                 rows_stop_at: float | None = None, structured: tuple[str, str] | None = None,
                 reasoning: ReasoningConfig | None = None, started: Callable[[], None] = lambda: None):
        self.engine, self.sem, self.tier, self.ledger, self.scorer = engine, sem, tier, ledger, scorer
        self.started = started
        self.halt = halt if halt is not None else _NoHalt
        self.seed, self.keep_samples = seed, keep_samples
        self.price = cost_per_token if isinstance(cost_per_token, Pricer) else Pricer(PriceSpec(cost_per_token))
        self.rows_stop_at = rows_stop_at
        self.structured = structured  # every request's constraint (SamplingConfig.structured)
        # A choice's labels: the first request of a row reads the first token's top log-probs (label_probs).
        self.labels = tuple(json.loads(structured[1])) if structured and structured[0] == "choice" else ()
        # A step verifier's check of unfinished traces: samples stop at their first failed step.
        self.prefix_ok = scorer.prefix_ok if abort_failed_steps else None
        self.reasoning = reasoning
        self.forcing = reasoning is not None and reasoning.max_thinking_tokens is not None
        self._end_tokens = len(engine.tokenize(reasoning.end, special=False)) if self.forcing else 0

    async def run(self, row_id: str, prompt: str | None, error: str | None, features: dict[str, float | None],
                  token_ids: list[int] | dict | None, sampling: dict | None = None, reference: str | None = None) -> dict:
        """The row's output record (``tierwise.pipelines.data.records``); ``token_ids``: its prompt's, or its renderings by
        name (``{None: the job's, rung: the rung's}``, ``tierwise.pipelines.data.prompts.variant_ids``), a request reading
        the one its ``prompt_variant`` names; ``sampling``: the row's own sampling
        fields (``input.sampling_columns``), put on each of its requests; ``reference``: its reference
        answer (a reference verifier's column).

        A row that fails keeps what it spent (its record's tokens and cost are what the
        ledger settled for it). Raises ``EngineDead`` only: the replica is lost, and the
        pool retries the part elsewhere (its rows are never committed as errors)."""
        if error:
            self.started()
            return records.empty_record(row_id, "error", error)
        spent = _Spent()
        async with self.sem:
            self.started()
            if self.halt.stopped:
                return spent.error_record(row_id, "the job stopped")
            try:
                return await self._generate(row_id, prompt, features, token_ids, spent, sampling, reference)
            except EngineDead:
                raise
            except Exception as exc:
                log.exception("row %s failed", row_id)
                return spent.error_record(row_id, f"{type(exc).__name__}: {exc}")

    async def _generate(self, row_id: str, prompt: str, features: dict[str, float | None],
                        token_ids: list[int] | dict, spent: _Spent, sampling: dict | None = None,
                        reference: str | None = None) -> dict:
        renderings = token_ids if isinstance(token_ids, dict) else {None: token_ids}
        n_prompt, max_len = len(renderings[None]), self.engine.max_model_len
        if n_prompt >= max_len:
            return records.empty_record(
                row_id, "error", f"prompt has {n_prompt} tokens; the model's context is {max_len}", n_prompt)
        row = self._begin_row(row_id, prompt, n_prompt, features, renderings, spent, sampling, reference)
        state = row.state
        while (asked := self.tier.next_request(state, row.seed + len(state.samples))) is not None:
            if self.halt.stopped:
                return spent.error_record(row_id, "the job stopped")
            if self.rows_stop_at is not None and time.time() >= self.rows_stop_at:
                state.stop_reason = "deadline"
                break
            step = self._round_requests(row, asked)
            if not await self._reserve(step):
                state.stop_reason = "budget"
                break
            outcomes = await self._run_round(step)
            results = await self._settle(row, step, outcomes)
            if failed := next((o for o in outcomes if isinstance(o, BaseException)), None):
                if isinstance(failed, EngineDead):
                    raise failed  # the replica is lost: the pool retries the part elsewhere
                return spent.error_record(row_id, f"generation failed: {failed}")
            await self._absorb(row, step, results)
        return self._record(row)

    def _begin_row(self, row_id: str, prompt: str, n_prompt: int, features: dict[str, float | None],
                   renderings: dict, spent: _Spent, sampling: dict | None, reference: str | None) -> _Row:
        """The row's state, seed and scoring, before its first round (``spent`` keeps them for an error record)."""
        spent.state = RowState(row_id, n_prompt, features={k: v for k, v in features.items() if v is not None})
        # A seed from the row id makes reruns reproducible whatever replica or part size
        # serves the row. vLLM seeds sample i of a request with seed + i, so each round
        # starts past the samples already drawn: every sample of the row has its own seed.
        seed = (self.seed * 1_000_003 + zlib.crc32(row_id.encode()) * 1_009) % 2**62
        spent.scoring = self.scorer.for_row(row_id, prompt, seed, self.price.per_token(), reference)
        keep_going = partial(self.prefix_ok, prompt) if self.prefix_ok else None
        return _Row(row_id, n_prompt, renderings, sampling, spent, seed, keep_going)

    def _round_requests(self, row: _Row, asked) -> _Round:
        """The round's requests as the engine gets them: the row's own sampling fields, cut to the
        context, the job's constraint and thinking budget; each with the prompt it reads."""
        requests = asked if isinstance(asked, list) else [asked]
        if row.sampling:  # the row's own max_tokens / temperature / top_p (input.sampling_columns)
            requests = [replace(r, **row.sampling) for r in requests]
        ids = [row.renderings[r.prompt_variant] for r in requests]  # the prompt each request reads
        inputs = [len(self.engine.input_ids(t, r)) for t, r in zip(ids, requests)]  # prompt + prefix tokens
        requests = [_clip(r, k, self.engine.max_model_len) for r, k in zip(requests, inputs)]
        if self.structured:
            requests = [replace(r, structured=self.structured) for r in requests]
        if self.forcing:
            requests = [self.reasoning.thinking_request(r) for r in requests]
        if self.labels and row.state.rounds == 0:  # the row's label distribution, once (label_probs)
            requests[0] = replace(requests[0], top_logprobs=max(requests[0].top_logprobs, LABEL_TOP_LOGPROBS))
        checks = [row.keep_going if not r.top_logprobs else None for r in requests]
        return _Round(f"{row.id}#{row.state.rounds}", requests, ids, inputs, checks)

    async def _reserve(self, step: _Round) -> bool:
        """Reserves the round's worst case whole (``step.worst``): each request's input plus n samples of
        max_tokens. Samples that stop at a failed step are requests of their own: each pays its input.
        False when the ledger denies it (the row stops with what it has)."""
        n_in = sum(k * (r.n if c else 1) for r, k, c in zip(step.requests, step.inputs, step.checks))
        n_out = sum(r.n * r.max_tokens + r.n * self._answer_room(r, k) for r, k in zip(step.requests, step.inputs))
        step.worst = self.price.reserve(n_in, n_out)
        return await self.ledger.reserve(step.worst) != DENIED

    async def _run_round(self, step: _Round) -> list:
        """The round's outcomes, one per request: its ``GenResult`` or the exception it raised."""
        self.price.meter.begin()  # the replica's devices are held for the job while any of its requests runs
        if len(step.requests) == 1:  # most rounds: no task or gather of its own
            try:
                return [await self._request(step.tag, step.ids[0], step.requests[0], step.checks[0])]
            except Exception as exc:
                return [exc]
        return await asyncio.gather(
            *(self._request(f"{step.tag}.{i}", t, r, c)
              for i, (t, r, c) in enumerate(zip(step.ids, step.requests, step.checks))),
            return_exceptions=True)

    async def _settle(self, row: _Row, step: _Round, outcomes: list) -> list:
        """The round's results (samples split into thought and answer with ``reasoning``), its label
        distribution read; one settlement for the round: what did run is spent, the rest returns."""
        results = [o for o in outcomes if not isinstance(o, BaseException)]
        if self.labels and row.label_probs is None and results and results[0].samples:
            row.label_probs = label_distribution(results[0].samples[0].top_logprobs, self.labels)
            if row.label_probs:  # a free difficulty signal for the tier (AdaptiveTier.label_confidence)
                row.state.features[LABEL_TOP_PROB] = max(row.label_probs.values())
        if self.reasoning:  # answers are read, voted and verified after the end marker
            results = [replace(r, samples=[split_sample(x, self.reasoning) for x in r.samples]) for r in results]
        n_in, n_out = sum(r.prompt_tokens for r in results), sum(r.output_tokens for r in results)
        self.price.meter.end(self.price.spec.weighted(n_in, n_out))
        actual = self.price.settle(n_in, n_out, step.worst)
        await self.ledger.settle(step.worst, actual)
        row.spent.add(actual, results)
        return results

    async def _absorb(self, row: _Row, step: _Round, results: list) -> None:
        """Scores the round's samples and hands them to the tier. Verifiers score the whole trace: a
        request's prefix, then its sample. A judge's requests reserve and settle their own cost (scoring.cost)."""
        scores = [await row.scoring.score([replace(s, text=q.prefix + s.text) for s in r.samples]
                                          if q.prefix else r.samples, self.ledger)
                  for q, r in zip(step.requests, results)]
        self.tier.absorb(row.state, step.requests, results, self.scorer.extract, scores)

    def _record(self, row: _Row) -> dict:
        """The row's output record (``records.OUTPUT_SCHEMA``) once its rounds are over."""
        state, scoring, spent = row.state, row.scoring, row.spent
        if not state.samples and state.stop_reason != "gated":  # gated: the tier chose no sample (adaptive)
            status = "skipped_deadline" if state.stop_reason == "deadline" else "skipped_budget"
            return records.empty_record(row.id, status, None, row.n_prompt)
        answer, votes = self.tier.select(state)
        samples = state.samples
        lps = [s.mean_logprob for s in samples if s.mean_logprob is not None]
        return {
            "id": row.id, "answer": answer, "status": "ok", "error": None, "tier": state.tier or self.tier.name,
            "difficulty": state.difficulty, "bucket": state.bucket,
            "n_samples": len(samples), "prompt_tokens": spent.prompt_tokens,
            "output_tokens": sum(s.output_tokens for s in samples), "cost": spent.cost + scoring.cost,
            "votes": votes, "agreement": _share(votes, answer),
            "verifier_scores": state.scores if self.scorer.scores else None, **scoring.columns(),
            "mean_logprob": sum(lps) / len(lps) if lps else None,
            "stop_reason": state.stop_reason,
            "aborted_samples": sum(s.finish_reason == "abort" for s in samples) if row.keep_going else None,
            "sample_answers": state.answers,
            "sample_output_tokens": [s.output_tokens for s in samples],
            "sample_mean_logprobs": [s.mean_logprob for s in samples],
            "samples": [s.text for s in samples] if self.keep_samples else None,
            "reasoning": [s.reasoning for s in samples] if self.reasoning else None,
            "label_probs": row.label_probs,
        }

    def _answer_room(self, request, n_input: int) -> int:
        """Tokens a thinking request's sample may take in its answer request (its input: the prompt, the
        thought, the end marker; then the answer); 0 without a thinking budget."""
        if not self.forcing:
            return 0
        return n_input + request.max_tokens + self._end_tokens + self.reasoning.answer_max_tokens

    async def _request(self, tag: str, token_ids: list[int], request, check=None):
        """One request's samples; with a thinking budget, each sample whose thought stopped at the end marker
        or ran out of budget is continued (prompt + thought + end marker) for its answer, within the room
        the round reserved for it (``_answer_room``)."""
        first = await self.engine.generate(tag, token_ids, request, check)
        cfg = self.reasoning
        owed = [i for i, x in enumerate(first.samples) if self.forcing and cfg.needs_answer(x)]
        if not owed:
            return first
        room = self._answer_room(request, len(self.engine.input_ids(token_ids, request)))
        asks = {}
        for i in owed:
            ask = cfg.answer_request(request, first.samples[i], i)
            n_in = len(self.engine.input_ids(token_ids, ask))
            limit = min(ask.max_tokens, room - n_in, self.engine.max_model_len - n_in)
            if limit >= 1:
                asks[i] = replace(ask, max_tokens=limit)
        got = await asyncio.gather(*(self.engine.generate(f"{tag}.a{i}", token_ids, a) for i, a in asks.items()))
        answers = {i: g.samples[0] for i, g in zip(asks, got)}
        samples = [merged(x, answers.get(i), cfg.end) for i, x in enumerate(first.samples)]
        return replace(first, prompt_tokens=first.prompt_tokens + sum(g.prompt_tokens for g in got), samples=samples)


class _NoHalt:
    stopped = False


@dataclass
class _Spent:
    """What a row has spent so far (settled in the ledger), for the record of a row that fails
    part way: its rounds' tokens and cost, its judge's share included."""

    cost: float = 0.0
    prompt_tokens: int = 0
    n_samples: int = 0
    output_tokens: int = 0
    state: RowState | None = None
    scoring: RowScorer | None = None

    def add(self, cost: float, results) -> None:
        self.cost += cost
        self.prompt_tokens += sum(r.prompt_tokens for r in results)
        self.n_samples += sum(len(r.samples) for r in results)
        self.output_tokens += sum(r.output_tokens for r in results)

    def error_record(self, row_id: str, error: str) -> dict:
        rec = records.empty_record(row_id, "error", error, self.prompt_tokens if self.state else None)
        if self.scoring is None:
            return rec
        return rec | {"n_samples": self.n_samples, "output_tokens": self.output_tokens,
                      "cost": self.cost + self.scoring.cost} | self.scoring.columns()


@dataclass
class _Row:
    """One row's run: its prompt renderings and sampling fields, its seed, its samples' step check,
    what it spent (``spent``: its state and scoring too) and its label distribution."""

    id: str
    n_prompt: int
    renderings: dict
    sampling: dict | None
    spent: _Spent
    seed: int
    keep_going: Callable | None
    label_probs: dict[str, float] | None = None

    @property
    def state(self) -> RowState:
        return self.spent.state

    @property
    def scoring(self) -> RowScorer:
        return self.spent.scoring


@dataclass
class _Round:
    """One round of a row: its requests, the prompt each reads and its input length, each one's step
    check, and the worst case reserved for it."""

    tag: str
    requests: list
    ids: list
    inputs: list[int]
    checks: list
    worst: float = 0.0


def _share(votes: dict[str, float], answer: str | None) -> float:
    """The winner's share of the votes (0 when nothing voted or all weights are 0)."""
    total = sum(votes.values())
    return votes[answer] / total if answer is not None and total > 0 else 0.0


def _clip(sampling, n_input: int, max_model_len: int):
    """``sampling`` with ``max_tokens`` cut to the context left after ``n_input`` tokens."""
    clipped = max(1, min(sampling.max_tokens, max_model_len - n_input))
    return sampling if clipped == sampling.max_tokens else replace(sampling, max_tokens=clipped)
