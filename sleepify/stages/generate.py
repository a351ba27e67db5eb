"""The generate stage: a model folder (or Hub id) and text prompts (``sleepify generate``,
``sleepify.generate``). The model-level streaming generation it drives is :mod:`sleepify.generation`
(shipped with exported models as remote code; this module is not). N reaches the model as in train and
eval: written into its config (:func:`sleepify.sleep.apply_sleep_settings`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sleepify.errors import SleepifyError
from sleepify.generation import GenerationResult, SleepDecoder, generate
from sleepify.runs import load_model
from sleepify.sleep import apply_sleep_settings

__all__ = ["load_for_generation", "plan_generate", "run_generate"]


def load_for_generation(
    folder: str | Any, *, device: str = "auto", dtype: str = "auto"
) -> tuple[Any, Any, Any, str]:
    """``(model, tokenizer, generation config, device)`` of a sleep-capable model folder or Hub id."""
    from transformers import AutoTokenizer, GenerationConfig

    import sleepify  # noqa: F401  (registers the model types)

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:  # also: a Hub id that cannot be reached
        raise SleepifyError(f"{folder} has no usable tokenizer ({str(err).splitlines()[0]})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    net = load_model(folder, dtype).eval()  # refuses another architecture and non-finite weights
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device)
    try:
        gen_cfg = GenerationConfig.from_pretrained(folder)
    except OSError:
        gen_cfg = GenerationConfig()
    return net, tokenizer, gen_cfg, device


def plan_generate(
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    passes: int | None = None,
    max_new_tokens: int = 128,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
) -> None:
    """The checks that need no model: at least one prompt, none empty, ``batch_size`` and ``N`` >= 1, and
    sampling settings in range and finite (the CLI's option types check the same; this is the API's)."""
    if not prompts:
        raise SleepifyError("give a prompt")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise SleepifyError(f"prompt {i + 1} is empty: give the text to continue")
    if batch_size < 1:
        raise SleepifyError("batch_size must be >= 1")
    if passes is not None and passes < 1:
        raise SleepifyError(f"N must be >= 1, got {passes}")
    if max_new_tokens < 0:
        raise SleepifyError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise SleepifyError(f"temperature must be a finite number > 0, got {temperature}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise SleepifyError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise SleepifyError(f"top_k must be >= 1, got {top_k}")


def run_generate(
    folder: str | Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    greedy: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    passes: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    on_token: Callable[[int, int, str | None], None] | None = None,
) -> GenerationResult:
    """Generate from the model in ``folder`` for every prompt (batches of ``batch_size``); sampling settings
    default to the folder's generation config. ``on_token(row, token, piece)`` streams (row = prompt index).
    Returns one :class:`GenerationResult` over all prompts.

    Example::

        res = run_generate("exported", ["0110=", "1010="], max_new_tokens=4, greedy=True)
        print(res.texts)
    """
    plan_generate(prompts, batch_size=batch_size, passes=passes, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, top_k=top_k)  # fmt: skip
    net, tokenizer, gen_cfg, device = load_for_generation(folder, device=device, dtype=dtype)
    apply_sleep_settings(net.config, passes=passes)  # N reaches the model as in train and eval
    do_sample = not greedy and (
        temperature is not None or top_p is not None or top_k is not None or bool(gen_cfg.do_sample)
    )
    temperature = temperature if temperature is not None else (gen_cfg.temperature or 1.0)
    top_p = top_p if top_p is not None else (gen_cfg.top_p or 1.0)
    top_k = top_k if top_k is not None else (gen_cfg.top_k if gen_cfg.do_sample else None)
    eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tokenizer.eos_token_id
    total = GenerationResult(tokens=[], texts=[], finish=[])
    for first in range(0, len(prompts), batch_size):
        batch = list(prompts[first : first + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        for row, n in enumerate(enc.attention_mask.sum(dim=1).tolist()):
            if n == 0:  # e.g. only characters the tokenizer drops
                raise SleepifyError(f"prompt {first + row + 1} has no tokens for this model's tokenizer")
        decoder = SleepDecoder(net, backend=backend, compile=compile)
        res = generate(
            net, enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos, stop=stop,
            tokenizer=tokenizer, seed=seed, decoder=decoder,
            on_token=None if on_token is None else (lambda r, t, p, o=first: on_token(o + r, t, p)),
        )  # fmt: skip
        total.tokens += res.tokens
        total.texts = (total.texts or []) + (res.texts or [])
        total.finish += res.finish
        total.sleeps += res.sleeps
        total.prompt_tokens += res.prompt_tokens
    total.settings = {
        "L": int(net.config.sleep_window),
        "N": int(net.config.sleep_passes),
        "eviction": str(net.config.eviction),
        "device": str(device),
    }
    return total


generate_text = run_generate  # the name before the stages moved (sleepify.generation_stage)
