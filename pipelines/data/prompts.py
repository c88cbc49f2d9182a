"""What a row sends to the model, before the tokenizer: its user turn or its whole conversation.

Columnar (polars) over a part's rows: the user's turn from the prompt column or the spec's
``prompt.template`` (``{column}`` fields), checked per row; or the row's chat messages, checked
per row (a null or empty cell, a turn without a role or content, an unknown role). A bad row
gets an error message naming what is wrong, never a dropped row. The chat template itself is
applied by the engine (``tierwise.ray_cluster.engine.VllmEngine.render``), as vLLM's chat entry point does.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tierwise.pipelines.data.validation import row_errors

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class PromptConfig:
    """The spec's ``input.prompt_column`` / ``messages_column`` and ``prompt`` section, for a replica."""

    prompt_column: str = "prompt"
    messages_column: str | None = None
    template: str | None = None
    system_prompt: str | None = None
    chat: bool | None = None  # None: chat when the model has a chat template
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Ladder rungs' own renderings: rung name -> its chat_template_kwargs over the job's (a hybrid model's
    # thinking on or off per rung); requests name theirs (``SamplingConfig.prompt_variant``).
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def variant_kwargs(self) -> dict[str, dict[str, Any]]:
        """Each rung variant's chat template variables: the job's, then the rung's over them."""
        return {name: dict(self.chat_template_kwargs) | dict(kw) for name, kw in self.variants.items()}

    def columns(self) -> list[str]:
        """The input columns the prompt reads."""
        if self.messages_column:
            return [self.messages_column]
        if self.template:
            return [name for _, name, _, _ in string.Formatter().parse(self.template) if name]
        return [self.prompt_column]


@dataclass
class RowPrompts:
    """A part's rows as the engine gets them: ``text`` is each row's user turn (what a verifier or
    judge reads as its prompt: the last user turn of a conversation), ``messages`` each row's
    conversation (None for raw prompts), ``errors`` each row's problem (None when it can be sent)."""

    text: list[str | None]
    messages: list[list[dict]] | None
    errors: list[str | None]


def row_prompts(frame: pl.DataFrame, cfg: PromptConfig, chat: bool) -> RowPrompts:
    """The part's prompts (``chat``: whether the chat template applies, resolved by the replica)."""
    if cfg.messages_column:
        return _from_messages(frame[cfg.messages_column], cfg.system_prompt)
    text, errors = user_turns(frame, cfg)
    messages = None
    if chat:
        system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        messages = [system + [{"role": "user", "content": t}] if t is not None else None for t in text.to_list()]
    return RowPrompts(text.to_list(), messages, errors.to_list())


def variant_ids(base: list, variants: dict[str, list]) -> list:
    """Per row, its renderings by name (``{None: the job's, rung: the rung's}``), from the job's rendering and
    each variant's (token ids per row, or the row's error message, or None); a row whose rendering failed in
    any of them gets that error message."""
    out = []
    for i, ids in enumerate(base):
        got = {None: ids} | {name: v[i] for name, v in variants.items()}
        bad = next((g for g in got.values() if isinstance(g, str)), None)
        out.append(got if bad is None else bad)
    return out


def user_turns(frame: pl.DataFrame, cfg: PromptConfig) -> tuple[pl.Series, pl.Series]:
    """Each row's user turn and its error (null, or the template field that is null, or empty)."""
    if not cfg.template:
        return frame[cfg.prompt_column], row_errors(frame[cfg.prompt_column])
    parts, fields = [], []
    for literal, name, _, _ in string.Formatter().parse(cfg.template):
        if literal:
            parts.append(pl.lit(literal))
        if name:
            parts.append(pl.col(name).cast(pl.String))
            fields.append(name)
    rendered = frame.select(pl.concat_str(parts).alias("t"))["t"]
    err = pl.lit(None, pl.String)
    for name in reversed(list(dict.fromkeys(fields))):  # the first null field is the one named
        err = pl.when(pl.col(name).is_null()).then(pl.lit(f"prompt.template field {name!r} is null")).otherwise(err)
    errors = frame.select(err.alias("e"))["e"]
    return rendered, errors


def _from_messages(cells: pl.Series, system_prompt: str | None) -> RowPrompts:
    """Conversations from a messages column (already checked to be a list of {role, content} structs)."""
    errors = message_errors(cells).to_list()
    convs = cells.to_list()
    messages, text = [], []
    for conv, err in zip(convs, errors):
        if err:
            messages.append(None)
            text.append(None)
            continue
        turns = [{"role": m["role"], "content": m["content"]} for m in conv]
        if system_prompt and turns[0]["role"] not in ("system", "developer"):
            turns = [{"role": "system", "content": system_prompt}] + turns
        messages.append(turns)
        text.append(next((m["content"] for m in reversed(turns) if m["role"] == "user"), turns[-1]["content"]))
    return RowPrompts(text, messages, errors)


def message_errors(cells: pl.Series) -> pl.Series:
    """Per-row error (or null) of a messages column: a null or empty conversation, a turn with a null
    role or content, a role outside ``CHAT_ROLES``, or no user turn."""
    df = pl.DataFrame({"m": cells}).with_row_index("row")
    turns = df.explode("m").with_columns(pl.col("m").struct.field("role").alias("role"),
                                         pl.col("m").struct.field("content").alias("content"),
                                         pl.int_range(pl.len()).over("row").alias("turn"))
    turn_error = (
        pl.when(pl.col("m").is_null()).then(pl.format("turn {} is null", pl.col("turn")))
        .when(pl.col("role").is_null()).then(pl.format("turn {} has no role", pl.col("turn")))
        .when(~pl.col("role").is_in(CHAT_ROLES))
        .then(pl.format("turn {} has unknown role '{}' (known: {})", pl.col("turn"), pl.col("role"),
                        pl.lit(", ".join(CHAT_ROLES))))
        .when(pl.col("content").is_null()).then(pl.format("turn {} has no content", pl.col("turn")))
        .otherwise(pl.lit(None, pl.String)))
    per_row = turns.group_by("row", maintain_order=True).agg(
        turn_error.drop_nulls().first().alias("turn_error"),
        (pl.col("role") == "user").any().alias("has_user"))
    out = df.select("row", "m").join(per_row, on="row", how="left", maintain_order="left")
    return out.select(
        pl.when(pl.col("m").is_null()).then(pl.lit("messages is null"))
        .when(pl.col("m").list.len() == 0).then(pl.lit("messages is empty"))
        .when(pl.col("turn_error").is_not_null()).then(pl.concat_str(pl.lit("messages: "), pl.col("turn_error")))
        .when(~pl.col("has_user")).then(pl.lit("messages has no user turn"))
        .otherwise(pl.lit(None, pl.String))).to_series()


SAMPLING_RULES = {"max_tokens": (pl.Int64, lambda v: v >= 1, "at least 1"),
                  "temperature": (pl.Float64, lambda v: v >= 0, "at least 0"),
                  "top_p": (pl.Float64, lambda v: (v > 0) & (v <= 1), "in (0, 1]")}


def row_sampling(frame: pl.DataFrame, columns: dict[str, str]) -> tuple[list[dict], list[str | None]]:
    """Each row's sampling overrides from ``input.sampling_columns`` (``{field: column}``; null cells
    left out) and its error: a value that is not a number or breaks the field's rule, naming both."""
    if not columns:
        return [{}] * frame.height, [None] * frame.height
    values, errors = [], []
    for name, col in columns.items():
        dtype, ok, rule = SAMPLING_RULES[name]
        raw = pl.col(col)
        v = raw.cast(dtype, strict=False)
        bad = (v.is_null() & raw.is_not_null()) | ~ok(v).fill_null(True)
        errors.append(pl.when(bad).then(pl.format(f"input column '{col}' ({name}) is {{}}: it must be a number "
                                                  f"{rule}", raw.cast(pl.String))))
        values.append(pl.when(bad).then(None).otherwise(v).alias(name))
    errs = frame.select(pl.coalesce(errors).alias("e"))["e"].to_list()
    overrides = [{k: x for k, x in d.items() if x is not None} for d in frame.select(values).to_dicts()]
    return overrides, errs
