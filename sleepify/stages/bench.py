"""Inference benchmark of a sleep-capable model (``sleepify bench``; ``benchmarks/bench_inference.py``).

Everything is measured in one run, on one device, so the printed ratios compare like with like:

1. **Decode latency against context.** For each context length ``C`` the converted model reads ``C`` random
   tokens through the streaming generator (:class:`sleepify.generation.SleepDecoder`: every full window is
   consolidated and evicted, the last one is the wake context), then decodes ``steps`` tokens greedily, one
   ``feed`` per token; the per-token latency is the median over those steps. The unconverted base model
   (the converted model's own ``base``: the same weights without the inserted Jet layers) does the same with
   a full transformers ``DynamicCache`` (prefilled in chunks of ``prefill_chunk`` tokens, which keeps the
   attention mask of the prefill affordable; the cache grows with the context).
2. **Memory against context.** ``state_bytes``: the peak, over the prefill's end and every decode step, of
   the bytes of the tensors the decoder holds (for sleepify the open window: its K/V, its columns and every
   mixer state, plus the state that entered it; for the base model the ``DynamicCache``), counted by
   :func:`held_bytes` (each storage once). This is the memory that depends on the context; transient
   activations inside a forward are not in it. ``rss_delta_bytes``: resident memory of the process after
   the prefill minus before it (``/proc/self/statm``; coarse: the allocator reuses memory freed by earlier
   runs and keeps some of what it frees, so it is a lower bound on what the prefill needed).
3. **Cost of one sleep.** The time of one consolidation of a full window with ``N`` passes
   (:func:`sleepify.sleep.run_window` with every row asleep, what ``close_window`` runs) against one wake
   forward over the same window from the same state; with every block looped the expected ratio is ``N``.
4. **Converted vs base** per-token latency at the reference context (1024 when measured, otherwise the
   shortest): the inserted Jet layers (and the engine's bookkeeping) are the only extra wake cost.
5. With ``compile=True``, a third stream per context decodes through ``SleepDecoder(compile=True)``
   (``torch.compile`` of the blocks for the one-token step), interleaved with the others; it compiles in
   the warm-up (a window's first token still runs eagerly, once every ``L`` steps).

Decoding runs under ``torch.no_grad`` in the model's dtype on ``device`` (CUDA when available); on CUDA the
timers synchronise the device. ``tokens_per_s`` is one over the median per-token latency (batch 1).
"""

from __future__ import annotations

import abc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sleepify.errors import SleepifyError
from sleepify.fsutil import human_size
from sleepify.models.compat import cache_kwargs

__all__ = [
    "BenchModelSpec",
    "DEFAULT_CONTEXTS",
    "QUICK_CONTEXTS",
    "build_bench_model",
    "cache_bytes",
    "decoder_bytes",
    "format_report",
    "held_bytes",
    "run_bench",
]

DEFAULT_CONTEXTS = (1024, 4096, 16384)
QUICK_CONTEXTS = (256, 1024, 4096)
REFERENCE_CONTEXT = 1024
TARGET_FLAT = 1.1  # sleepify: latency at the longest context / at the shortest
TARGET_OVERHEAD = 1.15  # sleepify / base at the reference context


# ------------------------------------------------------------------------------------------------------------
# the default model


@dataclass
class BenchModelSpec:
    """The default benchmark model: a randomly initialised transformers Qwen2 (character tokenizer, vocab
    100) converted with ``sleepify convert``, Jet layers after ``jet_layers``, every block looped. One Jet
    layer per four base layers, as in the ``models/ouro-1.4b`` recipe (6 in 24): +7.7 % parameters (the
    recipe: +8.1 %)."""

    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 8
    num_heads: int = 4
    num_kv_heads: int = 2
    jet_layers: tuple[int, ...] = (3, 7)
    jet_heads: int = 2
    jet_head_dim: int = 64
    window: int = 512
    passes: int = 1
    max_positions: int = 32768
    seed: int = 0

    def describe(self) -> str:
        jets = ", ".join(str(i) for i in self.jet_layers)
        return (
            f"Qwen2 (transformers), {self.num_layers} layers, d = {self.hidden_size}, MLP "
            f"{self.intermediate_size}, {self.num_heads} heads / {self.num_kv_heads} KV heads, vocab 100 "
            f"(char tokenizer), random init; converted with Jet layers after base layers [{jets}] "
            f"({self.jet_heads} heads x {self.jet_head_dim}), L = {self.window}, N = {self.passes}, "
            f"hard eviction, float32"
        )


