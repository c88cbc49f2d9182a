"""The job spec: one typed, validated description of a tierwise run.

YAML holds values; this module holds defaults and their meaning. Validation does
no I/O: a bad spec fails here, naming the field and the rule, before any work.
"""

from __future__ import annotations

import logging
import os
import re
import string
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from tierwise.pipelines.data.errors import TierwiseError
from tierwise.pipelines.plan.objectives import Objective
from tierwise.pipelines.plan.rules import AdaptiveConfig

log = logging.getLogger(__name__)


class SpecError(TierwiseError):
    """The job spec is invalid; the message names each bad field and its rule."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    path: str = Field(description="Parquet or JSONL (.jsonl/.ndjson, OpenAI batch files too) file or directory; "
                                  "local path or s3:// URI")
    id_column: str = "id"
    prompt_column: str = "prompt"
    messages_column: str | None = Field(None, description="a column of chat messages (list of {role, content}) "
                                        "sent instead of the prompt column (see PromptSpec)")
    gold_column: str | None = Field(None, description="used only to score the run, never by a policy")
    sampling_columns: dict[Literal["max_tokens", "temperature", "top_p"], str] = Field(
        default_factory=dict, description="per-row sampling from input columns (an OpenAI batch file's "
        "max_tokens / temperature), in place of `sampling`'s for that row; a null cell keeps the spec's")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec / s3fs")


# What ``output.path`` may hold: ``{date}`` (the run's UTC date, YYYY-MM-DD) and ``{run_id}``.
OUTPUT_PLACEHOLDERS = ("date", "run_id")


class OutputSpec(_Strict):
    path: str = Field(description="directory (local or s3://) for parts and run_report.json; may hold {date} "
                                  "and {run_id} (see resolve_output_path), e.g. s3://bucket/answers/{date}/")
    part_rows: int = Field(256, ge=1, description="rows per committed part (the unit of resume)")
    keep_samples: bool = Field(False, description="store every sampled text in the `samples` column")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as exc:
            raise ValueError(f"output.path {v!r}: {exc} (a literal brace is written {{{{ or }}}})") from None
        if bad := sorted(names - set(OUTPUT_PLACEHOLDERS)):
            raise ValueError(f"output.path {v!r}: unknown placeholder(s) {bad}; known: "
                             f"{{date}}, {{run_id}}")
        return v


class ModelSpec(_Strict):
    path: str = Field("embedded:tiny-adder", description="embedded:NAME, a local model dir, or a HF id")
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=16)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm AsyncEngineArgs")

    @field_validator("path")
    @classmethod
    def _known_embedded(cls, v: str) -> str:
        return check_embedded(v)


def check_embedded(model: str) -> str:
    """An ``embedded:NAME`` model must be one the package ships (no I/O: the names are a table)."""
    if model.startswith("embedded:"):
        from tierwise.pipelines.data.errors import unknown_name
        from tierwise.ray_cluster.engine import EMBEDDED_MODELS

        name = model.split(":", 1)[1]
        if name not in EMBEDDED_MODELS:
            raise ValueError(unknown_name("embedded model", name, sorted(EMBEDDED_MODELS)))
    return model


class ReplicaSpec(_Strict):
    count: int = Field(1, ge=1, description="vLLM replicas (one per GPU or tensor-parallel group)")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (tensor_parallel_size on GPU)")
    max_rows_in_flight: int | None = Field(
        None, ge=1, description="rows a replica keeps in its engine at once (default: 1.5 x the engine's "
                                "max_num_seqs, so its queue never runs dry while rows change over)")
    parts_per_replica: int | None = Field(
        None, ge=1, description="parts a replica holds at once (default: as many as keep its rows in flight "
                                "full while the part it was sent first finishes and commits)")
    max_part_retries: int = Field(3, ge=0)
    start_timeout_s: float = Field(
        600, gt=0, description="most seconds to wait for the cluster to free or add (autoscaler) the replicas' "
                               "resources; replicas no node of the cluster can ever host are refused at once")
    max_engine_restarts: int = Field(
        2, ge=0, description="times a replica restarts its engine in place after it dies (EngineCore killed, "
                             "a CUDA error or OOM) and re-sends its lost requests; past that the replica is "
                             "replaced and its parts retried elsewhere")


class PromptSpec(_Strict):
    """How a row becomes the model's input: the prompt column (or ``template`` over input columns) as the
    user's turn after ``system_prompt``, or the row's ``input.messages_column``, rendered by the model's chat
    template as vLLM's chat entry point renders it. Token counts and the budget see the rendered prompt."""

    chat: bool | None = Field(None, description="true: apply the chat template; false: send the raw prompt "
                              "text; null: chat when the model has a chat template (or chat_template is set)")
    system_prompt: str | None = Field(None, min_length=1, description="a system turn before each row's turn")
    template: str | None = Field(None, min_length=1, description="the user's turn from input columns, e.g. "
                                 "'Review: {text}\\nLabel:' (replaces the prompt column)")
    chat_template: str | None = Field(None, min_length=1, description="a Jinja chat template (text or a file "
                                      "path) instead of the model's own")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra variables of the chat "
                                                 "template, e.g. {enable_thinking: false}")

    @field_validator("template")
    @classmethod
    def _plain_fields(cls, v: str | None) -> str | None:
        if v is not None:
            template_fields(v)
        return v

    @model_validator(mode="after")
    def _chat_settings_need_chat(self):
        used = [f for f in ("system_prompt", "chat_template", "chat_template_kwargs") if getattr(self, f)]
        if self.chat is False and used:
            raise ValueError(f"prompt.{used[0]} needs a chat template: it does not apply with prompt.chat false")
        return self


