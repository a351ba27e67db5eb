"""Sleep-capable streaming generation with incremental decoding.

The rules are the engine's (``sleepify/sleep.py``, ``docs/sleep-semantics.md``): without labels every
window but the last sleeps and the last is awake. A stream therefore keeps one *open* (awake) window:

- new tokens are appended to it with :func:`sleepify.sleep.extend_window`, which runs the wake forward over
  the new tokens only, reading the cached K/V of the window (per attention block and wake-pass slot) and
  continuing every SSM mixer from its saved state (the JetBlock's one-token step path when ``T == 1``);
- when the window is full and another token arrives, the model sleeps on it with
  :func:`sleepify.sleep.close_window` (the consolidation, ``N`` wake forwards over the window from the state
  that entered it, exactly what the full-sequence forward does), evicts, and opens a new empty window.

So the logits of every token equal those of the full-sequence forward over the prefix that ends at that
token (tested), and a decode step costs one wake forward over one token whatever ``N`` and however long the
stream already is (plus, once every ``L`` tokens, one consolidation).

:class:`SleepDecoder` is the stream (windows over its batch's columns); :class:`SleepStreams` is a batch
of them in which every row's windows count its own tokens (a row computes what it computes alone);
:class:`SleepCache` wraps that as a transformers ``Cache``: the model's streaming contract
(``model(chunk, past_key_values=cache, use_cache=True)``) and ``model.generate()``; :func:`generate` is the
sampling loop used by ``sleepify generate`` (greedy / temperature / top-p, batches with padding, stop
strings, streaming).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache

from sleepify.errors import SleepifyError
from sleepify.sleep import (
    KVBuffer,
    OpenWindow,
    SleepState,
    close_window,
    extend_window,
    incremental_ok,
    open_window,
    run_window,
)

__all__ = ["GenerationResult", "SleepCache", "SleepDecoder", "SleepStreams", "generate", "sample_next"]

ROLLBACK = 64  # columns a stream can undo (crop) at least, beyond its open window


class SleepDecoder:
    """A token stream through a sleep-capable model (``SleepHybridForCausalLM``), fed incrementally.

    ``feed(input_ids, attention_mask)`` appends columns (a prompt, or one generated token per row) and returns
    the logits the model predicts at them while awake. ``backend`` / ``window`` / ``passes`` / ``eviction``
    override the model config's engine settings (None = config).

    ``compile``: ``torch.compile`` the one-token decode step (True = the default mode, or a mode name such as
    ``"reduce-overhead"``, CUDA graphs on CUDA). What is compiled are the blocks' modules (decoder layers,
    inserted Jet layers), called by the eager engine: the engine's window bookkeeping is Python that would
    break the graph anyway. Only steps inside a window whose K/V buffers exist use them (the prompt, the
    first token of a window and the consolidations run eagerly), so the compiled code sees stable types and
    one dynamic key length. Jet-Nemotron's own layers stay eager."""

    def __init__(
        self,
        model: Any,
        backend: str | dict | None = None,
        window: int | None = None,
        passes: int | None = None,
        eviction: str | None = None,
        compile: bool | str = False,
    ):
        self.model = model
        self.stack = model.sleep_stack()
        self.settings = model.sleep_settings(backend=backend, window=window, passes=passes, eviction=eviction)
        self.window: OpenWindow | None = None
        self.sleeps = 0  # consolidations run so far
        self._incremental = incremental_ok(self.stack, self.settings)
        self._step_stack = _compiled_stack(model, compile) if compile else None
        # the windows slept most recently, as (entry state, columns, mask), so that crop() can roll back
        # into them: as many as it takes to hold ROLLBACK columns
        self._closed: list[tuple[SleepState, Tensor, Tensor | None]] = []

    def fork(self, index: Tensor | None = None) -> SleepDecoder:
        """A new stream with this one's model and settings: empty (``index`` None) or holding the rows
        ``index`` of this stream (copied; this stream is left as it is)."""
        new = object.__new__(SleepDecoder)
        new.__dict__.update(self.__dict__)
        new.window, new.sleeps, new._closed = None, 0, []
        if index is not None:
            new.window = None if self.window is None else _map_rows(self.window, index)
            new.sleeps = self.sleeps
            new._closed = [
                (_map_state(e, index), ids[index], _rows_or_none(m, index)) for e, ids, m in self._closed
            ]
        return new

    def _close(self, state: SleepState, ids: Tensor, mask: Tensor | None, entry: SleepState) -> None:
        """Bookkeeping of a slept window (``entry`` -> ``state`` over ``ids``): open the next one."""
        self._closed.append((entry, ids, mask))
        while sum(c[1].shape[1] for c in self._closed[1:]) >= ROLLBACK:
            self._closed.pop(0)
        self.window = open_window(state, ids.shape[0], ids.device)
        self.sleeps += 1

    @torch.no_grad()
    def crop(self, n: int) -> None:
        """Forget the last ``n`` columns fed, as if they never were (assisted decoding rejects drafted
        tokens this way). The open window is recomputed from the state that entered it; a window that
        already slept is reopened from what entered it (the last ``ROLLBACK`` columns can be undone, at
        least one window). Further back raises."""
        if n < 0:
            raise ValueError(f"crop takes a number of columns >= 0, got {n}")
        while n > 0:
            w = self.window
            if w is not None and n <= w.length:
                entry, ids, mask = w.entry, w.input_ids, w.attention_mask
            elif w is not None and self._closed:  # the open window goes, and some of the one before
                n -= w.length
                entry, ids, mask = self._closed.pop()
                self.sleeps -= 1
            else:
                held = 0 if w is None else w.length + sum(c[1].shape[1] for c in self._closed)
                raise SleepifyError(
                    f"cannot undo {n} more tokens of a sleep-capable stream: only the last {held} can be "
                    "(the windows before them have slept and are gone)"
                )
            keep = ids.shape[1] - min(n, ids.shape[1])
            n -= ids.shape[1] - keep
            self.window = open_window(entry, ids.shape[0], ids.device)
            if keep:
                m = None if mask is None else mask[:, :keep]
                _, self.window = extend_window(self.stack, self.settings, self.window, ids[:, :keep], m)

    # ------------------------------------------------------------------ feeding
    @torch.no_grad()
    def feed(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, logits: str = "last"
    ) -> Tensor | None:
        """Append ``input_ids [B, T]`` (``attention_mask`` 1 = real, 0 = left padding) to the stream.

        ``logits``: ``"last"`` returns ``[B, 1, V]`` for the last column; ``"all"`` returns ``[B, T, V]``
        (every column's awake logits: each equals the full forward over the prefix ending there);
        ``"none"`` returns None. With ``"last"``/``"none"`` a prompt's windows that will sleep anyway are
        consolidated directly, without a wake forward first (as ``sleep_forward`` does)."""
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("feed needs at least one token")
        device = input_ids.device
        if self.window is not None and self.window.input_ids.shape[0] != B:
            raise ValueError(f"the stream has batch size {self.window.input_ids.shape[0]}, got {B} rows")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
        L = self.settings.window
        if self.window is None:
            self.window = open_window(SleepState(), B, device)
        pos = 0
        chunks: list[Tensor] = []
        last: Tensor | None = None
        while pos < T:
            if self.window.length == L:  # full, and another token arrives: sleep, evict, new window
                w = self.window
                self._close(
                    close_window(self.stack, self.settings, w), w.input_ids, w.attention_mask, w.entry
                )
            n = min(L - self.window.length, T - pos)
            ids = input_ids[:, pos : pos + n]
            mask = None if attention_mask is None else attention_mask[:, pos : pos + n]
            remaining = T - pos - n
            if logits != "all" and self.window.length == 0 and n == L and remaining > 0:
                # a whole window that sleeps before any of its logits are needed: consolidate directly
                rows = torch.ones(B, dtype=torch.bool, device=device)
                entry = self.window.entry
                _, _, state, _ = run_window(self.stack, self.settings, ids, mask, entry, rows)
                self._close(state, ids, mask, entry)
            elif logits == "all" and not self._incremental and n > 1:
                # the wake forward is not causal across its passes here (see incremental_ok): every
                # column's logits come from the window that ends at that column
                for j in range(n):
                    m_j = None if mask is None else mask[:, j : j + 1]
                    h, self.window = extend_window(
                        self.stack, self.settings, self.window, ids[:, j : j + 1], m_j
                    )
                    chunks.append(self.stack.lm_head(h))
            else:
                stack = self.stack
                if self._step_stack is not None and n == 1 and self.window.length > 0 and self._incremental:
                    stack = self._step_stack  # a decode step with the window's K/V buffers in place
                h, self.window = extend_window(stack, self.settings, self.window, ids, mask)
                if logits == "all":
                    chunks.append(self.stack.lm_head(h))
                elif logits == "last" and remaining == 0:
                    last = self.stack.lm_head(h[:, -1:])
            pos += n
        if logits == "all":
            return torch.cat(chunks, dim=1)
        return last