def build_bench_model(out_dir: str | Path, spec: BenchModelSpec | None = None) -> Path:
    """Write the base model (``out_dir/base``) and convert it (``out_dir/hybrid``); returns the latter."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sleepify.data.tokenizer import build_char_tokenizer
    from sleepify.stages.convert import run_convert as convert

    spec = spec or BenchModelSpec()
    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        base = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=100,
                hidden_size=spec.hidden_size,
                intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_layers,
                num_attention_heads=spec.num_heads,
                num_key_value_heads=spec.num_kv_heads,
                max_position_embeddings=spec.max_positions,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                tie_word_embeddings=False,
            )
        )
    base.save_pretrained(out_dir / "base")
    build_char_tokenizer().save_pretrained(out_dir / "base")
    overrides = [
        f"conversion.jet_layers=[{','.join(str(i) for i in spec.jet_layers)}]",
        f"conversion.jet.num_heads={spec.jet_heads}",
        f"conversion.jet.head_dim={spec.jet_head_dim}",
        f"sleep.window={spec.window}",
        f"sleep.passes={spec.passes}",
        f"train.seed={spec.seed}",
    ]
    result = convert(str(out_dir / "base"), out_dir=out_dir / "hybrid", overrides=overrides, log=None)
    return Path(result.out_dir)


# ------------------------------------------------------------------------------------------------------------
# memory accounting


def _tensors(obj: Any) -> Iterable[Tensor]:
    if obj is None:
        return
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            yield from _tensors(value)


def held_bytes(*objs: Any) -> int:
    """Bytes of the tensor storages reachable from ``objs`` (dataclasses, dicts, lists, tuples, objects'
    attributes), each storage counted once however many tensors view it."""
    seen: dict[tuple[str, int], int] = {}
    for obj in objs:
        for t in _tensors(obj):
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def decoder_bytes(decoder: Any) -> int:
    """What a :class:`~sleepify.generation.SleepDecoder` holds: the open window (its K/V, columns, mixer
    states and the state that entered it)."""
    return held_bytes(decoder.window)


def cache_bytes(cache: Any) -> int:
    """What a transformers ``DynamicCache`` holds (every layer's keys and values)."""
    return held_bytes([(layer.keys, layer.values) for layer in cache.layers])


def _rss_bytes() -> int | None:
    """Current resident memory of this process (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class DecodeRun:
    """One decode stream: its prefill time, the time of every decode step, and its memory."""

    context: int
    prefill_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    state_bytes: int = 0  # peak over the run of the tensors the decoder holds
    rss_delta_bytes: int | None = None
    sleeps: int | None = None

    def summary(self) -> dict[str, Any]:
        median = statistics.median(self.step_s)
        out = {
            "context": self.context,
            "median_s": median,
            "mean_s": statistics.fmean(self.step_s),
            "min_s": min(self.step_s),
            "max_s": max(self.step_s),
            "tokens_per_s": 1.0 / median,
            "prefill_s": self.prefill_s,
            "state_bytes": self.state_bytes,
            "rss_delta_bytes": self.rss_delta_bytes,
        }
        if self.sleeps is not None:
            out["sleeps"] = self.sleeps
        return out


def _random_ids(n: int, vocab: int, seed: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (1, n), generator=g).to(device)


class _Stream(abc.ABC):
    """A prefilled decode stream; ``step()`` decodes one greedy token and records its time.
    Subclasses: the sleep-capable decoder and the base model with a full KV cache."""

    def __init__(self, context: int) -> None:
        self.run = DecodeRun(context)
        self.logits: Tensor | None = None

    @abc.abstractmethod
    def _prefill(self, ids: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _feed(self, token: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def held(self) -> int: ...

    @torch.no_grad()
    def prefill(self, ids: Tensor) -> None:
        device = ids.device
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        self.logits = self._prefill(ids)
        _sync(device)
        self.run.prefill_s = time.perf_counter() - t0
        rss1 = _rss_bytes()
        self.run.rss_delta_bytes = None if rss0 is None or rss1 is None else rss1 - rss0
        self.run.state_bytes = self.held()

    @torch.no_grad()
    def step(self) -> None:
        assert self.logits is not None
        nxt = self.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        self.logits = self._feed(nxt)
        self.logits[:, -1].argmax(-1)  # the next token is picked inside the timed step
        _sync(nxt.device)
        self.run.step_s.append(time.perf_counter() - t0)
        self.run.state_bytes = max(self.run.state_bytes, self.held())


class SleepStream(_Stream):
    """The converted model through :class:`sleepify.generation.SleepDecoder` (sleeps window by window)."""

    def __init__(self, model: Any, context: int, compile: bool = False) -> None:
        from sleepify.generation import SleepDecoder

        super().__init__(context)
        self.decoder = SleepDecoder(model, compile=compile)

    def _prefill(self, ids: Tensor) -> Tensor:
        return self.decoder.feed(ids, logits="last")

    def _feed(self, token: Tensor) -> Tensor:
        return self.decoder.feed(token, logits="last")

    def held(self) -> int:
        return decoder_bytes(self.decoder)

    def summary(self) -> dict[str, Any]:
        self.run.sleeps = self.decoder.sleeps
        return self.run.summary()


class BaseStream(_Stream):
    """A plain transformers causal LM with a ``DynamicCache`` (full KV cache), prefilled in chunks."""

    def __init__(self, base: Any, context: int, prefill_chunk: int = 1024) -> None:
        from transformers import DynamicCache

        super().__init__(context)
        self.base = base
        self.cache = DynamicCache(config=base.config)
        self.chunk = prefill_chunk

    def _prefill(self, ids: Tensor) -> Tensor:
        out = None
        for s in range(0, ids.shape[1], self.chunk):
            out = self.base(ids[:, s : s + self.chunk], **cache_kwargs(self.cache), logits_to_keep=1)
        return out.logits

    def _feed(self, token: Tensor) -> Tensor:
        return self.base(token, **cache_kwargs(self.cache), use_cache=True, logits_to_keep=1).logits

    def held(self) -> int:
        return cache_bytes(self.cache)

    def summary(self) -> dict[str, Any]:
        expected = self.run.context + len(self.run.step_s)
        if self.cache.get_seq_length() != expected:
            raise SleepifyError(f"base cache holds {self.cache.get_seq_length()} tokens, expected {expected}")
        return self.run.summary()


def decode_latency(
    model: Any,
    contexts: Sequence[int],
    steps: int,
    prefill_chunk: int = 1024,
    say: Callable = print,
    compile: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Prefill one sleepify stream and one base-model stream per context (the same random tokens), plus a
    compiled sleepify stream with ``compile``, then decode ``steps`` tokens, every stream one step in turn
    (round robin, so a change in the machine's load hits every stream alike). Returns the per-context
    summaries ``(sleepify, base, compiled sleepify or None)``."""
    device = next(model.parameters()).device
    streams: list[tuple[_Stream, ...]] = []
    for c in contexts:
        ids = _random_ids(c, model.config.vocab_size, c, device)
        say(f"context {c}: prefill (sleepify, then the base model) ...")
        group: tuple[_Stream, ...] = (SleepStream(model, c), BaseStream(model.base, c, prefill_chunk))
        if compile:
            group += (SleepStream(model, c, compile=True),)
        for stream in group:
            stream.prefill(ids)
        streams.append(group)
    say(f"decoding {steps} tokens per stream ...")
    for _ in range(steps):
        for group in streams:
            for stream in group:
                stream.step()
    compiled = [g[2].summary() for g in streams] if compile else None
    return [g[0].summary() for g in streams], [g[1].summary() for g in streams], compiled


@torch.no_grad()
def sleep_cost(model: Any, passes: Sequence[int], repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    """Time one consolidation of a full window with ``N`` passes against one wake forward over it (same
    window, same incoming state: the state after one earlier window). Best of ``repeats``, the cases
    interleaved."""
    from sleepify.sleep import SleepState, run_window

    device = next(model.parameters()).device
    stack = model.sleep_stack()
    base_settings = model.sleep_settings()
    L = base_settings.window
    ids = _random_ids(2 * L, model.config.vocab_size, seed, device)
    rows = torch.ones(1, dtype=torch.bool, device=device)
    _, _, state, _ = run_window(stack, base_settings, ids[:, :L], None, SleepState(), rows)
    window = ids[:, L:]
    loop_blocks = stack.loop_end - stack.loop_start
    other_blocks = len(stack.blocks) - loop_blocks

    def wake() -> int:
        return run_window(stack, base_settings, window, None, state, None)[3]

    def consolidate(n: int) -> Callable[[], int]:
        settings = model.sleep_settings(passes=n)
        return lambda: run_window(stack, settings, window, None, state, rows)[3]

    runs: dict[Any, Callable[[], int]] = {"wake": wake, **{n: consolidate(n) for n in passes}}
    times: dict[Any, list[float]] = {key: [] for key in runs}
    loops: dict[Any, int] = {key: fn() for key, fn in runs.items()}  # warm-up
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits every case alike
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    wake_s = min(times["wake"])
    wp = base_settings.wake_passes
    out = []
    for n in passes:
        sleep_s = min(times[n])
        out.append(
            {
                "passes": n,
                "sleep_s": sleep_s,
                "window_forward_s": wake_s,
                "ratio": sleep_s / wake_s,
                "work_model": (other_blocks + n * wp * loop_blocks) / (other_blocks + wp * loop_blocks),
                "loop_passes_run": loops[n],
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# the whole benchmark


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def plan_bench(
    contexts: Sequence[int] | None = None,
    quick: bool = False,
    steps: int | None = None,
    repeats: int | None = None,
    device: str | None = "auto",
) -> dict[str, Any]:
    """The settings :func:`run_bench` runs with (``quick``: short contexts, fewer steps and repeats),
    checked: one line for a bad count or a CUDA device that is not there."""
    contexts = list(contexts) if contexts else list(QUICK_CONTEXTS if quick else DEFAULT_CONTEXTS)
    if any(int(c) < 1 for c in contexts):
        raise SleepifyError("give at least one positive context length")
    if device not in (None, "auto", "cpu") and device.startswith("cuda") and not torch.cuda.is_available():
        raise SleepifyError("--device cuda: no CUDA device is available")
    return {
        "contexts": contexts,
        "steps": steps if steps is not None else (8 if quick else 32),
        "repeats": repeats if repeats is not None else (1 if quick else 5),
        "device": device,
    }


def run_bench(
    model_dir: str | Path | None = None,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    steps: int = 32,
    passes: Sequence[int] = (1, 2, 4),
    repeats: int = 5,
    device: str | None = "auto",
    prefill_chunk: int = 1024,
    spec: BenchModelSpec | None = None,
    log: Callable[[str], None] | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """Run every measurement (module docstring) and return the numbers as a JSON-ready dict.

    ``model_dir``: a sleep-capable model folder (None = build :class:`BenchModelSpec` in a temp folder).
    ``compile``: also time decoding through ``SleepDecoder(compile=True)``."""
    from transformers import AutoModelForCausalLM

    import sleepify  # noqa: F401  (registers the model types)

    contexts = sorted({int(c) for c in contexts})
    if not contexts or contexts[0] < 1:
        raise SleepifyError("give at least one positive context length")
    if steps < 1:
        raise SleepifyError("--steps must be >= 1")
    say = log or (lambda _msg: None)
    dev = _device(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sleepify-bench-") as tmp:
        description = None
        if model_dir is None:
            spec = spec or BenchModelSpec()
            say("building the benchmark model ...")
            model_dir = build_bench_model(tmp, spec)
            description = spec.describe()
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval().to(dev)
        res = _measure(model, contexts, steps, passes, repeats, prefill_chunk, say, compile)
    cfg = model.config
    model_info = {
        "path": None if description else str(model_dir),
        "description": description or f"{model_dir} ({cfg.base_model_type} hybrid)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "base_parameters": sum(p.numel() for p in model.base.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "window": cfg.sleep_window,
        "passes": cfg.sleep_passes,
        "eviction": cfg.eviction,
        "jet_layers": cfg.num_jet_layers,
    }
    res = {"model": model_info, **res}
    res["total_s"] = time.perf_counter() - started
    return res


def _measure(
    model: Any,
    contexts: list[int],
    steps: int,
    passes: Sequence[int],
    repeats: int,
    prefill_chunk: int,
    say: Callable[[str], None],
    compile: bool = False,
) -> dict[str, Any]:
    if getattr(model.config, "model_type", None) != "sleep_hybrid":
        raise SleepifyError(f"not a sleep-capable model (model_type {model.config.model_type!r})")
    dev = next(model.parameters()).device
    # warm-up: first calls allocate and pick kernels
    warm = [min(contexts[0], model.config.sleep_window) + 1]
    if compile:
        say("compiling the decode step ...")
    decode_latency(model, warm, 3, prefill_chunk, lambda _msg: None, compile)
    sleepify_runs, base_runs, compiled_runs = decode_latency(
        model, contexts, steps, prefill_chunk, say, compile
    )
    say(f"sleep cost, N in {list(passes)} ...")
    sleeps = sleep_cost(model, passes, repeats)

    ref = REFERENCE_CONTEXT if REFERENCE_CONTEXT in contexts else contexts[0]
    ref_i = contexts.index(ref)
    first, last = sleepify_runs[0], sleepify_runs[-1]
    ratios = {
        "sleepify_longest_over_shortest": last["median_s"] / first["median_s"],
        "base_longest_over_shortest": base_runs[-1]["median_s"] / base_runs[0]["median_s"],
        "sleepify_over_base_at_reference": sleepify_runs[ref_i]["median_s"] / base_runs[ref_i]["median_s"],
        "sleepify_state_longest_over_shortest": last["state_bytes"] / first["state_bytes"],
        "base_cache_longest_over_shortest": base_runs[-1]["state_bytes"] / base_runs[0]["state_bytes"],
    }
    if compiled_runs is not None:
        compiled_s = compiled_runs[ref_i]["median_s"]
        ratios["compiled_over_eager_at_reference"] = compiled_s / sleepify_runs[ref_i]["median_s"]
    n_cfg = model.config.sleep_passes
    sleep_cfg = next((row for row in sleeps if row["passes"] == n_cfg), None)
    if sleep_cfg is not None:  # once every L decoded tokens one step also consolidates the window
        per_token = sleep_cfg["sleep_s"] / model.config.sleep_window
        ratios["amortised_sleep_over_decode_at_reference"] = per_token / sleepify_runs[ref_i]["median_s"]
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "device": str(dev),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "decode_steps": steps,
        "contexts": contexts,
        "reference_context": ref,
        "decode": {
            "sleepify": sleepify_runs,
            "base": base_runs,
            **({"sleepify_compiled": compiled_runs} if compiled_runs is not None else {}),
        },
        "sleep": sleeps,
        "ratios": ratios,
        "targets": {
            "sleepify_longest_over_shortest": TARGET_FLAT,
            "sleepify_over_base_at_reference": TARGET_OVERHEAD,
        },
    }


def format_report(res: dict[str, Any]) -> str:
    """The result of :func:`run_bench` as Markdown tables."""
    m = res["model"]
    r = res["ratios"]
    lines = [
        f"# sleepify bench: {res['device']} ({res['device_name']}), torch {res['torch']}, "
        f"threads {res['threads']}",
        f"model: {m['description']}; {m['parameters']:,} parameters ({m['base_parameters']:,} in the base)",
        "",
        f"## Decode, batch 1: median over {res['decode_steps']} greedy steps after the context",
        "",
        "| context | sleepify ms/token | base ms/token | sleepify tokens/s | base tokens/s | sleepify / base "
        "| sleepify prefill s | base prefill s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, b in zip(res["decode"]["sleepify"], res["decode"]["base"], strict=True):
        lines.append(
            f"| {s['context']:,} | {1e3 * s['median_s']:.2f} | {1e3 * b['median_s']:.2f} | "
            f"{s['tokens_per_s']:,.1f} | {b['tokens_per_s']:,.1f} | {s['median_s'] / b['median_s']:.2f}× | "
            f"{s['prefill_s']:.2f} | {b['prefill_s']:.2f} |"
        )
    if "sleepify_compiled" in res["decode"]:
        lines += [
            "",
            "## Decode step compiled (SleepDecoder(compile=True)), the same streams interleaved",
            "",
            "| context | eager ms/token | compiled ms/token | compiled / eager |",
            "|---:|---:|---:|---:|",
        ]
        for s, c in zip(res["decode"]["sleepify"], res["decode"]["sleepify_compiled"], strict=True):
            lines.append(
                f"| {s['context']:,} | {1e3 * s['median_s']:.2f} | {1e3 * c['median_s']:.2f} | "
                f"{c['median_s'] / s['median_s']:.2f}× |"
            )
    lines += [
        "",
        "## Memory: peak of the tensors the decoder holds (cache / state), RSS growth over the prefill",
        "",
        "| context | sleepify state MiB | base KV cache MiB | sleepify prefill RSS Δ MiB "
        "| base prefill RSS Δ MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s, b in zip(res["decode"]["sleepify"], res["decode"]["base"], strict=True):
        lines.append(
            f"| {s['context']:,} | {human_size(s['state_bytes'], 'MiB')} | "
            f"{human_size(b['state_bytes'], 'MiB')} | {human_size(s['rss_delta_bytes'], 'MiB')} | "
            f"{human_size(b['rss_delta_bytes'], 'MiB')} |"
        )
    lines += [
        "",
        f"## One sleep (consolidation of a full window, L = {m['window']}) vs one window forward",
        "",
        "| N | sleep (s) | window forward (s) | ratio | expected (work model) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in res["sleep"]:
        lines.append(
            f"| {row['passes']} | {row['sleep_s']:.4f} | {row['window_forward_s']:.4f} | "
            f"{row['ratio']:.2f}× | {row['work_model']:.2f}× |"
        )
    c0, c1, ref = res["contexts"][0], res["contexts"][-1], res["reference_context"]

    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else "MISSED"

    flat = r["sleepify_longest_over_shortest"]
    over = r["sleepify_over_base_at_reference"]
    lines += [
        "",
        "## Ratios",
        "",
        "| ratio | value | target |",
        "|---|---:|---|",
        f"| sleepify latency {c1:,} / {c0:,} | {flat:.2f} | ≤ {TARGET_FLAT} ({verdict(flat, TARGET_FLAT)}) |",
        f"| base latency {c1:,} / {c0:,} | {r['base_longest_over_shortest']:.2f} | grows |",
        f"| sleepify / base latency at {ref:,} | {over:.2f} | ≤ {TARGET_OVERHEAD} "
        f"({verdict(over, TARGET_OVERHEAD)}) |",
    ]
    if "amortised_sleep_over_decode_at_reference" in r:
        lines.append(
            f"| one sleep (N = {m['passes']}) / L, ÷ sleepify latency at {ref:,} (the amortised sleep cost "
            f"per decoded token) | {r['amortised_sleep_over_decode_at_reference']:.2f} | – |"
        )
    lines += [
        f"| sleepify state {c1:,} / {c0:,} | {r['sleepify_state_longest_over_shortest']:.2f} "
        f"| 1 (flat) when both contexts ≥ L = {m['window']} |",
        f"| base KV cache {c1:,} / {c0:,} | {r['base_cache_longest_over_shortest']:.2f} | grows ∝ context |",
        "",
        f"(total {res['total_s']:.0f} s)",
    ]
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=2) + "\n")
