"""Streaming Parquet (and JSONL) I/O over local paths and S3 (through fsspec / s3fs).

JSON Lines inputs (``.jsonl`` / ``.ndjson``, and OpenAI batch files: see ``JSONL_SUFFIXES``) are
streamed by pyarrow's JSON reader block by block: their "row groups" are the reader's blocks, and a
part reads the blocks that cover it.

Input is never read whole: the driver reads only Parquet footers to plan
deterministic *parts* (contiguous row ranges of one file), and each worker reads
just its part's columns. Output parts are committed atomically: a local part is
written to a temporary name and renamed; an S3 part is a single object PUT, which
S3 makes visible only when complete. A committed part file is the commit record.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tierwise.pipelines.data.errors import InputError, StorageError

PART_METADATA_KEY = b"tierwise.part"


# botocore's own retries for throttling, 5xx and timeouts on every S3 call.
S3_RETRIES = {"retries": {"max_attempts": 8, "mode": "adaptive"}}
WRITE_ATTEMPTS = 4


def filesystem(uri: str, storage_options: dict[str, Any] | None = None):
    """Returns ``(fs, path)`` for a local path or ``s3://`` URI."""
    options = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")):
        options.setdefault("config_kwargs", S3_RETRIES)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {uri!r}: {exc}") from exc
    return fs, path


def _protocol_prefix(fs) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else f"{proto}://"


@dataclass(frozen=True)
class InputFile:
    """One Parquet file of the input, with its row-group sizes (from the footer)."""

    path: str
    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class Part:
    """A deterministic slice of the input: rows ``[start, start + length)`` of one file.

    Part ids are stable across runs over the same input and ``part_rows``, which is
    what makes resume exact.
    """

    part_id: int
    file: str
    start: int
    length: int


JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_BLOCK_BYTES = 1 << 20  # pyarrow's JSON reader block: the unit a JSONL part is read in
# An OpenAI batch line ({custom_id, method, url, body: {messages, max_tokens, ...}}): these fields of
# ``body`` become columns of their own (messages_column: messages, id_column: custom_id).
OPENAI_BODY_FIELDS = ("messages", "max_tokens", "temperature", "top_p", "model")


def is_jsonl(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES)


def _json_batches(fs, path: str, shown: str):
    """The record batches of a JSONL file, streamed, OpenAI batch bodies flattened. A line that is
    not JSON, or whose types differ from the file's first block, is an InputError naming the file."""
    import pyarrow.json as pj

    try:
        with fs.open(path, "rb") as fh:
            reader = pj.open_json(fh, read_options=pj.ReadOptions(block_size=JSON_BLOCK_BYTES))
            for batch in reader:
                yield _flatten_openai(batch)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"input file {shown} is not readable JSON Lines: {exc}") from exc


def _flatten_openai(batch: pa.RecordBatch) -> pa.RecordBatch:
    """An OpenAI batch file's ``body`` fields as top-level columns (those not already present)."""
    names = batch.schema.names
    if "body" not in names or not pa.types.is_struct(batch.schema.field("body").type):
        return batch
    body = batch.column("body")
    have = {f.name for f in body.type}
    extra = [f for f in OPENAI_BODY_FIELDS if f in have and f not in names]
    return pa.RecordBatch.from_arrays(list(batch.columns) + [body.field(f) for f in extra], names=names + extra)


def list_input_files(uri: str, storage_options: dict[str, Any] | None = None) -> list[InputFile]:
    """Lists the input's Parquet files in sorted order and reads their footers (a directory
    without Parquet files: its JSONL files, each streamed once to count its blocks' rows).

    Raises:
        InputError: the path does not exist, holds no Parquet or JSONL file, or a file's
            footer cannot be read (the file is named).
    """
    fs, path = filesystem(uri, storage_options)
    try:
        if fs.isdir(path):
            found = sorted(fs.find(path))
            paths = [p for p in found if p.endswith(".parquet")] or [p for p in found if is_jsonl(p)]
        elif fs.exists(path):
            paths = [path]
        else:
            raise InputError(f"input path {uri!r} does not exist")
    except InputError:
        raise
    except Exception as exc:  # botocore / OS errors: keep the cause
        raise InputError(f"input path {uri!r} cannot be read: {exc}") from exc
    if not paths:
        raise InputError(f"input path {uri!r} holds no .parquet (or .jsonl) file")
    prefix = _protocol_prefix(fs)
    files = []
    for p in paths:
        if is_jsonl(p):
            files.append(InputFile(prefix + p, tuple(b.num_rows for b in _json_batches(fs, p, prefix + p))))
            continue
        try:
            with fs.open(p, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
        except Exception as exc:
            raise InputError(f"input file {prefix}{p} is not readable Parquet: {exc}") from exc
        files.append(InputFile(prefix + p, tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))))
    return files


