"""Incremental sleep-capable decoding (sleepify/generation.py) against the full-sequence forward.

The reference for every generated token is the model's own forward (the sleep engine, labels=None) over the
prefix that ends at that token: every full window before it sleeps, the window holding it is awake, and its
logits are read there. Incremental decoding must give the same logits for every prefix length, across
window boundaries, for N = 1 and N = 3, hard and sliding eviction, with and without left padding.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import sleepify  # noqa: F401
from sleepify.cli.main import cli
from sleepify.data.tokenizer import build_char_tokenizer
from sleepify.generation import SleepCache, SleepDecoder, SleepStreams, generate, sample_next
from sleepify.models.compat import cache_kwargs
from sleepify.stages.convert import convert
from tests.conftest import fla_interpreter_ok, requires_cuda

L = 8
JET = [
    "conversion.jet_layers=[0]",
    "conversion.jet.num_heads=2",
    "conversion.jet.head_dim=8",
    "conversion.jet.generator_reduction=4",
    f"sleep.window={L}",
]


def perturb_jet(model: torch.nn.Module, seed: int = 1) -> None:
    """Give the inserted Jet layers a non-zero output and a token-dependent conv kernel, so states matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.jet_layers:
            mixer = layer.mixer
            for p in (mixer.o_proj.weight, *mixer.dynamic_conv1d.kernel_generator.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def build_tiny_run(root: Path, seed: int = 0) -> Path:
    """A tiny Qwen2 (char tokenizer, vocab 100) converted with one inserted Jet layer (L = 8), perturbed and
    saved back; returns the convert folder (it holds the tokenizer and recipe.yaml)."""
    torch.manual_seed(seed)
    base = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    base.save_pretrained(root / "base")
    build_char_tokenizer().save_pretrained(root / "base")
    out = root / "run" / "convert"
    convert(str(root / "base"), out_dir=out, overrides=JET, log=None)
    model = AutoModelForCausalLM.from_pretrained(out)
    perturb_jet(model, seed + 1)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("gen"))


def load(folder: Path, passes: int = 1, eviction: str = "hard"):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.config.sleep_passes = passes
    model.config.eviction = eviction
    return model


def prefix_logits(model, ids: torch.Tensor, mask: torch.Tensor | None, p: int) -> torch.Tensor:
    """Logits at column p from the full forward over columns [0, p] (the window holding p is awake)."""
    with torch.no_grad():
        out = model(ids[:, : p + 1], attention_mask=None if mask is None else mask[:, : p + 1])
    assert out.window_kinds[-1] == "wake"
    assert all(k == "sleep" for k in out.window_kinds[:-1])
    return out.logits[:, p]