def template_fields(template: str) -> list[str]:
    """The input columns a ``prompt.template`` reads (``{column}`` fields; ``{{``/``}}`` are literal braces).

    Raises:
        ValueError: a malformed template, or a field with an index, attribute, conversion or format.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"prompt.template {template!r}: {exc} (a literal brace is written {{{{ or }}}})") from None
    fields = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or spec or conv or not re.fullmatch(r"[^.\[\]!:]+", name):
            raise ValueError(f"prompt.template field {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
                             " must name an input column, as {column}")
        fields.append(name)
    if not fields:
        raise ValueError("prompt.template reads no input column ({column} fields)")
    return list(dict.fromkeys(fields))


class StructuredSpec(_Strict):
    """Constrained decoding through vLLM's structured outputs (xgrammar): exactly one of the three."""

    choice: list[str] | None = Field(None, description="the answer is one of these labels")
    json_schema: dict[str, Any] | None = Field(None, description="the answer is JSON valid under this schema "
                                               "(read a field with answer_extractor json:FIELD)")
    regex: str | None = Field(None, min_length=1, description="the answer matches this regular expression")

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("choice", "json_schema", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"structured needs exactly one of choice, json_schema, regex (got {given or 'none'})")
        if self.choice is not None:
            if not self.choice:
                raise ValueError("structured.choice is empty: give at least one label")
            if any(not c for c in self.choice) or len(set(self.choice)) != len(self.choice):
                raise ValueError("structured.choice labels must be non-empty and distinct")
        return self

    def constraint(self) -> tuple[str, str]:
        """``(kind, value)`` as ``SamplingConfig.structured`` carries it (the value JSON-encoded)."""
        import json

        kind = next(k for k in ("choice", "json_schema", "regex") if getattr(self, k) is not None)
        return kind, json.dumps(getattr(self, kind), sort_keys=True)


class ReasoningSpec(_Strict):
    """A reasoning model's output: the thought between the markers is split from the answer (answers are
    extracted after the end marker; the output's ``reasoning`` column keeps the thoughts), and with
    ``max_thinking_tokens`` a thought that runs out is closed with the end marker and a second request asks
    for the answer (budget forcing) instead of the sample being cut."""

    start: str | None = Field("<think>", description="the marker that opens a thought (null: none; the model "
                              "thinks from its first token, or the chat template opened the thought)")
    end: str = Field("</think>", min_length=1, description="the marker that closes a thought")
    max_thinking_tokens: int | None = Field(None, ge=1, description="the thought's budget per sample; null: "
                                            "no budget (samples are only split)")
    answer_max_tokens: int | None = Field(None, ge=1, description="tokens of the answer request after a "
                                          "thought (default: sampling.max_tokens)")

    def config(self, max_tokens: int):
        """The replica's ``tierwise.pipelines.tiers.reasoning.ReasoningConfig`` (``max_tokens``: the job's sampling.max_tokens)."""
        from tierwise.pipelines.tiers.reasoning import ReasoningConfig
        return ReasoningConfig(start=self.start or None, end=self.end, max_thinking_tokens=self.max_thinking_tokens,
                               answer_max_tokens=self.answer_max_tokens or max_tokens)


