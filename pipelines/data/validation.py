"""Input validation: job-level checks before any work, row-level checks per part.

Job-level problems (a missing column, duplicate ids) fail the job before anything
is spent. Row-level problems (a null or empty prompt, a prompt longer than the
model's context) become row records with ``status = "error"``: never dropped.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from tierwise.pipelines.data.errors import InputError

MAX_EXAMPLES = 5


def check_columns(schema: pa.Schema, required: dict[str, str], where: str) -> None:
    """Raises InputError naming each required column missing from ``schema``.

    Args:
        required: ``{the spec field that names it: column name}``; a field without a dot is under
            ``input.``; ``policy.difficulty...`` columns must be numeric.
    """
    def label(field: str) -> str:
        return field if "." in field else f"input.{field}"

    missing = [f"{col!r} ({label(field)})" for field, col in required.items()
               if col is not None and col not in schema.names]
    if missing:
        raise InputError(
            f"input {where} lacks column(s) {', '.join(missing)}; it has {schema.names}")
    for field, col in required.items():
        if field == "prompt_column" and col is not None:
            t = schema.field(col).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise InputError(f"input column {col!r} (input.prompt_column) must be a string column, got {t}")
        if (field.startswith("prompt.template") or field == "verifier.column") and col is not None:
            t = schema.field(col).type
            if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
                use = "be a reference answer" if field == "verifier.column" else "fill the template"
                raise InputError(f"input column {col!r} ({field}) must be text or a number to {use}, got {t}")
        if field == "messages_column" and col is not None:
            check_messages_type(schema.field(col).type, col)
        if field.startswith("policy.difficulty") and col is not None:
            t = schema.field(col).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
                raise InputError(f"input column {col!r} ({field}) must be numeric, got {t}")


def check_unique_ids(id_chunks, id_column: str) -> int:
    """Counts ids and raises InputError listing examples when any id repeats.

    Args:
        id_chunks: iterable of Arrow arrays holding the whole id column.
    Returns:
        The number of rows.
    """
    chunks = [pl.Series("id", c).cast(pl.String) for c in id_chunks]
    ids = pl.concat(chunks) if chunks else pl.Series("id", [], pl.String)
    nulls = ids.null_count()
    if nulls:
        raise InputError(f"input column {id_column!r} (input.id_column) has {nulls} null id(s)")
    dup = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
    if len(dup):
        examples = ", ".join(repr(x) for x in dup.head(MAX_EXAMPLES).to_list())
        raise InputError(
            f"input column {id_column!r} (input.id_column) has {len(dup)} duplicated id(s), e.g. {examples}")
    return len(ids)


def row_errors(prompts: pl.Series) -> pl.Series:
    """Per-row error message (or null) for prompts that cannot be sent at all."""
    df = pl.DataFrame({"p": prompts})
    return df.select(
        pl.when(pl.col("p").is_null()).then(pl.lit("prompt is null"))
        .when(pl.col("p").str.strip_chars() == "").then(pl.lit("prompt is empty"))
        .otherwise(pl.lit(None, pl.String))
    ).to_series()


def check_messages_type(t: pa.DataType, column: str) -> None:
    """A messages column must be a list of structs with string ``role`` and ``content`` fields.

    Raises:
        InputError: naming the column and its type.
    """
    ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type)
    if ok:
        names = {f.name: f.type for f in t.value_type}
        ok = all(k in names and (pa.types.is_string(names[k]) or pa.types.is_large_string(names[k])
                                 or pa.types.is_null(names[k])) for k in ("role", "content"))
    if not ok:
        raise InputError(f"input column {column!r} (input.messages_column) must be a list of "
                         f"{{role: string, content: string}} structs, got {t}")