def _compiled_stack(model: Any, compile: bool | str) -> Any:
    """The model's stack with every block module that can be compiled wrapped in ``torch.compile``
    (``dynamic=True``: the key length grows by one every step). The model itself is not modified."""
    mode = None if compile is True or compile == "default" else str(compile)
    stack = model.sleep_stack()
    for block in stack.blocks:
        if getattr(block, "compilable", True):
            block.module = torch.compile(block.module, dynamic=True, mode=mode)
    return stack


def _rows_or_none(x: Any, index: Tensor) -> Any:
    """``x`` (tensors with batch first, tuples / named tuples / dicts of them) with the rows ``index``."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.index_select(0, index.to(x.device))
    if isinstance(x, tuple):
        parts = (_rows_or_none(t, index) for t in x)
        return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
    if isinstance(x, dict):
        return {k: _rows_or_none(v, index) for k, v in x.items()}
    return x


def _map_state(state: SleepState, index: Tensor) -> SleepState:
    return SleepState(
        mixers=_rows_or_none(state.mixers, index),
        kv=_rows_or_none(state.kv, index),
        kv_index=state.kv_index,
        kv_valid=_rows_or_none(state.kv_valid, index),
        offset=state.offset,
        seen=_rows_or_none(state.seen, index),
    )


def _map_rows(window: OpenWindow, index: Tensor) -> OpenWindow:
    def rows(x: Any) -> Any:
        return _rows_or_none(x, index)

    new_entry = _map_state(window.entry, index)
    # preallocated K/V buffers are copied row by row (index_select), so the old window's are never written to
    buffers = {key: KVBuffer(rows(b.key), rows(b.value), b.length) for key, b in window.kv_buffers.items()}
    kv = rows({key: val for key, val in window.kv.items() if key not in buffers})
    kv.update({key: b.view() for key, b in buffers.items()})
    return OpenWindow(
        entry=new_entry,
        input_ids=rows(window.input_ids),
        attention_mask=rows(window.attention_mask),
        mixers=rows(window.mixers),
        kv=kv,
        k_index=window.k_index,
        k_valid=rows(window.k_valid),
        offset=window.offset,
        seen=rows(window.seen),
        kv_buffers=buffers,
    )


# ------------------------------------------------------------------------------------------------------------
# a batch of streams, each row with its own windows


class SleepStreams:
    """A batch of token streams in which every row's windows count its own real tokens (a row computes
    what it computes alone, whatever its padding and its batch-mates).

    ``feed(input_ids, attention_mask)`` takes ``[B, T]`` columns; a column whose mask is 0 is no token of
    its row (padding: left, right or anywhere). Rows sit in groups, each a :class:`SleepDecoder` fed only
    real tokens, so its windows are every row's own; a group holds rows that were always fed the same
    number of tokens (generation feeds one per row per step, so a group stays whole). A feed that gives
    the rows of a group different numbers of tokens splits it; the first feed groups rows whose numbers of
    tokens agree modulo ``L`` (the shorter ones start with whole windows of padding, which change nothing,
    so a batch of prompts decodes in at most ``L`` groups). ``template``: the decoder whose model and
    settings (``backend``, ``passes``, ``compile``, ...) every group uses (built from ``model`` and
    ``decoder_kwargs`` when not given)."""

    def __init__(self, model: Any = None, template: SleepDecoder | None = None, **decoder_kwargs: Any):
        if template is None:
            if model is None:
                raise ValueError("SleepStreams needs a model or a template SleepDecoder")
            template = SleepDecoder(model, **decoder_kwargs)
        self.template = template
        self.settings = template.settings
        self.reset()

    def reset(self) -> None:
        self.groups: list[tuple[Tensor, SleepDecoder]] = []  # (rows [b] long, their stream)
        self.real: Tensor | None = None  # [B, C] bool: which columns fed so far were tokens of their row

    @property
    def columns(self) -> int:
        """Columns fed so far (padding included): what transformers calls the cache's sequence length."""
        return 0 if self.real is None else int(self.real.shape[1])

    @property
    def batch_size(self) -> int | None:
        return None if self.real is None else int(self.real.shape[0])

    def _per_row(self, value: Callable[[SleepDecoder], Any], default: int = 0) -> Tensor:
        out = torch.full((self.batch_size or 0,), default, dtype=torch.long)
        for rows, dec in self.groups:
            out[rows.cpu()] = torch.as_tensor(value(dec), dtype=torch.long).cpu()
        return out

    @property
    def sleeps(self) -> int:
        """Windows slept by the row that slept most."""
        return int(self._per_row(lambda d: d.sleeps).max()) if self.groups else 0

    @property
    def seen(self) -> Tensor:
        """``[B]`` real tokens fed to each row."""
        return self.real.sum(1) if self.real is not None else torch.zeros(0, dtype=torch.long)

    @property
    def window_fill(self) -> Tensor:
        """``[B]`` tokens in each row's open window (``L``: full; the row sleeps when its next one comes)."""
        return self._per_row(lambda d: 0 if d.window is None else d.window.length)

    def _split(self, counts: Tensor, by_phase: bool = False) -> list[tuple[Tensor, SleepDecoder]]:
        """The groups cut so that the rows of one get the same number of tokens (``counts[row]``), or with
        ``by_phase``, for a group not fed yet, the same number modulo ``L`` (its rows are then fed with
        whole windows of padding first, which change nothing: no token was fed before them)."""
        out = []
        for rows, dec in self.groups:
            c = counts[rows]
            if by_phase and dec.window is None:
                c = torch.where(c > 0, c % self.settings.window + 1, 0)
            values = c.unique()
            for v in values.tolist():
                pick = (c == v).nonzero()[:, 0]
                out.append((rows[pick], dec if len(values) == 1 else dec.fork(pick)))
        return out

    @torch.no_grad()
    def feed(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, logits: str = "last"
    ) -> Tensor | None:
        """Append ``input_ids [B, T]`` (``attention_mask`` 1 = a token of its row, 0 = padding).

        ``logits``: ``"all"`` ``[B, T, V]`` (every token's awake logits, in its column; padding columns
        hold zeros), ``"last"`` ``[B, 1, V]`` (each row's last token of this feed; zeros for a row fed
        none) or ``"none"``."""
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', got {logits!r}")
        B, T = input_ids.shape
        device = input_ids.device
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
        if attention_mask is not None:
            mask = attention_mask.to(device=device, dtype=torch.bool)
        if self.real is None:
            self.groups = [(torch.arange(B, device=device), self.template.fork())]
            self.real = mask.new_zeros(B, 0)
        elif self.batch_size != B:
            raise ValueError(f"the stream has batch size {self.batch_size}, got {B} rows")
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # each row's tokens first
        packed = input_ids.gather(1, order)
        out: Tensor | None = None
        counts = mask.sum(1)
        self.groups = self._split(counts, by_phase=True)
        for rows, dec in self.groups:
            n = counts[rows]
            width = int(n.max())
            if width == 0:
                continue
            ids, pad = packed[rows, :width], None
            if int(n.min()) < width:  # rows of one phase: right-aligned after whole windows of padding
                shift = (torch.arange(width, device=device) - (width - n)[:, None]) % width
                ids = ids.gather(1, shift)
                pad = torch.arange(width, device=device) >= (width - n)[:, None]
            got = dec.feed(ids, pad, logits=logits)
            if got is None:
                continue
            if out is None:
                out = got.new_zeros(B, T if logits == "all" else 1, got.shape[-1])
            if logits != "all":
                out[rows] = got
                continue
            for i, (row, k) in enumerate(zip(rows.tolist(), n.tolist(), strict=True)):
                out[row, order[row, :k]] = got[i, width - k :]
        self.real = torch.cat([self.real, mask], 1)
        if out is None and logits != "none":
            vocab = self.template.model.config.vocab_size
            out = torch.zeros(B, T if logits == "all" else 1, vocab, device=device)
        return out

    def select_rows(self, index: Tensor) -> None:
        """Keep / reorder / repeat rows: new row ``j`` is old row ``index[j]`` (beam search)."""
        if self.real is None:
            return
        index = index.to(self.real.device)
        group_of = torch.empty(self.batch_size, dtype=torch.long, device=index.device)
        local_of = torch.empty_like(group_of)
        for g, (rows, _) in enumerate(self.groups):
            group_of[rows] = g
            local_of[rows] = torch.arange(len(rows), device=index.device)
        groups = []
        for g, (_, dec) in enumerate(self.groups):
            new_rows = (group_of[index] == g).nonzero()[:, 0]
            if len(new_rows):
                groups.append((new_rows, dec.fork(local_of[index[new_rows]])))
        self.groups = groups
        self.real = self.real[index]

    def crop(self, n: int) -> None:
        """Forget the last ``n`` columns fed (see :meth:`SleepDecoder.crop`)."""
        if n <= 0 or self.real is None:
            return
        if n > self.columns:
            raise SleepifyError(f"cannot undo {n} columns of a stream that holds {self.columns}")
        removed = self.real[:, -n:].sum(1)
        self.groups = self._split(removed)
        for rows, dec in self.groups:
            dec.crop(int(removed[rows[0]]))  # a group's rows end in real tokens: the same columns go
        self.real = self.real[:, :-n]


