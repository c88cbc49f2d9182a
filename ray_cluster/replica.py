"""A replica: one Ray actor hosting one vLLM engine, processing input parts.

Each part's rows run as concurrent coroutines (bounded by ``max_rows_in_flight``)
against the async engine, and the pool sends a replica more than one part at a
time, so the engine stays full across part boundaries. Every request reserves its
worst-case cost first and settles the actual cost after, inside the replica's lease
on the job's ledger (``LedgerClient``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import polars as pl
import ray

from pipelines import io, records
from pipelines.answers import make_extractor
from pipelines.budget import DENIED
from pipelines.judge import JudgeConfig
from pipelines.tiers import RowState, Tier
from pipelines.validation import row_errors
from ray_cluster.engine import EngineSpec, VllmEngine
from ray_cluster.ledger import LedgerClient
from ray_cluster.scoring import Scorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a part needs to know about its job; cheap to pickle, sent with each
    part, so one pool of engines can serve several jobs in turn."""

    output_uri: str
    id_column: str
    prompt_column: str
    gold_column: str | None
    cost_per_token: float
    extractor: str = "full"
    verifier: str | JudgeConfig | None = None
    keep_samples: bool = False
    seed: int = 0
    input_storage: dict[str, Any] = field(default_factory=dict)
    output_storage: dict[str, Any] = field(default_factory=dict)
    row_features: tuple[tuple[str, str], ...] = ()  # (feature name, input column): difficulty signals per row
    abort_failed_steps: bool = False  # stop a sample at its first step the verifier's prefix check fails


