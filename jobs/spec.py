"""The job spec: one typed, validated description of a tierwise run.

YAML holds values; this module holds defaults and their meaning. Validation does
no I/O: a bad spec fails here, naming the field and the rule, before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from pipelines.errors import TierwiseError


class SpecError(TierwiseError):
    """The job spec is invalid; the message names each bad field and its rule."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    path: str = Field(description="Parquet file or directory; local path or s3:// URI")
    id_column: str = "id"
    prompt_column: str = "prompt"
    gold_column: str | None = Field(None, description="used only to score the run, never by a policy")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec / s3fs")


class OutputSpec(_Strict):
    path: str = Field(description="directory (local or s3://) for parts and run_report.json")
    part_rows: int = Field(256, ge=1, description="rows per committed part (the unit of resume)")
    keep_samples: bool = Field(False, description="store every sampled text in the `samples` column")
    storage_options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(_Strict):
    path: str = Field("embedded:tiny-adder", description="embedded:NAME, a local model dir, or a HF id")
    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=16)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm AsyncEngineArgs")


class ReplicaSpec(_Strict):
    count: int = Field(1, ge=1, description="vLLM replicas (one per GPU or tensor-parallel group)")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (tensor_parallel_size on GPU)")
    max_rows_in_flight: int = Field(256, ge=1, description="rows a replica keeps in its engine at once")
    parts_per_replica: int = Field(2, ge=1)
    max_part_retries: int = Field(3, ge=0)


class SamplingSpec(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0


class BudgetSpec(_Strict):
    amount: float = Field(ge=0, description="hard cap on total spend, in `unit`")
    unit: Literal["tokens", "gpu_hours", "usd"] = "tokens"
    tokens_per_gpu_hour: float | None = Field(None, gt=0, description="throughput that converts tokens to GPU-hours")
    usd_per_gpu_hour: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _conversion(self):
        if self.unit != "tokens" and self.tokens_per_gpu_hour is None:
            raise ValueError(f"budget.tokens_per_gpu_hour is required when budget.unit is {self.unit!r}")
        if self.unit == "usd" and self.usd_per_gpu_hour is None:
            raise ValueError("budget.usd_per_gpu_hour is required when budget.unit is 'usd'")
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


class AdaptivePolicy(_Strict):
    """tierwise's policy: calibrate on a slice, estimate each row's difficulty from a
    cheap pilot, and spend the rest of the budget where the calibration curves say
    extra samples buy the objective (early-stopping rows whose samples agree)."""

    kind: Literal["adaptive"] = "adaptive"
    objective: Literal["accuracy", "coverage"] = "accuracy"
    select: Literal["majority", "verifier"] = "majority"
    calibration_fraction: float = Field(0.15, gt=0, lt=1, description="most of the input's parts run as calibration")
    calibration_budget_share: float = Field(0.3, gt=0, le=1, description="most of the budget calibration may take")
    calibration_samples: int = Field(8, ge=2, le=256, description="samples per calibration row (K)")
    pilot_samples: int | None = Field(None, ge=1, le=16, description="first-round samples that estimate "
                                      "difficulty (default: 1 for coverage with a verifier, else 2)")
    round_size: int = Field(2, ge=1, description="samples per later round")
    n_buckets: int = Field(5, ge=1, le=20)
    price: float | None = Field(None, gt=0, description="score per budget unit below which compute is not bought")
    replan_every_parts: int = Field(1, ge=1, description="pacing: re-allocate after this many parts")
    calibration_from: str | None = Field(
        None, description="samples table of an earlier run (its calibration_samples.parquet, or any "
                          "`tierwise sample` output): plan from it and skip this run's calibration")

    @model_validator(mode="after")
    def _pilot_fits(self):
        if self.pilot_samples is not None and self.pilot_samples > self.calibration_samples:
            raise ValueError("policy.pilot_samples must not exceed policy.calibration_samples")
        return self


def _policy_kind(value) -> str:
    """A policy without ``kind`` is uniform."""
    return value.get("kind", "uniform") if isinstance(value, dict) else getattr(value, "kind", "uniform")


Policy = Annotated[Annotated[UniformPolicy, Tag("uniform")] | Annotated[AdaptivePolicy, Tag("adaptive")],
                   Discriminator(_policy_kind)]


class JobSpec(_Strict):
    name: str = "tierwise-job"
    input: InputSpec
    output: OutputSpec
    model: ModelSpec = ModelSpec()
    replicas: ReplicaSpec = ReplicaSpec()
    sampling: SamplingSpec = SamplingSpec()
    budget: BudgetSpec
    policy: Policy = UniformPolicy()
    answer_extractor: str = Field("full", description="arithmetic | regex:PATTERN | last_line | full")
    verifier: str | None = Field(None, description="arithmetic_steps | module:function")

    @model_validator(mode="after")
    def _rules(self):
        if self.policy.select == "verifier" and not self.verifier:
            raise ValueError("policy.select 'verifier' needs a `verifier`")
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
        return self


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
        node = data
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return parse_spec(data, str(path))