@pytest.mark.parametrize("passes", [1, 3])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_incremental_matches_prefix_forward(tiny_run: Path, passes: int, eviction: str) -> None:
    model = load(tiny_run, passes, eviction)
    T, prompt = 27, 5  # windows [0,8) [8,16) [16,24) [24,27): several sleeps during decoding
    ids = torch.randint(4, 100, (2, T))
    dec = SleepDecoder(model)
    got = dict(enumerate(dec.feed(ids[:, :prompt], logits="all").unbind(1)))
    for p in range(prompt, T):  # one token at a time, as generation feeds them
        got[p] = dec.feed(ids[:, p : p + 1])[:, -1]
    assert dec.sleeps == (T - 1) // L
    for p in range(T):
        torch.testing.assert_close(got[p], prefix_logits(model, ids, None, p), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("passes", [1, 3])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_default_logits_are_the_streaming_predictions(tiny_run: Path, passes: int, eviction: str) -> None:
    """model(ids).logits (one call over several windows) equals decoding the stream token by token, at
    every position, and the windows still sleep: a perplexity computed the usual way is the streaming one."""
    model = load(tiny_run, passes, eviction)
    T = 3 * L + 3
    ids = torch.randint(4, 100, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding in one row
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(ids, attention_mask=mask, labels=labels, logits="none").loss
    assert out.window_kinds == ["sleep", "sleep", "sleep", "wake"]
    real = mask.bool()
    assert torch.isfinite(out.logits[real]).all()
    dec = SleepStreams(model)  # every row's windows count its own tokens, in the forward too
    steps = [dec.feed(ids[:, p : p + 1], mask[:, p : p + 1])[:, -1] for p in range(T)]
    assert dec.sleeps == 3
    streamed = torch.stack(steps, dim=1)
    torch.testing.assert_close(out.logits[real], streamed[real], atol=2e-5, rtol=1e-4)
    # the usual perplexity from these logits is the model's own loss when every window is scored awake
    assert torch.isfinite(loss)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_prompt_spanning_windows_and_left_padding(tiny_run: Path, eviction: str) -> None:
    """A prompt longer than a window (its full windows sleep without a wake forward), left padding in a
    batch, then decoding across two more boundaries (every row's windows count its own tokens)."""
    model = load(tiny_run, 2, eviction)
    T, prompt = 30, 19
    ids = torch.randint(4, 100, (3, T))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :10] = 0  # a row whose whole first window is padding
    ids = ids.masked_fill(mask == 0, 0)
    dec = SleepStreams(model)
    last = dec.feed(ids[:, :prompt], mask[:, :prompt])[:, -1]
    torch.testing.assert_close(last, prefix_logits(model, ids, mask, prompt - 1), atol=2e-5, rtol=1e-4)
    for p in range(prompt, T):
        step = dec.feed(ids[:, p : p + 1], mask[:, p : p + 1])[:, -1]
        ref = prefix_logits(model, ids, mask, p)
        torch.testing.assert_close(step, ref, atol=2e-5, rtol=1e-4)


def test_feed_all_equals_prefix_forward_and_chunks(tiny_run: Path) -> None:
    """Feeding a stream in uneven chunks with logits='all' gives every column's prefix logits."""
    model = load(tiny_run, 3, "sliding")
    ids = torch.randint(4, 100, (2, 21))
    dec = SleepDecoder(model)
    parts = [dec.feed(ids[:, a:b], logits="all") for a, b in ((0, 3), (3, 12), (12, 13), (13, 21))]
    got = torch.cat(parts, dim=1)
    for p in range(21):
        torch.testing.assert_close(got[:, p], prefix_logits(model, ids, None, p), atol=2e-5, rtol=1e-4)


def test_decode_cost_does_not_depend_on_context_or_passes(tiny_run: Path) -> None:
    """A decode step runs the blocks over one token: count block calls and the tokens they see."""
    for passes in (1, 4):
        model = load(tiny_run, passes)
        dec = SleepDecoder(model)
        dec.feed(torch.randint(4, 100, (1, 3 * L + 2)))
        seen: list[int] = []
        hooks = [
            m.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0].shape[1]))
            for m in (*model.base.model.layers, *model.jet_layers)
        ]
        dec.feed(torch.tensor([[7]]))  # mid-window step: no sleep
        for h in hooks:
            h.remove()
        assert seen == [1, 1, 1]  # each of the 3 blocks once, over one token
        win = dec.window
        assert win.length == 3 and all(k.shape[2] == 3 for k, _ in win.kv.values())