class SamplingSpec(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0
    logprobs: bool | None = Field(None, description="record each sample's mean token log-prob: true always, "
                                  "false never, null (default) where a policy reads it (calibration, the "
                                  "adaptive pilot, `tierwise sample`)")


class BudgetSpec(_Strict):
    amount: float = Field(ge=0, description="hard cap on total spend, in `unit`")
    unit: Literal["tokens", "gpu_hours", "usd"] = "tokens"
    tokens_per_gpu_hour: float | None = Field(None, gt=0, description="throughput that converts tokens to GPU-hours "
                                              "(metering: measured: the conversion until replica time is measured)")
    usd_per_gpu_hour: float | None = Field(None, gt=0)
    metering: Literal["tokens", "measured"] = Field(
        "tokens", description="gpu_hours / usd: tokens converts tokens through tokens_per_gpu_hour; measured "
                              "meters the seconds each replica holds its devices generating for the job (times "
                              "its device count; 1 per CPU replica), attributed to rows by their weighted tokens")
    prompt_token_weight: float = Field(1.0, ge=0, description="what a prompt token counts for beside a generated "
                                       "one (1: the same)")
    deadline: datetime | None = Field(None, description="ISO wall-clock time (UTC unless it names a zone) the job "
                                      "must finish by; rows it cannot reach are written skipped_deadline")
    max_wall_s: float | None = Field(None, gt=0, description="seconds this invocation may take (as deadline)")

    @field_validator("deadline")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @model_validator(mode="after")
    def _conversion(self):
        if self.unit != "tokens" and self.tokens_per_gpu_hour is None:
            raise ValueError(f"budget.tokens_per_gpu_hour is required when budget.unit is {self.unit!r}")
        if self.unit == "usd" and self.usd_per_gpu_hour is None:
            raise ValueError("budget.usd_per_gpu_hour is required when budget.unit is 'usd'")
        if self.metering == "measured" and self.unit == "tokens":
            raise ValueError("budget.metering 'measured' meters replica time: it needs budget.unit gpu_hours or usd")
        return self


class SearchSpec(_Strict):
    """Step-level beam search (``policy.tier: search``), scored by the job's verifier."""

    beam_width: int = Field(4, ge=1, le=64, description="partial traces kept after each step")
    expansions: int = Field(4, ge=1, le=64, description="continuations asked of each kept trace per step")
    max_steps: int = Field(32, ge=1, description="steps before the kept traces finish as they are")
    step_stop: str = Field("\n", min_length=1, description="the string that ends a step (kept in the text)")
    allocate: Literal["by_score", "even"] = Field(
        "by_score", description="by_score: each step's beam_width x expansions continuations are shared by the "
                                "kept traces in proportion to their verifier weight; even: expansions each")


class UniformPolicy(_Strict):
    """The same compute for every row, in one of three tiers.

    ``sample``: ``n`` samples, majority vote (n=1: one greedy pass) or verifier-weighted
    vote; ``think``: the same with ``think_max_tokens`` per sample; ``search``: step-level
    beam search (``search``), always answered by a verifier-weighted vote over finished
    traces, each trace held to ``sampling.max_tokens``.
    """

    kind: Literal["uniform"] = "uniform"
    tier: Literal["sample", "think", "search"] = "sample"
    n: int = Field(1, ge=1, le=256)
    select: Literal["majority", "verifier"] = "majority"
    think_max_tokens: int | None = Field(None, ge=1, description="tokens per sample in tier 'think' "
                                         "(default: 4 x sampling.max_tokens)")
    search: SearchSpec | None = Field(None, description="beam search settings of tier 'search'")
    abort_failed_steps: bool = Field(
        False, description="stop each sample at its first step the verifier's prefix check fails (a step "
                           "verifier such as arithmetic_steps); off by default: the plain baseline pays whole samples")

    @property
    def search_spec(self) -> SearchSpec:
        """The search settings, defaults filled in."""
        return self.search or SearchSpec()

    @model_validator(mode="after")
    def _tier_fields(self):
        if self.think_max_tokens is not None and self.tier != "think":
            raise ValueError("policy.think_max_tokens applies only with policy.tier 'think'")
        if self.search is not None and self.tier != "search":
            raise ValueError("policy.search applies only with policy.tier 'search'")
        if self.tier == "search" and self.n != 1:
            raise ValueError("policy.n does not apply to policy.tier 'search' "
                             "(use policy.search.beam_width and policy.search.expansions)")
        return self


class DifficultySpec(_Strict):
    """How rows' difficulty is estimated: one logistic model over the signals of the chosen estimators,
    fitted on the calibration rows' outcomes (each row's signals are free or already paid for: the pilot
    samples are the row's first round)."""

    estimators: list[Literal["pilot", "features", "column", "learned"]] = Field(
        default_factory=lambda: list(AdaptiveConfig().estimators), min_length=1,
        description="pilot: the pilot samples' agreement, log-prob, length, verifier score; features: prompt "
                    "length and `feature_columns`; column: the user's `column`; learned: the model saved by an "
                    "earlier run (`learned`) instead of fitting one")
    feature_columns: list[str] = Field(default_factory=list, description="numeric input columns (features)")
    column: str | None = Field(None, description="a numeric input column of known difficulty (column)")
    learned: str | None = Field(None, description="difficulty_model.json (or calibration.json) of an earlier run")

    @model_validator(mode="after")
    def _each_estimator_has_its_input(self):
        est = set(self.estimators)
        if "column" in est and not self.column:
            raise ValueError("policy.difficulty.column is required by the 'column' estimator")
        if self.column and "column" not in est:
            raise ValueError("policy.difficulty.column is set but 'column' is not among the estimators")
        if self.feature_columns and "features" not in est:
            raise ValueError("policy.difficulty.feature_columns needs the 'features' estimator")
        if ("learned" in est) != bool(self.learned):
            raise ValueError("the 'learned' estimator and policy.difficulty.learned (a path) go together")
        if est == {"learned"}:
            raise ValueError("'learned' needs the estimators whose signals the saved model reads")
        return self


class AdaptivePolicy(_Strict):
    """tierwise's policy: calibrate on a slice, estimate each row's difficulty from a
    cheap pilot, and spend the rest of the budget where the calibration curves say
    extra samples buy the objective (early-stopping rows whose samples agree).

    Objectives: ``accuracy`` (the selected answer is right), ``coverage`` (some sample is right),
    ``verified_yield`` (verified samples per row, up to ``yield_cap``: rows stop once that many pass the
    job's ``verifier``, which it requires)."""

    kind: Literal["adaptive"] = "adaptive"
    planner: Literal["sequential", "calibrated"] = Field(
        "calibrated", description="sequential: the label-free sequential policy (tierwise.pipelines.plan.sequential; rows "
        "sample one at a time while their gain per cost clears a price the pacer sets per part), the one "
        "`tierwise replay` runs; calibrated: a gold-calibrated plan of buckets and stop rules (needed for "
        "ladder rungs, calibration_from and learned difficulty models)")
    objective: Objective = "accuracy"
    yield_cap: int = Field(4, ge=1, description="verified_yield: verified samples worth keeping per row "
                                                "(score min(verified, cap) / cap); other objectives ignore it")
    select: Literal["majority", "verifier"] = "majority"
    calibration_fraction: float = Field(0.15, gt=0, lt=1, description="most of the input's parts run as calibration")
    calibration_budget_share: float = Field(0.3, gt=0, le=1, description="most of the budget calibration may take")
    calibration_rows: int | None = Field(
        160, ge=1, description="calibration stops once this many rows are calibrated (curves for 5 buckets need "
                               "about 30 rows each; more only costs); null: the fraction and share alone decide")
    calibration_samples: int = Field(
        12, ge=2, le=256, description="most samples per calibration row (K; the plan's largest sample cap). With "
        "a verifier, accuracy and coverage rows stop at a verified sample, so K=12 costs less than 8 did without")
    pilot_samples: int | None = Field(None, ge=1, le=16, description="first-round samples that estimate "
                                      "difficulty (default: 1 for coverage with a verifier, else 2)")
    round_size: int = Field(2, ge=1, description="samples per later round")
    n_buckets: int = Field(5, ge=1, le=20)
    difficulty: DifficultySpec = DifficultySpec()
    price: float | None = Field(None, gt=0, description="score per budget unit below which compute is not bought")
    replan_every_parts: int = Field(1, ge=1, description="pacing: re-allocate after this many parts")
    calibration_from: str | None = Field(
        None, description="samples table of an earlier run (its calibration_samples.parquet, or any "
                          "`tierwise sample` output): plan from it and skip this run's calibration")
    ladder: list[Literal["skip", "vote", "best_of_n", "think", "search"]] | None = Field(
        None, min_length=1,
        description="the rungs a bucket may get after its pilot: skip (nothing more; always offered), the "
                    "sampling rung (vote, or best_of_n with select 'verifier': stop rules x sample caps), "
                    "think (think_samples samples of think_max_tokens) and search (step-level beam search, "
                    "`search`); think and search are measured on rung_calibration_rows calibration rows. "
                    "null: skip and the sampling rung")
    think_max_tokens: int | None = Field(None, ge=1, description="tokens per sample of the 'think' rung "
                                         "(default: 4 x sampling.max_tokens)")
    think_samples: int = Field(1, ge=1, le=64, description="samples of the 'think' rung (1: one greedy pass)")
    rung_chat_template_kwargs: dict[Literal["think"], dict[str, Any]] | None = Field(
        None, description="a rung's own chat template variables over prompt.chat_template_kwargs, e.g. "
        "{think: {enable_thinking: true}} with prompt.chat_template_kwargs {enable_thinking: false}: a hybrid "
        "model's pilot and sampling rungs run in its short mode and the think rung in its long one; each row is "
        "rendered once per rung that has its own")
    search: SearchSpec | None = Field(None, description="beam search settings of the 'search' rung")
    max_samples_per_row: int | None = Field(
        None, ge=2, le=1024, description="most samples a row may draw when budget is left past every bucket's "
        "measured peak: buckets with unsolved rows then sample past calibration_samples, unmeasured, with budget "
        "that would otherwise go unspent (null: 4 x calibration_samples; calibration_samples: never past K)")
    abort_failed_steps: bool | None = Field(
        None, description="stop each sample at its first step the verifier's prefix check fails: no token a "
                          "failed trace still generates can make it verify (null: on when the job's verifier "
                          "has a prefix check, as arithmetic_steps has)")
    label_confidence: float | None = Field(
        None, gt=0, le=1, description="structured choice only: a row's first pass draws one sample, and a row "
        "whose first-token label distribution gives its top label at least this probability stops there (a "
        "confident first pass needs no second sample; stop_reason 'confident'); null: every row draws its pilot")
    rung_calibration_rows: int = Field(
        32, ge=4, description="calibration rows on which each think/search rung is run and measured (cost, "
                              "score): a sub-slice of the calibration rows, to bound what the measuring costs")

    @model_validator(mode="after")
    def _sequential_supports(self):
        if self.planner == "sequential":
            needs = [n for n, on in (("ladder", self.ladder), ("calibration_from", self.calibration_from),
                                     ("difficulty.estimators: learned", "learned" in self.difficulty.estimators))
                     if on]
            if needs:
                raise ValueError(f"policy.planner 'sequential' does not take {', '.join(needs)} (use planner: "
                                 "calibrated)")
        return self

    @model_validator(mode="after")
    def _pilot_fits(self):
        if self.pilot_samples is not None and self.pilot_samples > self.calibration_samples:
            raise ValueError("policy.pilot_samples must not exceed policy.calibration_samples")
        if self.max_samples_per_row is not None and self.max_samples_per_row < self.calibration_samples:
            raise ValueError("policy.max_samples_per_row must be at least policy.calibration_samples")
        return self

    @property
    def sample_cap(self) -> int:
        """``max_samples_per_row``, default filled in."""
        return self.max_samples_per_row or 4 * self.calibration_samples

    @property
    def rungs(self) -> tuple[str, ...]:
        """The ladder's rungs beyond the pilot's samples (think, search), in ladder order."""
        return tuple(r for r in self.ladder or () if r in ("think", "search"))

    @property
    def sampling_rung(self) -> bool:
        """Whether buckets may sample more after the pilot (vote / best_of_n stop rules and caps)."""
        return self.ladder is None or bool({"vote", "best_of_n"} & set(self.ladder))

    @property
    def search_spec(self) -> SearchSpec:
        """The search rung's settings, defaults filled in."""
        return self.search or SearchSpec()

    @model_validator(mode="after")
    def _ladder_rules(self):
        ladder = self.ladder or []
        if dup := sorted({r for r in ladder if ladder.count(r) > 1}):
            raise ValueError(f"policy.ladder lists {dup} more than once")
        if self.ladder is not None and set(ladder) <= {"skip"}:
            raise ValueError("policy.ladder needs a rung beyond 'skip' (vote, best_of_n, think or search)")
        if "best_of_n" in ladder and self.select != "verifier":
            raise ValueError("policy.ladder: 'best_of_n' is the verifier-weighted vote and needs policy.select "
                             "'verifier' (the majority vote's rung is 'vote')")
        if "vote" in ladder and self.select == "verifier":
            raise ValueError("policy.ladder: with policy.select 'verifier' the sampling rung is 'best_of_n', "
                             "not 'vote'")
        if (self.think_max_tokens is not None or self.think_samples != 1) and "think" not in ladder:
            raise ValueError("policy.think_max_tokens / policy.think_samples apply only with 'think' in "
                             "policy.ladder")
        if missing := sorted(set(self.rung_chat_template_kwargs or {}) - set(self.rungs)):
            raise ValueError(f"policy.rung_chat_template_kwargs names rungs {missing} that policy.ladder does not have")
        if self.search is not None and "search" not in ladder:
            raise ValueError("policy.search applies only with 'search' in policy.ladder")
        if self.rungs and self.calibration_from:
            raise ValueError(f"policy.ladder rungs {list(self.rungs)} are measured on this run's calibration "
                             "rows: they cannot be planned from policy.calibration_from")
        return self


# Judge prompts used when the spec gives none: plain instructions any instruction-tuned
# judge follows; a reward model or a judge trained on a format needs its own template.
DEFAULT_TEMPLATES = {
    "agree": "{prompt}",
    "yes_prob": "Question:\n{prompt}\n\nProposed answer:\n{response}\n\n"
                "Is the proposed answer correct? Answer Yes or No.\nAnswer:",
    "score": "Question:\n{prompt}\n\nProposed answer:\n{response}\n\n"
             "Rate the proposed answer's correctness from 0 to {score_max}. End with a line 'Score: N'.\n",
}


class JudgeSpec(_Strict):
    """An LLM judge (or reward model) as the verifier, scored by a vLLM replica.

    Its requests are paid from the budget like generation (each reserves its worst
    case first); the row's ``judge_tokens`` and ``cost`` include them.
    """

    kind: Literal["llm_judge"]
    mode: Literal["yes_prob", "score", "agree"] = Field(
        description="yes_prob: P(yes-token) of one judge token; score: a number the judge writes, over "
                    "score_max; agree: the judge solves the prompt, a sample scores 1 if its answer matches")
    model: str | None = Field(None, description="null: the job's own model on the same engine; else "
                              "embedded:NAME, a local model dir or a HF id, on a second engine per replica")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra AsyncEngineArgs of the "
                                          "judge's own engine (e.g. max_model_len)")
    template: str | None = Field(None, description="judge prompt with {prompt} and (yes_prob, score) "
                                 "{response}; default per mode (agree: '{prompt}')")
    reason: bool = Field(False, description="score mode: let the judge reason before its score line")
    max_tokens: int | None = Field(None, ge=1, description="judge tokens per request; default: score 16 "
                                   "(256 with reason), agree the job's sampling.max_tokens, yes_prob 1")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (0: greedy verdicts)")
    top_logprobs: int = Field(20, ge=1, description="yes_prob: first-token log-probabilities read "
                              "(vLLM's max_logprobs, 20 by default, caps it)")
    yes_tokens: list[str] = Field(["Yes", "yes"], min_length=1, description="yes_prob: tokens meaning yes, "
                                  "compared with whitespace stripped")
    score_pattern: str = Field(r"Score:\s*([0-9.]+)", description="score: regex whose first group is the "
                               "number; the last match counts")
    score_max: float = Field(10.0, gt=0, description="score: the top of the scale (scores are divided by it)")

    @field_validator("model")
    @classmethod
    def _known_embedded(cls, v: str | None) -> str | None:
        return v if v is None else check_embedded(v)

    @model_validator(mode="after")
    def _mode_rules(self):
        t = self.template if self.template is not None else DEFAULT_TEMPLATES[self.mode]
        if "{prompt}" not in t:
            raise ValueError("verifier.template must contain {prompt}")
        if self.mode != "agree" and "{response}" not in t:
            raise ValueError(f"verifier.template must contain {{response}} in mode {self.mode!r} "
                             "(the judge must see the response it scores)")
        if self.mode == "agree" and "{response}" in t:
            raise ValueError("verifier.template must not contain {response} in mode 'agree' "
                             "(the judge solves the prompt on its own)")
        if self.reason and self.mode != "score":
            raise ValueError(f"verifier.reason applies only to mode 'score', not {self.mode!r}")
        if self.mode == "yes_prob" and self.max_tokens not in (None, 1):
            raise ValueError("verifier.max_tokens must be 1 (or unset) in mode 'yes_prob': it reads one token")
        if any(not y.strip() for y in self.yes_tokens):
            raise ValueError("verifier.yes_tokens must not hold empty or whitespace-only tokens")
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as exc:
            raise ValueError(f"verifier.score_pattern is not a valid regex: {exc}") from None
        if groups < 1:
            raise ValueError("verifier.score_pattern needs a capture group (the number)")
        return self

    def config(self, job_model: str, job_max_tokens: int):
        """The replica's ``tierwise.pipelines.tiers.judge.JudgeConfig``, defaults resolved. A judge model
        equal to the job's is served by the job's engine."""
        from tierwise.pipelines.tiers.judge import JudgeConfig

        max_tokens = self.max_tokens or {"yes_prob": 1, "agree": job_max_tokens,
                                         "score": 256 if self.reason else 16}[self.mode]
        template = self.template
        if template is None:
            template = DEFAULT_TEMPLATES[self.mode].replace("{score_max}", f"{self.score_max:g}")
        return JudgeConfig(
            mode=self.mode, template=template,
            model=None if self.model in (None, job_model) else self.model, max_tokens=max_tokens,
            temperature=self.temperature, top_logprobs=self.top_logprobs, yes_tokens=tuple(self.yes_tokens),
            score_pattern=self.score_pattern, score_max=self.score_max)