@ray.remote
class ReplicaActor:
    """Hosts one engine (two with a judge model of its own); built cheaply, the
    engines themselves start in ``start``."""

    def __init__(self, engine: EngineSpec, name: str, max_rows_in_flight: int | None = None,
                 judge: EngineSpec | None = None):
        self.name = name
        self.engine = VllmEngine(engine)
        self.judge_engine = VllmEngine(judge) if judge is not None else None
        self.max_rows_in_flight = max_rows_in_flight
        self._sem = None
        self._scorers: dict = {}
        self._ledgers: dict[str, list] = {}  # ledger actor -> [its client, parts using it]

    async def start(self) -> dict:
        """Builds the engines inside this worker; returns what the driver needs."""
        if self.engine.max_model_len == 0:
            self.engine.start()
            # A few more rows than the engine batches keep its waiting queue full while rows
            # change over (a row's next request waits on the ledger and on its own bookkeeping).
            self.max_rows_in_flight = self.max_rows_in_flight or math.ceil(1.5 * self.engine.max_num_seqs)
            self._sem = asyncio.Semaphore(self.max_rows_in_flight)
        if self.judge_engine is not None and self.judge_engine.max_model_len == 0:
            self.judge_engine.start()
        return {"max_model_len": self.engine.max_model_len, "max_rows_in_flight": self.max_rows_in_flight,
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def _scoring(self, job: JobContext) -> Scorer:
        """The job's scorer (answer extractor, verifier or judge), built once per replica."""
        key = (job.extractor, job.verifier)
        if key not in self._scorers:
            judge_engine = None
            if isinstance(job.verifier, JudgeConfig):
                judge_engine = self.engine if job.verifier.model is None else self.judge_engine
                if judge_engine is None or (job.verifier.model is not None
                                            and judge_engine.spec.model != job.verifier.model):
                    hosted = self.judge_engine.spec.model if self.judge_engine else None
                    raise ValueError(f"the job's judge model {job.verifier.model!r} is not hosted by this "
                                     f"replica (judge engine: {hosted!r}); start the pool from the job's spec")
            self._scorers[key] = Scorer(make_extractor(job.extractor), job.verifier, judge_engine)
        return self._scorers[key]

    async def process_part(self, part: io.Part, job: JobContext, tier: Tier, ledger) -> dict:
        """Generates for every row of ``part`` with the row program ``tier``, drawing
        on ``ledger``; commits the part and returns its summary."""
        t0 = time.monotonic()
        cfg = job
        feats = dict(cfg.row_features)
        cols = [cfg.id_column, cfg.prompt_column] + ([cfg.gold_column] if cfg.gold_column else [])
        frame = pl.from_arrow(io.read_part(part, cols + sorted(set(feats.values()) - set(cols)), cfg.input_storage))
        ids = frame[cfg.id_column].cast(pl.String).to_list()
        prompts = frame[cfg.prompt_column].to_list()
        errors = row_errors(frame[cfg.prompt_column]).to_list()
        golds = frame[cfg.gold_column].cast(pl.String).to_list() if cfg.gold_column else [None] * len(ids)

        features = frame.select(pl.col(c).cast(pl.Float64).alias(k) for k, c in feats.items()).to_dicts() \
            if feats else [{}] * len(ids)
        # One tokenizer call for the part's valid prompts (per-row calls cost the event loop).
        valid = [i for i, e in enumerate(errors) if not e]
        token_ids: list = [None] * len(ids)
        for i, t in zip(valid, self.engine.tokenize_many([prompts[i] for i in valid])):
            token_ids[i] = t
        async with self._ledger_client(ledger) as client:
            recs = await asyncio.gather(*(self._run_row(job, tier, client, rid, p, e, f, t)
                                          for rid, p, e, f, t in zip(ids, prompts, errors, features, token_ids)))
            await client.drain()  # every settlement is in the ledger before the part commits
        for r, g in zip(recs, golds):
            if g is not None:  # rows without an answer (skipped, error) count as wrong
                r["correct"] = r.get("answer") is not None and r["answer"] == g.strip()
        table = records.to_table(recs)
        summary = summarize(part.part_id, table, time.monotonic() - t0)
        io.write_part(table, cfg.output_uri, part.part_id, summary, cfg.output_storage)
        return summary

    @contextlib.asynccontextmanager
    async def _ledger_client(self, ledger):
        """The replica's client of a job's ledger, shared by the job's parts on this replica
        (one lease); its lease goes back once no part of the job is running here. A part
        that fails leaves it to the pool, which releases a lost replica's reservations."""
        key = ledger._actor_id.hex()
        entry = self._ledgers.setdefault(key, [LedgerClient(ledger, self.name), 0])
        entry[1] += 1
        ok = False
        try:
            yield entry[0]
            ok = True
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._ledgers[key]
                if ok:
                    await entry[0].close()

    async def _run_row(self, job: JobContext, tier: Tier, ledger, row_id: str, prompt: str | None,
                       error: str | None, features: dict[str, float | None], token_ids: list[int] | None) -> dict:
        if error:
            return records.empty_record(row_id, "error", error)
        async with self._sem:
            try:
                return await self._generate_row(job, tier, ledger, row_id, prompt, features, token_ids)
            except Exception as exc:
                if self.engine.dead:
                    raise  # the replica is lost: the pool retries the part elsewhere
                log.exception("row %s failed", row_id)
                return records.empty_record(row_id, "error", f"{type(exc).__name__}: {exc}")

    async def _generate_row(self, cfg: JobContext, tier: Tier, ledger, row_id: str, prompt: str,
                            features: dict[str, float | None], token_ids: list[int]) -> dict:
        engine = self.engine
        scorer = self._scoring(cfg)
        extract = scorer.extract
        n_prompt = len(token_ids)
        if n_prompt >= engine.max_model_len:
            return records.empty_record(
                row_id, "error", f"prompt has {n_prompt} tokens; the model's context is {engine.max_model_len}",
                n_prompt)
        state = RowState(row_id, n_prompt, features={k: v for k, v in features.items() if v is not None})
        cost, prompt_spent = 0.0, 0
        # A seed from the row id makes reruns reproducible whatever replica or part size
        # serves the row. vLLM seeds sample i of a request with seed + i, so each round
        # starts past the samples already drawn: every sample of the row has its own seed.
        seed = (cfg.seed * 1_000_003 + zlib.crc32(row_id.encode()) * 1_009) % 2**62
        scoring = scorer.for_row(row_id, prompt, seed, cfg.cost_per_token)
        keep_going = partial(scorer.prefix_ok, prompt) if cfg.abort_failed_steps and scorer.prefix_ok else None
        while (asked := tier.next_request(state, seed + len(state.samples))) is not None:
            requests = asked if isinstance(asked, list) else [asked]
            inputs = [len(engine.input_ids(token_ids, r)) for r in requests]  # prompt + prefix tokens
            requests = [_clip(r, k, engine.max_model_len) for r, k in zip(requests, inputs)]
            # The worst case of this round: each request's input plus n samples of max_tokens.
            # A round is reserved whole: if it cannot be, the row stops with what it has.
            # Samples that stop at a failed step are requests of their own: each pays its input.
            checks = [keep_going if not r.top_logprobs else None for r in requests]
            worst = sum(k * (r.n if c else 1) + r.n * r.max_tokens
                        for r, k, c in zip(requests, inputs, checks)) * cfg.cost_per_token
            if await ledger.reserve(worst) == DENIED:
                state.stop_reason = "budget"
                break
            tag = f"{row_id}#{state.rounds}"
            outcomes = await asyncio.gather(
                *(engine.generate(tag if len(requests) == 1 else f"{tag}.{i}", token_ids, r, c)
                  for i, (r, c) in enumerate(zip(requests, checks))), return_exceptions=True)
            results = [o for o in outcomes if not isinstance(o, BaseException)]
            actual = sum(r.prompt_tokens + r.output_tokens for r in results) * cfg.cost_per_token
            # One settlement for the round: what did run is spent, the rest returns.
            await ledger.settle(worst, actual)
            cost += actual
            prompt_spent += sum(r.prompt_tokens for r in results)
            if failed := next((o for o in outcomes if isinstance(o, BaseException)), None):
                if engine.dead:
                    raise failed  # the replica is lost: the pool retries the part elsewhere
                rec = records.empty_record(row_id, "error", f"generation failed: {failed}", prompt_spent)
                return rec | {"n_samples": len(state.samples) + sum(len(r.samples) for r in results),
                              "output_tokens": sum(s.output_tokens for s in state.samples)
                              + sum(r.output_tokens for r in results),
                              "cost": cost + scoring.cost} | scoring.columns()
            # Verifiers score the whole trace: a request's prefix, then its sample. A judge's
            # requests reserve and settle their own cost (scoring.cost).
            scores = [await scoring.score([replace(s, text=q.prefix + s.text) for s in r.samples]
                                          if q.prefix else r.samples, ledger)
                      for q, r in zip(requests, results)]
            tier.absorb(state, requests, results, extract, scores)
        if not state.samples and state.stop_reason != "gated":  # gated: the tier chose no sample (adaptive)
            return records.empty_record(row_id, "skipped_budget", None, n_prompt)
        answer, votes = tier.select(state)
        lps = [s.mean_logprob for s in state.samples if s.mean_logprob is not None]
        return {
            "id": row_id, "answer": answer, "status": "ok", "error": None, "tier": state.tier or tier.name,
            "difficulty": state.difficulty, "bucket": state.bucket,
            "n_samples": len(state.samples), "prompt_tokens": prompt_spent,
            "output_tokens": sum(s.output_tokens for s in state.samples), "cost": cost + scoring.cost,
            "votes": votes, "agreement": _share(votes, answer),
            "verifier_scores": state.scores if scorer.scores else None, **scoring.columns(),
            "mean_logprob": sum(lps) / len(lps) if lps else None,
            "stop_reason": state.stop_reason,
            "aborted_samples": sum(s.finish_reason == "abort" for s in state.samples) if keep_going else None,
            "sample_answers": state.answers,
            "sample_output_tokens": [s.output_tokens for s in state.samples],
            "sample_mean_logprobs": [s.mean_logprob for s in state.samples],
            "samples": [s.text for s in state.samples] if cfg.keep_samples else None,
        }

    async def shutdown(self) -> None:
        self.engine.shutdown()


def _share(votes: dict[str, float], answer: str | None) -> float:
    """The winner's share of the votes (0 when nothing voted or all weights are 0)."""
    total = sum(votes.values())
    return votes[answer] / total if answer is not None and total > 0 else 0.0


def _clip(sampling, n_input: int, max_model_len: int):
    """``sampling`` with ``max_tokens`` cut to the context left after ``n_input`` tokens."""
    return replace(sampling, max_tokens=max(1, min(sampling.max_tokens, max_model_len - n_input)))


def summarize(part_id: int, table, seconds: float) -> dict:
    """Per-part counts merged by the driver into the run report."""
    df = pl.from_arrow(table.select(["status", "prompt_tokens", "output_tokens", "cost", "correct", "n_samples",
                                     "judge_tokens"]))
    status = dict(df.group_by("status").len().iter_rows())
    judge = {}
    if df["judge_tokens"].is_not_null().any():
        issues: dict[str, int] = {}
        for row in table.column("judge_issues").to_pylist():
            for reason, count in row or ():
                issues[reason] = issues.get(reason, 0) + count
        judge = {"judge_tokens": int(df["judge_tokens"].sum()), "judge_issues": issues}
    return judge | {
        "part_id": part_id, "rows": df.height, "status": {s: int(status.get(s, 0)) for s in records.STATUSES},
        "prompt_tokens": int(df["prompt_tokens"].fill_null(0).sum()),
        "output_tokens": int(df["output_tokens"].sum()), "cost": float(df["cost"].sum()),
        "samples": int(df["n_samples"].sum()),
        "correct": int(df["correct"].fill_null(False).sum()), "graded": int(df["correct"].is_not_null().sum()),
        "seconds": seconds,
    }