def read_schema(file: InputFile, storage_options: dict[str, Any] | None = None) -> pa.Schema:
    fs, path = filesystem(file.path, storage_options)
    if is_jsonl(path):
        return next(iter(_json_batches(fs, path, file.path))).schema
    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).schema_arrow


def plan_parts(files: list[InputFile], part_rows: int) -> list[Part]:
    """Splits the input into parts of at most ``part_rows`` rows, file by file."""
    parts: list[Part] = []
    for f in files:
        for start in range(0, f.num_rows, part_rows):
            parts.append(Part(len(parts), f.path, start, min(part_rows, f.num_rows - start)))
    return parts


def read_part(part: Part, columns: list[str], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Reads only the row groups that cover ``part`` and only ``columns``.

    Raises:
        InputError: a row group's pages cannot be read (corrupt, truncated); the message
            names the file, the row group and its rows.
    """
    fs, path = filesystem(part.file, storage_options)
    if is_jsonl(path):
        return _read_json_part(fs, path, part, columns)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        tables, offset, first_row = [], 0, None
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if offset + n > part.start and offset < part.start + part.length:
                tables.append(_read_group(pf, part.file, i, offset, n, columns))
                first_row = offset if first_row is None else first_row
            offset += n
    table = pa.concat_tables(tables) if tables else pf.schema_arrow.empty_table().select(columns)
    return table.slice(part.start - (first_row or 0), part.length)


def _read_json_part(fs, path: str, part: Part, columns: list[str]) -> pa.Table:
    """``part``'s rows of a JSONL file: its blocks streamed until the part's last row."""
    batches, offset = [], 0
    for batch in _json_batches(fs, path, part.file):
        if offset + batch.num_rows > part.start:
            batches.append(batch.select(columns))
        offset += batch.num_rows
        if offset >= part.start + part.length:
            break
    table = pa.Table.from_batches(batches)
    first = offset - table.num_rows
    return table.slice(part.start - first, part.length)


def _read_group(pf: pq.ParquetFile, file: str, group: int, first_row: int, rows: int, columns: list[str]) -> pa.Table:
    """One row group's ``columns``; pyarrow's decoding errors become an InputError naming where."""
    try:
        return pf.read_row_group(group, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"input file {file} row group {group} (rows {first_row}-{first_row + rows - 1}), "
                         f"column(s) {', '.join(columns)}: cannot be read: {exc}") from exc


def read_parts(parts: list[Part], columns: list[str], storage_options: dict[str, Any] | None = None):
    """Reads ``columns`` of several parts as one polars frame."""
    import polars as pl

    return pl.concat([pl.from_arrow(read_part(p, columns, storage_options)) for p in parts])


def iter_column(files: list[InputFile], column: str, storage_options: dict[str, Any] | None = None):
    """Yields one column of the whole input row group by row group (for job-level checks).

    Raises:
        InputError: a row group's pages cannot be read; the message names the file and the group.
    """
    for f in files:
        fs, path = filesystem(f.path, storage_options)
        if is_jsonl(path):
            yield from (b.column(column) for b in _json_batches(fs, path, f.path))
            continue
        with fs.open(path, "rb") as fh:
            pf, first_row = pq.ParquetFile(fh), 0
            for i, rows in enumerate(f.row_groups):  # group by group: an error names its group
                yield _read_group(pf, f.path, i, first_row, rows, [column]).column(0)
                first_row += rows


# ---------------------------------------------------------------- output

def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}.parquet"


def write_part(table: pa.Table, out_uri: str, part_id: int, summary: dict[str, Any],
               storage_options: dict[str, Any] | None = None) -> str:
    """Commits one output part atomically, with ``summary`` in the file's metadata.

    Returns the committed URI.
    """
    fs, root = filesystem(out_uri, storage_options)
    meta = dict(table.schema.metadata or {})
    meta[PART_METADATA_KEY] = json.dumps(summary).encode()
    table = table.replace_schema_metadata(meta)
    final = f"{root.rstrip('/')}/{part_name(part_id)}"

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()

    def commit():
        if _protocol_prefix(fs):  # object store: one PUT, visible only when complete
            fs.pipe_file(final, data)
        else:
            fs.makedirs(root, exist_ok=True)
            tmp = f"{root.rstrip('/')}/.tmp-{part_name(part_id)}-{uuid.uuid4().hex}"
            fs.pipe_file(tmp, data)
            fs.mv(tmp, final)
        # Read the size back: a commit is only a commit if the whole part landed.
        fs.invalidate_cache(final)
        if fs.size(final) != len(data):
            raise OSError(f"{final} holds {fs.size(final)} bytes after writing {len(data)}")

    with_retries(commit, f"write output part {final}")
    return _protocol_prefix(fs) + final


def _permanent(exc: BaseException) -> bool:
    """No such bucket, access denied, bad path: retrying cannot help."""
    return isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError))


def with_retries(fn, what: str, attempts: int = WRITE_ATTEMPTS, backoff_s: float = 0.5):
    """Runs ``fn`` retrying transient storage errors with exponential backoff.

    Raises:
        StorageError: a permanent error, or a transient one that outlasted the retries.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if _permanent(exc) or attempt == attempts - 1:
                raise StorageError(f"cannot {what}: {type(exc).__name__}: {exc}") from exc
            time.sleep(backoff_s * 2 ** attempt)


def committed_parts(out_uri: str, storage_options: dict[str, Any] | None = None) -> dict[int, dict]:
    """Returns ``{part_id: summary}`` for every committed part under ``out_uri``."""
    return {pid: summary for pid, (summary, _) in scan_committed(out_uri, storage_options).items()}


def read_output(out_uri: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None,
                part_ids: list[int] | None = None):
    """Reads committed output parts (all, or ``part_ids``) as one polars frame."""
    import polars as pl

    fs, root = filesystem(out_uri, storage_options)
    if part_ids is None:
        paths = sorted(fs.glob(f"{root.rstrip('/')}/part-*.parquet"))
    else:
        paths = [f"{root.rstrip('/')}/{part_name(i)}" for i in part_ids]
    frames = []
    for p in paths:
        with fs.open(p, "rb") as fh:
            frames.append(pl.read_parquet(fh, columns=columns))
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def write_json(obj: Any, out_uri: str, name: str, storage_options: dict[str, Any] | None = None) -> str:
    fs, root = filesystem(out_uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"

    def write():
        if not _protocol_prefix(fs):
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(target, "w") as fh:
            json.dump(obj, fh, indent=2, default=str)

    with_retries(write, f"write {target}")
    return _protocol_prefix(fs) + target


def read_json(out_uri: str, name: str, storage_options: dict[str, Any] | None = None) -> Any | None:
    fs, root = filesystem(out_uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    if not fs.exists(target):
        return None
    with fs.open(target, "r") as fh:
        return json.load(fh)


# ---------------------------------------------------------------- job identity and the output lease

def file_identity(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the storage says about one file's version: its size and, on S3, its ETag (and
    VersionId on a versioned bucket), locally its mtime in nanoseconds. Equal identities mean
    the same bytes (locally, an untouched file)."""
    fs, p = filesystem(path, storage_options)
    fs.invalidate_cache(p)
    info = with_retries(lambda: fs.info(p), f"stat input file {path}")
    out: dict[str, Any] = {"path": path, "size": int(info.get("size") or 0)}
    if _protocol_prefix(fs):
        for key, name in (("ETag", "etag"), ("VersionId", "version")):
            if info.get(key):
                out[name] = str(info[key]).strip('"')
    else:
        out["mtime_ns"] = os.stat(p).st_mtime_ns
    return out


def scan_committed(out_uri: str, storage_options: dict[str, Any] | None = None,
                   columns: list[str] = ()) -> dict[int, tuple[dict, pa.Table]]:
    """``{part_id: (summary, table)}`` of every committed part, ``table`` holding ``columns``
    of the part's rows (those the part has; none: an empty selection)."""
    fs, root = filesystem(out_uri, storage_options)
    if not with_retries(lambda: fs.exists(root), f"list output {out_uri}"):
        return {}
    fs.invalidate_cache(root)
    done = {}
    for p in sorted(fs.glob(f"{root.rstrip('/')}/part-*.parquet")):
        name = p.rsplit("/", 1)[-1]
        with fs.open(p, "rb") as fh:
            pf = pq.ParquetFile(fh)
            md = pf.schema_arrow.metadata or {}
            have = [c for c in columns if c in pf.schema_arrow.names]
            table = pf.read(columns=have) if have else pa.table({})
        done[int(name[5:11])] = (json.loads(md.get(PART_METADATA_KEY, b"{}")), table)
    return done


def create_exclusive(out_uri: str, name: str, data: bytes, storage_options: dict[str, Any] | None = None) -> bool:
    """Creates ``name`` under ``out_uri`` only if it does not exist; returns whether it did.

    S3: one PUT with ``If-None-Match: *`` (s3fs ``mode="create"``), which S3 (and moto) refuse
    with 412 when the key exists. Local: the bytes go to a temporary file first, then
    ``os.link`` gives them the name, which fails if it is taken (O_EXCL semantics, and a
    reader never sees a half-written file).
    """
    fs, root = filesystem(out_uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"
    if _protocol_prefix(fs):
        def put():
            try:
                fs.pipe_file(target, data, mode="create")
                return True
            except FileExistsError:
                return False
        return with_retries(put, f"create {target}")
    os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def put_bytes(out_uri: str, name: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Writes ``name`` under ``out_uri`` whole (a local temporary file renamed over it; one S3 PUT)."""
    fs, root = filesystem(out_uri, storage_options)
    target = f"{root.rstrip('/')}/{name}"

    def write():
        if _protocol_prefix(fs):
            fs.pipe_file(target, data)
            return
        os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    with_retries(write, f"write {target}")


def list_names(out_uri: str, folder: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The file names directly under ``folder`` of ``out_uri`` (none when it does not exist)."""
    fs, root = filesystem(out_uri, storage_options)
    where = f"{root.rstrip('/')}/{folder}"
    fs.invalidate_cache(where)
    try:
        found = with_retries(lambda: fs.ls(where, detail=False), f"list {where}")
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return []
        raise
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)


def remove(out_uri: str, name: str, storage_options: dict[str, Any] | None = None) -> None:
    """Deletes ``name`` under ``out_uri`` if it is there."""
    fs, root = filesystem(out_uri, storage_options)
    try:
        fs.rm_file(f"{root.rstrip('/')}/{name}")
    except FileNotFoundError:
        pass


def archive_output(out_uri: str, suffix: str, keep: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """Moves everything under ``out_uri`` except the folder ``keep`` to ``<out_uri>.<suffix>``,
    file by file (never deleting what it cannot move); returns the archive's URI, or None
    when there was nothing to move."""
    fs, root = filesystem(out_uri, storage_options)
    root = root.rstrip("/")
    if not fs.exists(root):
        return None
    fs.invalidate_cache(root)
    dest = f"{root}.{suffix}"
    moved = 0
    for p in sorted(fs.find(root)):
        rel = p[len(root) + 1:]
        if rel == keep or rel.startswith(keep.rstrip("/") + "/"):
            continue
        target = f"{dest}/{rel}"
        if not _protocol_prefix(fs):
            os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with_retries(lambda p=p, target=target: fs.mv(p, target), f"archive {p} to {target}")
        moved += 1
    return _protocol_prefix(fs) + dest if moved else None
