"""Rows that no compute will reach, written by the driver at I/O speed.

Two reasons a row gets no compute: the budget left cannot cover it (``skipped_budget``) or the
job's deadline comes first (``skipped_deadline``). Either way the driver commits those parts
itself, columnar, in the same exactly-once parts as the replicas' (``commit_bulk``): no
reservation per row, no engine, no replica actor.

- ``BudgetFloor``: the cheapest first round of every part not yet sent, in the budget's unit.
  Once the budget left (``budget - spent``; spent only grows) is below the cheapest of them, no
  row left can ever be granted a reservation: the pool stops sending and the rest is written
  ``skipped_budget``, as the ledger would have refused each row one by one.
- ``Deadline``: ``budget.deadline`` / ``budget.max_wall_s``. Rows start no round past
  ``rows_stop_at`` (checked on the replica before each round), the driver sends no part that
  would not finish by then, and what is left is written ``skipped_deadline``; ``rows_stop_at``
  leaves time before the deadline for that bulk write and the report.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from tierwise.jobs.spec import JobSpec
from tierwise.pipelines.data import io, records
from tierwise.pipelines.data.prompts import PromptConfig, message_errors, row_sampling, user_turns
from tierwise.pipelines.tiers.base import RowState, Tier

log = logging.getLogger(__name__)

BULK_WRITERS = 4             # parts written at once (I/O bound; pyarrow releases the GIL)
BULK_S_PER_ROW = 1e-5        # time budgeted per row for the bulk write before a deadline (measured ~2 us)
DEADLINE_SLACK_S = 3.0       # least time kept before a deadline for rounds in flight, the last commits, the report
DEADLINE_SLACK_SHARE = 0.1   # ... or this share of the time the job was given, if more


# ---------------------------------------------------------------- bulk commits

def commit_bulk(spec: JobSpec, parts: list[io.Part], status: str, tokens: PromptTokens | None = None,
                lost: dict[int, float] | None = None) -> dict[int, dict]:
    """Commits ``parts`` from the driver, every row ``status`` (cost 0, ``correct`` false where a gold
    column grades it, ``prompt_tokens`` null), except rows a replica could not send (a prompt, template
    field or conversation that is null, empty or malformed, a bad per-row sampling cell, or, with
    ``tokens``, a prompt of at least the model's context), which are row ``error`` records as a
    replica writes them. A part carries what lost attempts at it spent (``lost``, by part id:
    ``lost_cost``). Each part commits atomically; returns their summaries."""
    if not parts:
        return {}
    lost = lost or {}
    with ThreadPoolExecutor(min(BULK_WRITERS, len(parts))) as ex:
        return dict(ex.map(lambda p: _commit_one(spec, p, status, tokens, lost.get(p.part_id, 0.0)), parts))


def _commit_one(spec: JobSpec, part: io.Part, status: str, tokens: PromptTokens | None,
                lost: float) -> tuple[int, dict]:
    from tierwise.jobs.spec import prompt_config
    from tierwise.ray_cluster.replica import summarize

    inp, cfg = spec.input, prompt_config(spec)
    cols = [inp.id_column] + cfg.columns() + ([inp.gold_column] if inp.gold_column else [])
    cols = list(dict.fromkeys(cols + list(inp.sampling_columns.values())))
    frame = pl.from_arrow(io.read_part(part, cols, inp.storage_options))
    texts, errors = row_texts(frame, cfg)
    if tokens is not None and texts is not None:
        errors = tokens.too_long(texts, errors)
    if inp.sampling_columns:  # a row's prompt error first, then its sampling cells', as a replica names them
        bad_cells = pl.Series(row_sampling(frame, dict(inp.sampling_columns))[1], dtype=pl.String)
        errors = pl.DataFrame({"p": errors, "s": bad_cells}).select(pl.coalesce("p", "s")).to_series()
    correct = None
    if inp.gold_column:  # as a replica grades a row without an answer: wrong
        correct = pl.when(frame[inp.gold_column].is_not_null()).then(False).otherwise(None)
        correct = frame.select(correct.alias("c"))["c"].to_arrow()
    table = records.bulk_table(frame[inp.id_column].cast(pl.String).to_arrow(), status, errors.to_arrow(),
                               correct=correct)
    table = records.with_lost_cost(table, lost)
    summary = summarize(part.part_id, table, 0.0)
    io.write_part(table, spec.output.path, part.part_id, summary, spec.output.storage_options)
    return part.part_id, summary


def row_texts(frame: pl.DataFrame, cfg: PromptConfig) -> tuple[pl.Series | None, pl.Series]:
    """Each row's user turn (None for a messages column: conversations) and its error, as a replica
    finds them (``tierwise.pipelines.data.prompts``)."""
    if cfg.messages_column:
        return None, message_errors(frame[cfg.messages_column])
    return user_turns(frame, cfg)


# ---------------------------------------------------------------- prompt tokens on the driver

class PromptTokens:
    """Prompt token counts on the driver, from the model's own tokenizer (as the replicas count them).

    ``bounds`` is columnar and cheap: a prompt of ``b`` UTF-8 bytes has at least
    ``specials + ceil(b / longest)`` tokens (``longest``: the most bytes one token stands for;
    1 for a byte tokenizer, where the bound is exact) and at most ``b + specials + 1``. Exact
    counts (``exact``) run the tokenizer, only where a bound cannot decide. Where the rows go
    through a chat template (``prompt``: the job's ``PromptConfig``), a prompt is its rendered
    one-turn conversation (``ChatFrame``) and the lower bound leaves out the special tokens.

    Raises:
        ValueError: the rows' chat rendering is not known on the driver (``ChatFrame``).
    """

    def __init__(self, model: str, max_model_len: int, prompt: PromptConfig | None = None):
        from transformers import AutoTokenizer

        from tierwise.ray_cluster.engine import resolve_model

        self.tok = AutoTokenizer.from_pretrained(resolve_model(model))
        self.max_model_len = max_model_len
        self.specials = len(self.tok("", add_special_tokens=True)["input_ids"])
        self.added = sorted(self.tok.get_added_vocab())  # special tokens: they also match in text
        plain = set(self.tok.get_vocab()) - set(self.added)
        self.longest = max([1] + [_token_bytes(self.tok, t) for t in plain])
        self.chat = ChatFrame.of(self.tok, prompt) if prompt is not None else None

    def bounds(self, prompts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        b = prompts.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
        least = self.specials
        if self.chat is not None:
            b, least = b + self.chat.extra_bytes, 0
        lo = least + -(-b // self.longest)
        if self.added:  # a prompt holding a special token's text: no bound but one token
            lo = np.where(prompts.str.contains_any(self.added).fill_null(False).to_numpy(), least + 1, lo)
        return lo, b + self.specials + 1

    def exact(self, prompts: list[str]) -> np.ndarray:
        if self.chat is not None:  # the rendered conversation, tokenized as apply_chat_template does
            texts = [self.chat.prefix + p + self.chat.suffix for p in prompts]
            return np.array([len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]], np.int64)
        return np.array([len(x) for x in self.tok(prompts, add_special_tokens=True)["input_ids"]], np.int64)

    def too_long(self, prompts: pl.Series, errors: pl.Series) -> pl.Series:
        """``errors`` with a replica's message for prompts of at least the model's context."""
        _, hi = self.bounds(prompts)
        maybe = np.flatnonzero((hi >= self.max_model_len) & errors.is_null().to_numpy())
        if not len(maybe):
            return errors
        counts = self.exact(prompts.gather(maybe).to_list())
        out = errors.to_list()
        for i, k in zip(maybe.tolist(), counts.tolist()):
            if k >= self.max_model_len:
                out[i] = f"prompt has {k} tokens; the model's context is {self.max_model_len}"
        return pl.Series(out, dtype=pl.String)


@dataclass(frozen=True)
class ChatFrame:
    """A one-turn chat job's rendering: ``prefix + user turn + suffix`` (the spec's system prompt,
    the template's markup and generation prompt), known once the tokenizer's own
    ``apply_chat_template`` (what vLLM's chat renderer runs) renders two different turns that way."""

    prefix: str
    suffix: str
    template: str = field(repr=False)
    system_prompt: str | None
    kwargs: tuple[tuple[str, object], ...]

    @property
    def extra_bytes(self) -> int:
        return len((self.prefix + self.suffix).encode())

    @classmethod
    def of(cls, tok, cfg: PromptConfig) -> ChatFrame | None:
        """The job's frame (None for raw prompts, as ``ReplicaActor._prompt_ids`` decides chat).

        Raises:
            ValueError: conversations from a messages column, or a template whose rendering of a
                turn is not prefix + turn + suffix.
        """
        template = tok.chat_template
        if cfg.chat_template is not None:
            from vllm.renderers.chat_utils import load_chat_template
            template = load_chat_template(cfg.chat_template)
        if not (cfg.chat if cfg.chat is not None else template is not None):
            return None
        if cfg.messages_column:
            raise ValueError("conversations from input.messages_column have no one-turn rendering")
        if not isinstance(template, str):
            raise ValueError(f"the chat template is not one Jinja text ({type(template).__name__})")
        frame = cls("", "", template, cfg.system_prompt, tuple(sorted(cfg.chat_template_kwargs.items())))
        a, b = "\x01tierwise-a\x01", "\x02tierwise-b\x02"
        ra, rb = frame.render(tok, a), frame.render(tok, b)
        head, _, tail = ra.partition(a)
        if ra.count(a) != 1 or rb != head + b + tail:
            raise ValueError("the chat template does not render a turn as prefix + turn + suffix")
        return cls(head, tail, template, cfg.system_prompt, frame.kwargs)

    def conversation(self, turn: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": turn}]

    def render(self, tok, turn: str) -> str:
        return tok.apply_chat_template(self.conversation(turn), chat_template=self.template, tokenize=False,
                                       add_generation_prompt=True, **dict(self.kwargs))


def _token_bytes(tok, token: str) -> int:
    """The most UTF-8 bytes of text ``token`` stands for (a byte-level BPE spells each byte as one
    character; otherwise its decoded text, where a partial character decodes to the 3-byte U+FFFD)."""
    decoder = getattr(getattr(tok, "backend_tokenizer", None), "decoder", None)
    if type(decoder).__name__ == "ByteLevel":
        return len(token)
    return len(tok.convert_tokens_to_string([token]).encode())


# ---------------------------------------------------------------- the budget's floor

def first_round(tier: Tier) -> list[tuple[int, int]]:
    """``(n, max_tokens)`` of each request of a row's first round under ``tier`` (the same for
    every row of a uniform policy)."""
    asked = tier.next_request(RowState("floor", 1), 0)
    return [(r.n, r.max_tokens) for r in (asked if isinstance(asked, list) else [asked] if asked else [])]


def round_worst(k: np.ndarray, requests: list[tuple[int, int]], max_model_len: int, prompt_weight: float,
                k_hi: np.ndarray | None = None) -> np.ndarray:
    """The weighted tokens a first round reserves for prompts of ``k`` tokens, as a replica reserves
    them (each request pays its input once and ``n`` samples of ``max_tokens`` clipped to the
    context); with ``k_hi`` (upper bounds of ``k``) a lower bound of it."""
    hi = k if k_hi is None else k_hi
    out = np.zeros(len(k))
    for n, max_tokens in requests:
        out += prompt_weight * k + n * np.maximum(1, np.minimum(max_tokens, max_model_len - hi))
    return out


class BudgetFloor:
    """The cheapest first round (in the budget's unit) of the parts not yet sent.

    Built on first use from the parts' prompts (bounds, columnar); a part whose bound does not
    decide is tokenized exactly. ``requests``: every row's first round (``first_round``);
    ``price``: the budget unit per weighted token.

    Raises:
        ValueError: rows whose first rounds differ by more than their prompts (conversations,
            per-row ``max_tokens``).
    """

    def __init__(self, spec: JobSpec, parts: list[io.Part], requests: list[tuple[int, int]], tokens: PromptTokens,
                 price: float):
        from tierwise.jobs.spec import prompt_config

        self.spec, self.parts, self.tokens, self.price = spec, {p.part_id: p for p in parts}, tokens, price
        self.prompt = prompt_config(spec)
        if self.prompt.messages_column or "max_tokens" in spec.input.sampling_columns:
            raise ValueError("rows' first rounds differ by more than their prompts (input.messages_column or "
                             "input.sampling_columns.max_tokens)")
        self.columns = list(dict.fromkeys(self.prompt.columns() + list(spec.input.sampling_columns.values())))
        self.requests = requests
        self.weight = spec.budget.prompt_token_weight
        self.sent: set[int] = set()
        self._heap: list[tuple[float, bool, int]] | None = None  # (floor, exact, part id)

    def mark_sent(self, part: io.Part) -> None:
        self.sent.add(part.part_id)

    def covers_none(self, remaining: float) -> bool:
        """Whether ``remaining`` cannot cover the cheapest row of any part not yet sent."""
        if not self.requests:
            return False
        heap = self._build() if self._heap is None else self._heap
        while heap:
            floor, exact, pid = heap[0]
            if pid in self.sent:
                heapq.heappop(heap)
            elif floor > remaining:
                return True
            elif exact:
                return False
            else:
                heapq.heapreplace(heap, (self._part_floor(pid, exact=True), True, pid))
        return True

    def _build(self) -> list:
        t0 = time.monotonic()
        left = [p for pid, p in self.parts.items() if pid not in self.sent]
        if not left:  # every part was sent
            self._heap = []
            return self._heap
        worst = self._row_worst(*self._prompts(io.read_parts(left, self.columns, self.spec.input.storage_options)))
        starts = np.cumsum([0] + [p.length for p in left[:-1]])
        floors = np.minimum.reduceat(worst, starts) if len(worst) else np.array([])
        heap = [(float(f), False, p.part_id) for f, p in zip(floors, left)]
        heapq.heapify(heap)
        log.info("budget floor of %d unsent parts in %.2f s", len(heap), time.monotonic() - t0)
        self._heap = heap
        return heap

    def _part_floor(self, pid: int, exact: bool) -> float:
        frame = pl.from_arrow(io.read_part(self.parts[pid], self.columns, self.spec.input.storage_options))
        return float(self._row_worst(*self._prompts(frame), exact).min(initial=math.inf))

    def _prompts(self, frame: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
        """The rows' user turns and whether each can be sent (row errors are never reserved)."""
        texts, errors = user_turns(frame, self.prompt)
        ok = errors.is_null().to_numpy()
        if self.spec.input.sampling_columns:
            ok &= np.array([e is None for e in row_sampling(frame, dict(self.spec.input.sampling_columns))[1]])
        return texts, ok

    def _row_worst(self, prompts: pl.Series, ok: np.ndarray, exact: bool = False) -> np.ndarray:
        """Each row's first-round reservation in the budget's unit (a lower bound unless ``exact``;
        inf for rows that are errors (``ok`` false), never reserved)."""
        ok = ok.copy()
        lo, hi = self.tokens.bounds(prompts)
        if exact and ok.any():
            lo, hi = lo.copy(), hi.copy()
            lo[ok] = hi[ok] = self.tokens.exact(prompts.filter(pl.Series(ok)).to_list())
        ok &= lo < self.tokens.max_model_len  # longer prompts are row errors, never reserved
        worst = round_worst(lo, self.requests, self.tokens.max_model_len, self.weight, hi) * self.price
        return np.where(ok, worst, math.inf)


# ---------------------------------------------------------------- the deadline

@dataclass(frozen=True)
class Deadline:
    """When the job must be done (``at``, unix seconds) and when rows stop starting rounds."""

    at: float
    rows_stop_at: float

    def due(self, part_seconds: float = 0.0, now: float | None = None) -> bool:
        """Whether a part sent now (taking ``part_seconds``) would run past ``rows_stop_at``."""
        return (time.time() if now is None else now) + part_seconds >= self.rows_stop_at


def job_deadline(spec: JobSpec, started: float, rows_todo: int) -> Deadline | None:
    """The job's deadline from ``budget.deadline`` and ``budget.max_wall_s`` (from ``started``, unix
    seconds: the invocation's start), the earlier of the two; None without either. Rows start no
    round past ``rows_stop_at``: before it by ``DEADLINE_SLACK_S`` (or ``DEADLINE_SLACK_SHARE`` of
    the time given, if more: for the rounds then in flight, the last commits and the report) plus
    the bulk write's time for ``rows_todo`` rows."""
    b = spec.budget
    ends = ([b.deadline.timestamp()] if b.deadline is not None else []) + \
        ([started + b.max_wall_s] if b.max_wall_s is not None else [])
    if not ends:
        return None
    at = min(ends)
    slack = max(DEADLINE_SLACK_S, DEADLINE_SLACK_SHARE * (at - started))
    return Deadline(at, at - slack - rows_todo * BULK_S_PER_ROW)