class ReferenceSpec(_Strict):
    """A reference-answer verifier: a sample scores 1 when its answer matches the row's reference (an
    input column the verifier reads, unlike ``input.gold_column``, which only scores the run), else 0.
    Rejection sampling against it: the adaptive policy's ``verified_yield`` / ``coverage`` objectives,
    and ``tierwise export-traces`` keeps the samples that pass."""

    kind: Literal["reference"]
    column: str = Field(min_length=1, description="the input column holding each row's reference answer")
    match: Literal["math", "exact", "choice"] = Field(
        "exact", description="math: equivalent under math-verify (the sample's last \\boxed{}, else its "
                             "extracted answer); exact: equal stripped strings; choice: the same A-E letter")

    def config(self):
        """The replica's ``tierwise.pipelines.tiers.verifiers.ReferenceConfig``."""
        from tierwise.pipelines.tiers.verifiers import ReferenceConfig
        return ReferenceConfig(column=self.column, match=self.match)


def _verifier_kind(value) -> str:
    """A string names a verifier function; a mapping of kind ``reference`` is a reference check, any
    other mapping a judge."""
    if isinstance(value, str):
        return "name"
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "reference" if kind == "reference" else "llm_judge"


Verifier = Annotated[Annotated[str, Tag("name")] | Annotated[JudgeSpec, Tag("llm_judge")]
                     | Annotated[ReferenceSpec, Tag("reference")], Discriminator(_verifier_kind)]