# ------------------------------------------------------------------------------------------------------------
# transformers Cache


class SleepCache(Cache):
    """The cache of a sleep-capable model, a transformers ``Cache``: per row, the K/V of its open window
    (per attention block and wake-pass slot, plus the ``L - 1`` kept keys with sliding eviction), every SSM
    mixer's fast weights and conv window, the position in the window and whether a sleep is pending (the
    window is full: the row sleeps when its next token comes). It is a :class:`SleepStreams`:
    every row's windows count its own tokens.

    ``model(chunk, past_key_values=cache, use_cache=True)`` appends the chunk and returns the cache again
    (``use_cache=True`` without a cache starts one); chunks of any sizes give the logits of one forward over
    the whole sequence. ``model.generate()`` makes one. ``get_seq_length()`` is the number of columns fed
    (padding included). The K/V it holds never exceeds one window per row (``2L - 1`` keys with sliding
    eviction), however long the stream. ``crop`` undoes the last tokens (assisted decoding), as far back
    as the open window and the windows slept in the last ``ROLLBACK`` tokens."""

    def __init__(
        self,
        model: Any = None,
        decoder: SleepDecoder | None = None,
        streams: SleepStreams | None = None,
        **decoder_kwargs: Any,
    ):
        super().__init__(layers=[])
        if streams is None:
            streams = SleepStreams(model, template=decoder, **decoder_kwargs)
        self.streams = streams

    @property
    def settings(self) -> Any:
        return self.streams.settings

    def __repr__(self) -> str:
        fill = self.streams.window_fill.tolist()
        return f"SleepCache(columns={self.get_seq_length()}, window fill={fill}/{self.settings.window})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.streams.columns

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # unbounded: the stream sleeps and evicts

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.streams.real is not None

    @property
    def is_croppable(self) -> bool:
        return True  # as far back as crop() says; further raises in one line

    @property
    def batch_size(self) -> int:
        b = self.streams.batch_size
        return -1 if b is None else b

    def update(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        raise NotImplementedError("SleepCache is filled by SleepHybridForCausalLM.forward, not by layers")

    def reset(self) -> None:
        self.streams.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.streams.select_rows(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.streams.select_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        b = self.streams.batch_size
        if b is not None:
            self.streams.select_rows(torch.arange(b).repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        """transformers' crop: a negative value removes that many columns, a positive one keeps that many."""
        n = -max_length if max_length < 0 else max(self.get_seq_length() - max_length, 0)
        self.streams.crop(n)


# ------------------------------------------------------------------------------------------------------------
# sampling and the generation loop


def sample_next(
    logits: Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The next token ``[B]`` from ``logits [B, V]``: argmax, or a sample at ``temperature`` restricted to the
    smallest set of tokens whose probability reaches ``top_p`` (and to the ``top_k`` most likely)."""
    logits = logits.float()
    if not do_sample or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the tokens before the mass reaches top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class GenerationResult:
    """``tokens``: per row, the generated ids (stop string / EOS included when it ended the row, the text
    is cut before a stop string); ``texts`` (with a tokenizer); ``finish``: per row ``"eos"``, ``"stop"`` or
    ``"length"``; ``sleeps``: consolidations run (prompt and generation)."""

    tokens: list[list[int]]
    texts: list[str] | None = None
    finish: list[str] = field(default_factory=list)
    sleeps: int = 0
    prompt_tokens: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # L, N, eviction, device (generate_text)


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    stop: Sequence[str] = (),
    tokenizer: Any = None,
    seed: int | None = None,
    on_token: Callable[[int, int, str | None], None] | None = None,
    decoder: SleepDecoder | None = None,
    backend: str | None = None,
    compile: bool | str = False,
) -> GenerationResult:
    """Streaming sleep-capable generation (module docstring).

    ``input_ids [B, T]`` with left padding (``attention_mask`` 0 on pads); every row runs as it runs alone
    (:class:`SleepStreams`). Stops a row at an EOS id or when its decoded text contains one of ``stop``
    (needs ``tokenizer``); stops everything after ``max_new_tokens``. ``on_token(row, token_id,
    text_piece)`` is called for every kept token (the text piece only with a tokenizer; a row's stop
    string is never streamed). ``seed`` makes sampling reproducible, per row (every row draws from its
    own generator seeded with ``seed``, so it samples what it samples alone). ``decoder``: a
    :class:`SleepDecoder` whose model and settings every row's stream uses. ``compile``: see
    :class:`SleepDecoder`."""
    if stop and tokenizer is None:
        raise SleepifyError("stop strings need a tokenizer")
    if max_new_tokens < 0:
        raise SleepifyError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    B = input_ids.shape[0]
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    gens = None
    if seed is not None:  # one generator per row: a row samples what it samples alone
        gens = [torch.Generator(device=device).manual_seed(seed) for _ in range(B)]
    template = decoder or SleepDecoder(model, backend=backend, compile=compile)
    streams = SleepStreams(template=template)
    logits = streams.feed(input_ids, attention_mask, logits="last")[:, -1]
    tokens: list[list[int]] = [[] for _ in range(B)]
    texts = ["" for _ in range(B)] if tokenizer is not None else None
    streamed = [0] * B  # characters of texts[i] already given to on_token
    hold = max((len(s) for s in stop), default=0)  # characters held back: a stop string may be forming
    finish = ["length"] * B
    done = [False] * B
    for step in range(max_new_tokens):
        if gens is None:
            nxt = sample_next(logits, do_sample, temperature, top_p, top_k)
        else:
            nxt = torch.cat(
                [
                    sample_next(logits[i : i + 1], do_sample, temperature, top_p, top_k, g)
                    for i, g in enumerate(gens)
                ]
            )
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            tokens[i].append(t)
            if t in eos:
                done[i], finish[i] = True, "eos"
            if texts is not None:
                text = tokenizer.decode(
                    tokens[i] if not done[i] else tokens[i][:-1], skip_special_tokens=True
                )
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    text, done[i], finish[i] = text[:cut], True, "stop"
                texts[i] = text
                upto = len(text) if done[i] else max(streamed[i], len(text) - max(hold - 1, 0))
                if on_token is not None and upto > streamed[i]:
                    on_token(i, t, text[streamed[i] : upto])
                streamed[i] = max(streamed[i], upto)
            elif on_token is not None:
                on_token(i, t, None)
        if all(done) or step == max_new_tokens - 1:
            break
        logits = streams.feed(nxt[:, None], None, logits="last")[:, -1]
    if texts is not None and on_token is not None:  # flush what was held back for a possible stop string
        for i in range(B):
            if streamed[i] < len(texts[i]):
                on_token(i, tokens[i][-1], texts[i][streamed[i] :])
    return GenerationResult(
        tokens=tokens, texts=texts, finish=finish, sleeps=streams.sleeps, prompt_tokens=input_ids.shape[1]
    )
