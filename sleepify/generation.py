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

:class:`SleepDecoder` is the stream; :class:`SleepCache` wraps it as a transformers ``Cache`` so that
``model.generate()`` decodes incrementally too; :func:`generate` is the sampling loop used by
``sleepify generate`` (greedy / temperature / top-p, batches with left padding, stop strings, streaming).
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

__all__ = ["GenerationResult", "SleepCache", "SleepDecoder", "generate", "sample_next"]


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

    # ------------------------------------------------------------------ bookkeeping
    @property
    def offset(self) -> int:
        """Columns (tokens, padding included) fed so far."""
        return 0 if self.window is None else self.window.offset

    @property
    def batch_size(self) -> int | None:
        return None if self.window is None else int(self.window.input_ids.shape[0])

    def reset(self) -> None:
        self.window = None
        self.sleeps = 0

    def select_rows(self, index: Tensor) -> None:
        """Keep / reorder batch rows (``index [B']`` long), e.g. for beam search."""
        if self.window is None:
            return
        self.window = _map_rows(self.window, index)

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
                self.window = open_window(close_window(self.stack, self.settings, self.window), B, device)
                self.sleeps += 1
            n = min(L - self.window.length, T - pos)
            ids = input_ids[:, pos : pos + n]
            mask = None if attention_mask is None else attention_mask[:, pos : pos + n]
            remaining = T - pos - n
            if logits != "all" and self.window.length == 0 and n == L and remaining > 0:
                # a whole window that sleeps before any of its logits are needed: consolidate directly
                rows = torch.ones(B, dtype=torch.bool, device=device)
                _, _, state, _ = run_window(self.stack, self.settings, ids, mask, self.window.entry, rows)
                self.window = open_window(state, B, device)
                self.sleeps += 1
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


def _map_rows(window: OpenWindow, index: Tensor) -> OpenWindow:
    def rows(x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, Tensor):
            return x.index_select(0, index.to(x.device))
        if isinstance(x, tuple):
            return type(x)(*(rows(t) for t in x)) if hasattr(x, "_fields") else tuple(rows(t) for t in x)
        if isinstance(x, dict):
            return {k: rows(v) for k, v in x.items()}
        return x

    entry = window.entry
    new_entry = SleepState(
        mixers=rows(entry.mixers),
        kv=rows(entry.kv),
        kv_index=entry.kv_index,
        kv_valid=rows(entry.kv_valid),
        offset=entry.offset,
        seen=rows(entry.seen),
    )
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
# transformers Cache


class SleepCache(Cache):
    """A transformers ``Cache`` holding a :class:`SleepDecoder`: the open window's K/V (per attention block
    and wake-pass slot) and every SSM mixer state. ``model.generate()`` creates one automatically; its
    forward then feeds only the new tokens (see ``SleepHybridForCausalLM.forward``).

    ``get_seq_length()`` is the number of columns fed so far. The K/V it holds never exceeds one window
    (plus ``L - 1`` kept keys with sliding eviction), however long the stream."""

    def __init__(self, model: Any = None, decoder: SleepDecoder | None = None, **decoder_kwargs: Any):
        super().__init__(layers=[])
        if decoder is None:
            if model is None:
                raise ValueError("SleepCache needs a model or a SleepDecoder")
            decoder = SleepDecoder(model, **decoder_kwargs)
        self.decoder = decoder

    def __repr__(self) -> str:
        w = self.decoder.window
        fill = 0 if w is None else w.length
        return f"SleepCache(seen={self.get_seq_length()}, window={fill}/{self.decoder.settings.window})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.decoder.offset

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # unbounded: the stream sleeps and evicts

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.decoder.window is not None

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        b = self.decoder.batch_size
        return -1 if b is None else b

    def update(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        raise NotImplementedError("SleepCache is filled by SleepHybridForCausalLM.forward, not by layers")

    def reset(self) -> None:
        self.decoder.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.decoder.select_rows(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.decoder.select_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        b = self.decoder.batch_size
        if b is not None:
            self.decoder.select_rows(torch.arange(b).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a sleep-capable stream cannot be cropped (it may have slept already)")


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

    ``input_ids [B, T]`` with left padding (``attention_mask`` 0 on pads). Stops a row at an EOS id or when
    its decoded text contains one of ``stop`` (needs ``tokenizer``); stops everything after
    ``max_new_tokens``. ``on_token(row, token_id, text_piece)`` is called for every kept token (the text
    piece only with a tokenizer; a row's stop string is never streamed). ``seed`` makes sampling
    reproducible. ``compile``: see :class:`SleepDecoder`."""
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
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    decoder = decoder or SleepDecoder(model, backend=backend, compile=compile)
    logits = decoder.feed(input_ids, attention_mask, logits="last")[:, -1]
    tokens: list[list[int]] = [[] for _ in range(B)]
    texts = ["" for _ in range(B)] if tokenizer is not None else None
    streamed = [0] * B  # characters of texts[i] already given to on_token
    hold = max((len(s) for s in stop), default=0)  # characters held back: a stop string may be forming
    finish = ["length"] * B
    done = [False] * B
    for step in range(max_new_tokens):
        nxt = sample_next(logits, do_sample, temperature, top_p, top_k, gen)
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
        logits = decoder.feed(nxt[:, None], None, logits="last")[:, -1]
    if texts is not None and on_token is not None:  # flush what was held back for a possible stop string
        for i in range(B):
            if streamed[i] < len(texts[i]):
                on_token(i, tokens[i][-1], texts[i][streamed[i] :])
    return GenerationResult(
        tokens=tokens, texts=texts, finish=finish, sleeps=decoder.sleeps, prompt_tokens=input_ids.shape[1]
    )