def _policy_kind(value) -> str:
    """A policy without ``kind`` is uniform."""
    return value.get("kind", "uniform") if isinstance(value, dict) else getattr(value, "kind", "uniform")


Policy = Annotated[Annotated[UniformPolicy, Tag("uniform")] | Annotated[AdaptivePolicy, Tag("adaptive")],
                   Discriminator(_policy_kind)]


class ExportSpec(_Strict):
    """What ``tierwise run`` writes after the job (``tierwise export-traces`` writes it on demand)."""

    traces: str | None = Field(None, description="a .parquet or .jsonl file (local or s3://) of the verified "
                               "traces, one row per trace in chat form (needs a verifier and output.keep_samples)")
    min_score: float = Field(1.0, ge=0, le=1, description="the verifier score a trace must reach")


class JobSpec(_Strict):
    name: str = "tierwise-job"
    input: InputSpec
    output: OutputSpec
    model: ModelSpec = ModelSpec()
    replicas: ReplicaSpec = ReplicaSpec()
    sampling: SamplingSpec = SamplingSpec()
    budget: BudgetSpec
    policy: Policy = UniformPolicy()
    prompt: PromptSpec = PromptSpec()
    reasoning: ReasoningSpec | None = Field(None, description="split <think>...</think> thoughts from answers; "
                                            "a thinking budget (max_thinking_tokens) with budget forcing")
    structured: StructuredSpec | None = Field(None, description="constrain every sample: {choice: [...]}, "
                                              "{json_schema: {...}} or {regex: ...}")
    answer_extractor: str = Field("full", description="arithmetic | boxed | choice | json:FIELD | regex:PATTERN "
                                  "| last_line | full")
    verifier: Verifier | None = Field(None, description="arithmetic_steps | module:function | "
                                      "{kind: llm_judge, mode: ..., ...} (see JudgeSpec) | "
                                      "{kind: reference, column: ..., match: ...} (see ReferenceSpec)")
    export: ExportSpec | None = Field(None, description="outputs written after the run: {traces: DEST}")
    verifier_timeout_s: float = Field(
        30.0, gt=0, description="seconds a module:function verifier's call may take (it runs off the replica's "
                                "event loop); a call that times out or raises scores null, counted in the row's "
                                "verifier_issues")

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, v):
        if isinstance(v, str):  # its form only: a module:function is imported by tierwise.jobs.preflight
            from tierwise.pipelines.tiers.verifiers import check_verifier_name
            check_verifier_name(v)
        return v

    @field_validator("answer_extractor")
    @classmethod
    def _known_extractor(cls, v: str) -> str:
        from tierwise.pipelines.tiers.answers import make_extractor
        make_extractor(v)  # an unknown name or a bad regex raises here, before any work
        return v

    @model_validator(mode="after")
    def _rules(self):
        if self.policy.select == "verifier" and not self.verifier:
            raise ValueError("policy.select 'verifier' needs a `verifier`")
        if getattr(self.policy, "objective", None) == "verified_yield" and not self.verifier:
            raise ValueError("policy.objective 'verified_yield' needs a `verifier` (it counts the samples that "
                             "pass it)")
        tier = getattr(self.policy, "tier", "sample")
        if tier == "search" and not self.verifier:
            raise ValueError("policy.tier 'search' needs a `verifier` (it scores every partial trace)")
        if tier == "search" and self.sampling.temperature == 0 and self.policy.search_spec.expansions > 1:
            raise ValueError("policy.tier 'search' with policy.search.expansions > 1 needs "
                             "sampling.temperature > 0 (greedy expansions are all the same)")
        think = getattr(self.policy, "think_max_tokens", None)
        if think is not None and think < self.sampling.max_tokens:
            raise ValueError(f"policy.think_max_tokens ({think}) must be at least sampling.max_tokens "
                             f"({self.sampling.max_tokens})")
        if self.input.gold_column and self.input.gold_column in (self.input.id_column, self.input.prompt_column):
            raise ValueError("input.gold_column must differ from the id and prompt columns")
        if self.input.gold_column and self.input.gold_column in prompt_columns(self).values():
            raise ValueError("input.gold_column must not be read by the prompt: the model would see gold")
        if isinstance(self.verifier, ReferenceSpec) and self.verifier.column in prompt_columns(self).values():
            raise ValueError("verifier.column must not be read by the prompt: the model would see the reference")
        if self.input.messages_column and (self.prompt.template or self.prompt.chat is False):
            raise ValueError("input.messages_column is the whole conversation: it does not go with "
                             "prompt.template or prompt.chat false")
        if self.input.sampling_columns and (self.policy.kind != "uniform" or tier != "sample"):
            raise ValueError("input.sampling_columns applies to policy kind 'uniform' with tier 'sample' (other "
                             "policies plan their own sampling)")
        if self.structured and (tier == "search" or "search" in getattr(self.policy, "rungs", ())):
            raise ValueError("structured outputs do not apply to step-level search (its steps are partial)")
        if self.reasoning and self.structured:
            raise ValueError("reasoning does not go with structured outputs (the constraint would hold the "
                             "thought too)")
        if self.reasoning and (tier == "search" or "search" in getattr(self.policy, "rungs", ())):
            raise ValueError("reasoning does not apply to step-level search (its steps are partial traces)")
        if self.reasoning and self.reasoning.max_thinking_tokens and self.policy.abort_failed_steps:
            raise ValueError("reasoning.max_thinking_tokens does not go with policy.abort_failed_steps "
                             "(a thought is not a step trace)")
        if self.policy.kind == "adaptive" and self.input.gold_column in difficulty_columns(self).values():
            raise ValueError("policy.difficulty must not read input.gold_column: no estimator may see gold")
        return self

    @model_validator(mode="after")
    def _label_confidence_needs(self):
        if getattr(self.policy, "label_confidence", None) is None:
            return self
        if not (self.structured and self.structured.choice):
            raise ValueError("policy.label_confidence reads a structured choice's label distribution: it needs "
                             "structured.choice")
        if self.policy.planner != "calibrated":
            raise ValueError("policy.label_confidence applies to policy.planner 'calibrated'")
        return self

    @model_validator(mode="after")
    def _rung_prompts_need_chat(self):
        if getattr(self.policy, "rung_chat_template_kwargs", None) and self.prompt.chat is False:
            raise ValueError("policy.rung_chat_template_kwargs needs the chat template: it does not apply with "
                             "prompt.chat false")
        return self

    @model_validator(mode="after")
    def _export_needs(self):
        if self.export and self.export.traces and not (self.verifier and self.output.keep_samples):
            raise ValueError("export.traces needs a `verifier` (it keeps the samples that pass) and "
                             "output.keep_samples: true (the traces' texts)")
        return self

    @model_validator(mode="after")
    def _abort_needs_a_step_verifier(self):
        if self.policy.abort_failed_steps and not isinstance(self.verifier, str):
            raise ValueError("policy.abort_failed_steps needs a `verifier` with a prefix check (arithmetic_steps, "
                             "or a module:function whose function has a `prefix_ok` attribute)")
        return self

    @model_validator(mode="after")
    def _ladder_needs(self):
        if "search" not in getattr(self.policy, "rungs", ()):
            return self
        if not self.verifier:
            raise ValueError("policy.ladder 'search' needs a `verifier` (it scores every partial trace)")
        if self.sampling.temperature == 0 and self.policy.search_spec.expansions > 1:
            raise ValueError("policy.ladder 'search' with policy.search.expansions > 1 needs "
                             "sampling.temperature > 0 (greedy expansions are all the same)")
        return self