def test_sampling_is_seeded_and_top_p_restricts() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]]).repeat(4, 1)
    assert sample_next(logits).tolist() == [0, 0, 0, 0]
    a = sample_next(logits, True, 1.0, 1.0, generator=torch.Generator().manual_seed(3))
    b = sample_next(logits, True, 1.0, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # top-p 0.5: only the most likely token (p ~ 0.72) survives
    many = sample_next(logits.repeat(50, 1), True, 1.0, 0.5, generator=torch.Generator().manual_seed(0))
    assert set(many.tolist()) == {0}
    # top-p 0.9 keeps the first two (0.72 + 0.27 > 0.9), never the tail
    many = sample_next(logits.repeat(200, 1), True, 2.0, 0.9, generator=torch.Generator().manual_seed(0))
    assert set(many.tolist()) == {0, 1}


def test_generate_greedy_matches_full_forward_loop(tiny_run: Path) -> None:
    """Greedy streaming generation = argmax of the full forward over the growing sequence."""
    model = load(tiny_run, 2)
    ids = torch.randint(4, 100, (1, 6))
    res = generate(model, ids, max_new_tokens=14)
    seq = ids
    for _ in range(14):
        with torch.no_grad():
            nxt = model(seq).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert res.tokens[0] == seq[0, 6:].tolist()
    assert res.finish == ["length"] and res.sleeps == (6 + 14 - 1 - 1) // L


def test_hf_generate_through_sleep_cache(tiny_run: Path) -> None:
    model = load(tiny_run, 3, "sliding")
    ids = torch.randint(4, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    ids = ids.masked_fill(mask == 0, 0)
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    ours = generate(model, ids, mask, max_new_tokens=12)
    assert out[:, 7:].tolist() == ours.tokens
    # an explicit cache can be passed, and it holds at most one window of K/V
    cache = SleepCache(model)
    out2 = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=12,
        do_sample=False,
        **cache_kwargs(cache),
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(out, out2)
    assert cache.get_seq_length() == 7 + 11 and cache.streams.sleeps == 2
    assert cache.streams.window_fill.tolist() == [16 % L or L, 18 % L or L]  # each row's own windows
    for _, dec in cache.streams.groups:
        assert all(k.shape[2] <= 2 * L - 1 for k, _ in dec.window.kv.values())


def test_hf_beam_search_reorders_the_cache(tiny_run: Path) -> None:
    """Beam search through SleepCache (rows reordered every step) = beam search re-running the full forward
    (use_cache=False), across two sleeps."""
    model = load(tiny_run, 2)
    ids = torch.randint(4, 100, (2, 7))
    kw = dict(max_new_tokens=12, num_beams=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), model.generate(ids, use_cache=False, **kw))


def test_generate_batch_left_padding_rows_independent(tiny_run: Path) -> None:
    """Each row of a left-padded batch generates what it generates alone with the same padding (windows are
    cut over the padded columns, as in training, so the padding itself is part of the row's stream)."""
    model = load(tiny_run, 2)
    tok = build_char_tokenizer()
    prompts = ["hello", "a longer prompt!"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    batch = generate(model, enc.input_ids, enc.attention_mask, max_new_tokens=10)
    for i in range(2):
        row = slice(i, i + 1)
        alone = generate(model, enc.input_ids[row], enc.attention_mask[row], max_new_tokens=10)
        assert alone.tokens[0] == batch.tokens[i]
    unpadded = generate(model, tok([prompts[1]], return_tensors="pt").input_ids, max_new_tokens=10)
    assert unpadded.tokens[0] == batch.tokens[1]  # the longest row has no padding


def test_generate_stop_strings_eos_and_streaming(tiny_run: Path) -> None:
    model = load(tiny_run)
    tok = build_char_tokenizer()
    ids = tok(["abc"], return_tensors="pt").input_ids
    free = generate(model, ids, max_new_tokens=12, tokenizer=tok)
    text = free.texts[0]
    assert len(free.tokens[0]) == 12
    stop = text[4:6]
    cut = text.find(stop)
    pieces: list[str] = []
    res = generate(
        model, ids, max_new_tokens=12, tokenizer=tok, stop=[stop], on_token=lambda i, t, s: pieces.append(s)
    )
    assert res.finish == ["stop"] and res.texts[0] == text[:cut]
    assert "".join(pieces) == text[:cut]
    eos_id = free.tokens[0][3]
    res = generate(model, ids, max_new_tokens=12, eos_token_id=eos_id)
    assert res.finish == ["eos"] and res.tokens[0] == free.tokens[0][: free.tokens[0].index(eos_id) + 1]
    # sampling: same seed, same text
    s1 = generate(model, ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    s2 = generate(model, ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    assert s1.tokens == s2.tokens


def test_triton_dynamic_conv_step_decode_path(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode step through our Triton dynamic-conv kernels (TRITON_INTERPRET=1 on CPU) agrees with the
    torch path."""
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    tk = importlib.import_module("sleepify.ops.dynamic_conv.triton_kernels")

    calls = []
    step = tk.dconv_step_triton
    monkeypatch.setattr(tk, "dconv_step_triton", lambda *a: calls.append(1) or step(*a))
    model = load(tiny_run, 2)
    ids = torch.randint(4, 100, (2, L + 3))
    ref, tri = SleepDecoder(model, backend="torch"), SleepDecoder(model, backend="triton")
    ref.feed(ids[:, : L + 1])
    tri.feed(ids[:, : L + 1])
    for p in range(L + 1, L + 3):
        torch.testing.assert_close(
            tri.feed(ids[:, p : p + 1]), ref.feed(ids[:, p : p + 1]), atol=1e-5, rtol=1e-4
        )
    assert len(calls) == 3  # the prompt's last token (alone in its window), then one per decoded token


def test_cli_generate(tiny_run: Path) -> None:
    result = CliRunner().invoke(
        cli, ["generate", str(tiny_run), "--prompt", "hi there", "--max-new-tokens", "20", "--greedy"]
    )
    assert result.exit_code == 0, result.output
    model = load(tiny_run)
    tok = build_char_tokenizer()
    ref = generate(model, tok(["hi there"], return_tensors="pt").input_ids, max_new_tokens=20, tokenizer=tok)
    assert ref.texts[0] in result.output
    bad = CliRunner().invoke(cli, ["generate", str(tiny_run)])
    assert bad.exit_code != 0 and "--prompt" in bad.output


@requires_cuda
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_gpu_decode_matches_cpu(tiny_run: Path, eviction: str) -> None:
    """backend='auto' on CUDA (fla chunk for prefill / sleep, fla fused recurrent for the decode step, our
    Triton dynamic conv) against the CPU torch path."""
    cpu = load(tiny_run, 3, eviction)
    gpu = load(tiny_run, 3, eviction).cuda()
    ids = torch.randint(4, 100, (2, 3 * L + 3))
    a, b = SleepDecoder(cpu), SleepDecoder(gpu)
    torch.testing.assert_close(b.feed(ids[:, :5].cuda()).cpu(), a.feed(ids[:, :5]), atol=1e-3, rtol=1e-3)
    for p in range(5, ids.shape[1]):
        got = b.feed(ids[:, p : p + 1].cuda()).cpu()
        torch.testing.assert_close(got, a.feed(ids[:, p : p + 1]), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["ouro-tiny", "jet-nemotron-tiny"])
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_fixture_families_incremental(tmp_path: Path, fixtures_dir: Path, name: str, eviction: str) -> None:
    """Ouro (wake forward = 4 passes with Jet layers in the loop: the window is recomputed per token, still
    exact) and Jet-Nemotron (its own JetBlock / attention layers, SWA) decode like the prefix forward."""
    small = [
        "conversion.jet.num_heads=2",
        "conversion.jet.head_dim=8",
        "conversion.jet.generator_reduction=4",
    ]
    overrides = ["conversion.jet_layers=[1]", *small] if name == "ouro-tiny" else ["conversion.loop.start=1"]
    out = convert(
        str(fixtures_dir / name), out_dir=tmp_path / "out", overrides=[*overrides, "sleep.window=6"], log=None
    )
    model = AutoModelForCausalLM.from_pretrained(out.out_dir).eval()
    if name == "ouro-tiny":
        perturb_jet(model)
    model.config.sleep_passes, model.config.eviction = 2, eviction
    ids = torch.randint(4, model.config.vocab_size, (2, 15))
    dec = SleepDecoder(model)
    got = dict(enumerate(dec.feed(ids[:, :4], logits="all").unbind(1)))
    for p in range(4, 15):
        got[p] = dec.feed(ids[:, p : p + 1])[:, -1]
    for p in range(15):
        torch.testing.assert_close(got[p], prefix_logits(model, ids, None, p), atol=5e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# attention paths, preallocated K/V, compiled decode step


def set_attention(model, impl: str) -> None:
    """Switch the base layers between the window attention op ("sleepify") and transformers' own paths."""
    model.base.config._attn_implementation = impl


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_attention_op_equals_transformers_mask_path(tiny_run: Path, eviction: str) -> None:
    """The window attention op (indices; SDPA and the torch reference) = transformers' eager attention with
    the engine's 4-D mask: the forward with left padding, its gradients, and incremental decoding."""
    model = load(tiny_run, 2, eviction).train()
    ids = torch.randint(4, 100, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    results = []
    for impl, backend in (("eager", None), ("sleepify", None), ("sleepify", {"attn": "torch"})):
        set_attention(model, impl)
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids, sleep_passes=2, backend=backend)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            dec = SleepDecoder(model, backend=backend)
            steps = [dec.feed(ids[:, :6], mask[:, :6], logits="all")]
            steps += [dec.feed(ids[:, p : p + 1]) for p in range(6, 21)]
        results.append((out.loss, grads, torch.cat(steps, dim=1)))
    set_attention(model, "sleepify")
    ref_loss, ref_grads, ref_steps = results[0]
    for loss, grads, steps in results[1:]:
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(steps, ref_steps, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_decode_writes_kv_in_place(tiny_run: Path, eviction: str) -> None:
    """Decode steps write K/V into a buffer preallocated for the window (L keys, 2L - 1 with the kept keys of
    sliding eviction): the storage does not move within a window, and the window's K/V are views of it."""
    model = load(tiny_run, 2, eviction)
    dec = SleepDecoder(model)
    dec.feed(torch.randint(4, 100, (2, L + 2)))  # one sleep, then 2 columns of the second window
    bufs = dec.window.kv_buffers
    assert bufs and bufs.keys() == dec.window.kv.keys()
    capacity = 2 * L - 1 if eviction == "sliding" else L
    ptrs = {key: b.key.data_ptr() for key, b in bufs.items()}
    for _ in range(L - 2):
        dec.feed(torch.randint(4, 100, (2, 1)))
    for key, b in dec.window.kv_buffers.items():
        assert b.key.shape[2] == capacity and b.key.data_ptr() == ptrs[key]
        k, _ = dec.window.kv[key]
        assert k.data_ptr() == b.key.data_ptr() and k.shape[2] == b.length == capacity


@fla_interpreter_ok
def test_fla_attention_in_the_model(tiny_run: Path) -> None:
    """backend={"attn": "fla"}: fla's parallel_attn (prompt, consolidation) and attn_decoding_one_step (decode
    steps) in the model, against the default path (TRITON_INTERPRET=1 on CPU)."""
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    model = load(tiny_run, 1)
    ids = torch.randint(4, 100, (1, L))  # tiny: the interpreter is slow
    ref, fla = SleepDecoder(model), SleepDecoder(model, backend={"attn": "fla"})
    torch.testing.assert_close(fla.feed(ids[:, :5]), ref.feed(ids[:, :5]), atol=2e-5, rtol=1e-4)
    for p in range(5, L):
        step = fla.feed(ids[:, p : p + 1])
        torch.testing.assert_close(step, ref.feed(ids[:, p : p + 1]), atol=2e-5, rtol=1e-4)


def test_compiled_decode_step_matches_eager(tiny_run: Path) -> None:
    """SleepDecoder(compile=True): the decode steps through torch.compile'd blocks give the eager logits,
    across a sleep."""
    model = load(tiny_run, 2)
    ids = torch.randint(4, 100, (2, L + 4))
    eager, compiled = SleepDecoder(model), SleepDecoder(model, compile=True)
    torch.testing.assert_close(compiled.feed(ids[:, :3]), eager.feed(ids[:, :3]))
    for p in range(3, ids.shape[1]):
        want = eager.feed(ids[:, p : p + 1])
        torch.testing.assert_close(compiled.feed(ids[:, p : p + 1]), want, atol=1e-5, rtol=1e-4)
    tokens = generate(model, ids[:, :3], max_new_tokens=6, compile=True).tokens
    assert tokens == generate(model, ids[:, :3], max_new_tokens=6).tokens


@requires_cuda
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_gpu_flash_attention_decode(tiny_run: Path, eviction: str) -> None:
    """bf16 on CUDA: flash-attn (flash_attn_func for windows, flash_attn_with_kvcache on the K/V buffers of
    decode steps) against SDPA, prompt and decode steps across two sleeps."""
    from sleepify.ops.attention import flash_attn_available

    if not flash_attn_available():
        pytest.skip("needs flash-attn")
    model = load(tiny_run, 2, eviction).cuda().to(torch.bfloat16)
    ids = torch.randint(4, 100, (2, 2 * L + 3), device="cuda")
    a, b = SleepDecoder(model, backend={"attn": "sdpa"}), SleepDecoder(model, backend={"attn": "flash"})
    torch.testing.assert_close(b.feed(ids[:, :5]), a.feed(ids[:, :5]), atol=5e-2, rtol=5e-2)
    for p in range(5, ids.shape[1]):
        got = b.feed(ids[:, p : p + 1])
        torch.testing.assert_close(got, a.feed(ids[:, p : p + 1]), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["ouro-tiny", "jet-nemotron-tiny"])
def test_attention_op_in_native_families(tmp_path: Path, fixtures_dir: Path, name: str) -> None:
    """Ouro (HF-style layers) and Jet-Nemotron (its own attention, SWA) through the window attention op equal
    their transformers SDPA + 4-D mask path (real positions of a left-padded batch, sliding eviction)."""
    out = convert(str(fixtures_dir / name), out_dir=tmp_path / "out", overrides=["sleep.window=6"], log=None)
    model = AutoModelForCausalLM.from_pretrained(out.out_dir).eval()
    model.config.eviction = "sliding"
    assert model.base.config._attn_implementation == "sleepify"  # the default ("sdpa") maps to the op
    ids = torch.randint(4, model.config.vocab_size, (2, 14))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        got = model(ids, attention_mask=mask, logits="all").logits
        set_attention(model, "sdpa")
        want = model(ids, attention_mask=mask, logits="all").logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-5, rtol=1e-4)