def aborts_failed_steps(spec: JobSpec) -> bool:
    """Whether the job's samples stop at their first failed step (``policy.abort_failed_steps``,
    resolved: adaptive policies turn it on when the verifier has a prefix check)."""
    from tierwise.pipelines.tiers.verifiers import make_prefix_check

    want = spec.policy.abort_failed_steps
    if want is False or not isinstance(spec.verifier, str) or spec.reasoning:
        return False
    try:
        has = make_prefix_check(spec.verifier) is not None
    except ValueError as exc:
        raise SpecError(f"verifier: {exc}") from None
    if want and not has:
        raise SpecError(f"policy.abort_failed_steps: verifier {spec.verifier!r} has no prefix check "
                        "(give the function a `prefix_ok(prompt, text) -> bool` attribute)")
    return has


def prompt_columns(spec: JobSpec) -> dict[str, str]:
    """Input columns the prompt reads: ``{spec field: column}`` (the messages column, the template's
    fields, else the prompt column)."""
    inp, p = spec.input, spec.prompt
    if inp.messages_column:
        return {"messages_column": inp.messages_column}
    if p.template:
        return {f"prompt.template[{c}]": c for c in template_fields(p.template)}
    return {"prompt_column": inp.prompt_column}


def verifier_columns(spec: JobSpec) -> dict[str, str]:
    """Input columns the verifier reads: ``{spec field: column}`` (a reference verifier's column)."""
    v = spec.verifier
    return {"verifier.column": v.column} if isinstance(v, ReferenceSpec) else {}


def difficulty_columns(spec: JobSpec) -> dict[str, str]:
    """Input columns the difficulty estimators read: ``{samples-table name: input column}``
    (``feature_<col>`` for feature columns, ``difficulty_hint`` for the difficulty column)."""
    if spec.policy.kind != "adaptive":
        return {}
    d = spec.policy.difficulty
    return {f"feature_{c}": c for c in d.feature_columns} | ({"difficulty_hint": d.column} if d.column else {})


def prompt_config(spec: JobSpec):
    """The replicas' ``PromptConfig`` of the spec's input and ``prompt`` section."""
    from tierwise.pipelines.data.prompts import PromptConfig

    p = spec.prompt
    return PromptConfig(prompt_column=spec.input.prompt_column, messages_column=spec.input.messages_column,
                        template=p.template, system_prompt=p.system_prompt, chat=p.chat,
                        chat_template=p.chat_template, chat_template_kwargs=dict(p.chat_template_kwargs),
                        variants=dict(getattr(spec.policy, "rung_chat_template_kwargs", None) or {}))


def resolve_output_path(spec: JobSpec, now: datetime | None = None) -> JobSpec:
    """``spec`` with the placeholders of ``output.path`` filled in (unchanged without any).

    ``{date}``: ``TIERWISE_RUN_DATE`` if set, else today's UTC date (YYYY-MM-DD). A scheduler
    that may retry a run after midnight sets it, so the retry resumes the same output.
    ``{run_id}``: ``TIERWISE_RUN_ID`` if set (a CronJob's job name, a workflow run id), else a
    fresh id (UTC time and a random suffix) logged with the path: a run can only be resumed by
    setting ``TIERWISE_RUN_ID`` to it.
    """
    path = spec.output.path
    if "{" not in path:
        return spec
    now = now or datetime.now(UTC)
    values = {"date": os.environ.get("TIERWISE_RUN_DATE") or now.strftime("%Y-%m-%d"),  # env: the run's date
              "run_id": os.environ.get("TIERWISE_RUN_ID")}                                # env: the run's id
    if values["run_id"] is None and "{run_id}" in path:
        values["run_id"] = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
        log.warning("output.path {run_id} is %s (set TIERWISE_RUN_ID=%s to resume this run)", values["run_id"],
                    values["run_id"])
    resolved = path.format(**values)
    return spec.model_copy(update={"output": spec.output.model_copy(update={"path": resolved})})


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"invalid job spec {source}:"]
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(data: dict, source: str = "") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format(exc, source)) from None


def load_spec(path: str | Path, overrides: dict | None = None) -> JobSpec:
    """Reads a YAML spec; ``overrides`` (dotted keys) are applied before validation."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read job spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"job spec {path} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        _override(data, key, value)
    return parse_spec(data, str(path))


def _override(data: dict, key: str, value: Any) -> None:
    """Sets the dotted ``key`` of ``data`` (``--set``), creating mappings on the way.

    Raises:
        SpecError: an empty segment, or a segment under a value that is not a mapping.
    """
    *head, last = keys = key.split(".")
    if not all(keys):
        raise SpecError(f"--set {key}: a key is dot-separated field names, e.g. budget.amount")
    node = data
    for i, k in enumerate(head):
        if node.get(k) is None:  # absent, or a YAML key left empty
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            where = ".".join(keys[:i + 1])
            raise SpecError(f"--set {key}: {where} is {node!r}, not a mapping with a field {keys[i + 1]!r}")
    node[last] = value
