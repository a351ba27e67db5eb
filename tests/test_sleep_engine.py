"""The sleep engine (sleepify/sleep.py): windows, consolidation passes, eviction, padding, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sleepify.errors import SleepifyError
from sleepify.sleep import sleep_forward
from tests.models.test_hybrid import FAMILIES, SMALL, build

L = 4


def perturb_jets(model, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.jet_layers.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def engine(model, ids, state=None, sleep_passes=None, eviction=None, **kw):
    """The engine itself (windows over the batch's columns; continues a ``SleepState``)."""
    settings = model.sleep_settings(passes=sleep_passes, eviction=eviction)
    with torch.no_grad():
        return sleep_forward(model.sleep_stack(), settings, ids, state=state, **kw)


def last_window_labels(ids):
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]  # predictions at T-3, T-2 are scored: only the last window is awake
    return labels


@pytest.mark.parametrize("family", ["qwen2", "ouro", "jet_nemotron"])
def test_hard_eviction_forgets_without_ssm_memory(family):
    """Zero-output Jet layers (and, for Jet-Nemotron, its own jet layers zeroed): an evicted window has no
    influence on later predictions; real Jet layers carry it, and N changes what they carry."""
    torch.manual_seed(0)
    _, model = build(FAMILIES[family](), jet_after=(1,), window=L)
    if family == "jet_nemotron":
        with torch.no_grad():
            for layer in model.base.model.layers:
                if layer.is_jet:
                    layer.self_attn.o_proj.weight.zero_()
    ids = torch.randint(0, 64, (2, 3 * L))
    other = ids.clone()
    other[:, :L] = torch.randint(0, 64, (2, L))
    labels = last_window_labels(ids)
    with torch.no_grad():
        a = model(ids, labels=labels, sleep_passes=2)
        b = model(other, labels=labels, sleep_passes=2)
        assert a.window_kinds == ["sleep", "sleep", "wake"]
        torch.testing.assert_close(a.logits[:, 2 * L :], b.logits[:, 2 * L :], atol=1e-6, rtol=0)
        perturb_jets(model)
        a1 = model(ids, labels=labels, sleep_passes=1).logits[:, 2 * L :]
        b1 = model(other, labels=labels, sleep_passes=1).logits[:, 2 * L :]
        a3 = model(ids, labels=labels, sleep_passes=3).logits[:, 2 * L :]
    assert (a1 - b1).abs().max() > 1e-4
    assert (a1 - a3).abs().max() > 1e-4


@pytest.mark.parametrize("passes", [1, 3])
def test_pass_count(passes):
    """Count calls of a looped block with a hook: N * wake_passes per slept window, wake_passes awake."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["ouro"](), jet_after=(1,), window=L, loop=(1, 4))
    calls = {"looped": 0, "prelude": 0}
    model.base.model.layers[1].register_forward_hook(
        lambda *a: calls.__setitem__("looped", calls["looped"] + 1)
    )
    model.base.model.layers[0].register_forward_hook(
        lambda *a: calls.__setitem__("prelude", calls["prelude"] + 1)
    )
    ids = torch.randint(0, 64, (1, 3 * L - 1))
    with torch.no_grad():
        out = model(ids, labels=last_window_labels(ids), sleep_passes=passes)
    wp = 3  # Ouro's total_ut_steps
    assert out.window_kinds == ["sleep", "sleep", "wake"]
    assert out.window_passes == [passes * wp, passes * wp, wp]
    assert calls["looped"] == sum(out.window_passes)
    assert calls["prelude"] == 3


def _grad_of_first_window_tokens(model, ids, **kw):
    model.zero_grad()
    out = model(ids, labels=last_window_labels(ids), logits="none", **kw)
    out.loss.backward()
    emb = model.get_input_embeddings().weight.grad
    only_first = sorted(set(ids[:, :L].flatten().tolist()) - set(ids[:, L:].flatten().tolist()))
    return (
        out.loss.detach(),
        emb[only_first].clone(),
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    )


def test_gradients_reach_sleep_only_inputs_and_truncation():
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(0, 2), window=L)
    perturb_jets(model)
    model.train()
    ids = torch.randint(0, 64, (2, 3 * L))
    _, g_full, _ = _grad_of_first_window_tokens(model, ids, sleep_passes=3)
    assert g_full.abs().max() > 0  # tokens seen only while sleeping get gradients, through S
    _, g_all, _ = _grad_of_first_window_tokens(model, ids, sleep_passes=3, truncate_passes=3)
    torch.testing.assert_close(g_all, g_full, atol=0, rtol=0)  # truncating to all passes = no truncation
    _, g_tp, _ = _grad_of_first_window_tokens(model, ids, sleep_passes=3, truncate_passes=1)
    assert g_tp.abs().max() == 0  # the whole stack loops: only the last pass backpropagates
    _, g_tw, _ = _grad_of_first_window_tokens(model, ids, sleep_passes=3, truncate_windows=2)
    assert g_tw.abs().max() == 0  # the state entering window 1 is detached
    _, g_tw3, _ = _grad_of_first_window_tokens(model, ids, sleep_passes=3, truncate_windows=3)
    torch.testing.assert_close(g_tw3, g_full, atol=0, rtol=0)


def test_checkpointing_same_loss_and_gradients():
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(1,), window=L)
    perturb_jets(model)
    model.train()
    ids = torch.randint(0, 64, (2, 3 * L - 1))
    for eviction in ("hard", "sliding"):
        loss_a, _, grads_a = _grad_of_first_window_tokens(model, ids, sleep_passes=2, eviction=eviction)
        loss_b, _, grads_b = _grad_of_first_window_tokens(
            model, ids, sleep_passes=2, eviction=eviction, checkpoint_windows=True
        )
        torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=0)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_left_padding_equals_unpadded_stream(eviction):
    """The engine over the batch's columns (as training runs it): a row left-padded by p gives, on its real
    tokens, what the unpadded row gives when its first window holds L - p tokens (run as its own call, then
    continued from the returned state). The model's forward without labels gives the row what it gives
    unpadded (tests/test_streaming.py)."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(0, 2), window=L)
    perturb_jets(model)
    p = 3
    ids = torch.randint(1, 64, (1, 3 * L - p))
    padded = torch.cat([torch.zeros(1, p, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, p, dtype=torch.long), torch.ones_like(ids)], 1)
    full = engine(model, padded, attention_mask=mask, sleep_passes=2, eviction=eviction, logits="all")
    first = engine(
        model, ids[:, : L - p], sleep_passes=2, eviction=eviction, logits="all", sleep_windows=[True]
    )
    rest = engine(model, ids[:, L - p :], first.state, sleep_passes=2, eviction=eviction, logits="all")
    stream = torch.cat([first.logits, rest.logits], 1)
    # float32 rounding only (in float64 both are identical): up to ~1.1e-5 when the conv windows restart
    torch.testing.assert_close(full.logits[:, p:], stream, atol=3e-5, rtol=0)


def test_rows_are_independent_of_batch_composition():
    """Rows that disagree on a window (one awake, one asleep) each get exactly their own result."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(1,), window=L, loop=(1, 3))
    perturb_jets(model)
    ids = torch.randint(0, 64, (2, 3 * L))
    labels = torch.full_like(ids, -100)
    labels[0, L + 2] = ids[0, L + 2]  # row 0: window 1 is awake
    labels[:, -1] = ids[:, -1]
    for eviction in ("hard", "sliding"):
        with torch.no_grad():
            both = model(ids, labels=labels, sleep_passes=3, eviction=eviction, logits="all")
            assert both.window_kinds == ["sleep", "mixed", "wake"]
            for r in range(2):
                alone = model(
                    ids[r : r + 1], labels=labels[r : r + 1], sleep_passes=3, eviction=eviction, logits="all"
                )
                torch.testing.assert_close(both.logits[r], alone.logits[0], atol=1e-5, rtol=0)
        tokens = int((labels[:, 1:] != -100).sum())
        assert both.num_loss_tokens == tokens


def test_sliding_eviction_n1_is_sliding_window_attention():
    """N = 1 with sliding eviction = the base model with sliding-window attention of width L."""
    torch.manual_seed(0)
    base_cfg = Qwen2Config(**SMALL)
    base, model = build(base_cfg, jet_after=(), window=L)
    swa = copy.deepcopy(base_cfg.to_dict())
    swa.pop("model_type")
    swa.update(
        use_sliding_window=True, sliding_window=L, max_window_layers=0, layer_types=["sliding_attention"] * 3
    )
    ref_model = Qwen2ForCausalLM(Qwen2Config(**swa)).eval()
    ref_model.load_state_dict(base.state_dict())
    ids = torch.randint(0, 64, (2, 3 * L + 1))
    with torch.no_grad():
        ref = ref_model(ids).logits
        out = model(ids, eviction="sliding", logits="all")
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)


def test_no_labels_sleeps_every_window_but_the_last():
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(1,), window=L)
    ids = torch.randint(0, 64, (1, 2 * L + 1))
    out = engine(model, ids, sleep_passes=2, logits="wake")  # the cheap mode: no logits for slept windows
    streamed = engine(model, ids, sleep_passes=2)  # the default: every position's streaming prediction
    assert out.window_kinds == streamed.window_kinds == ["sleep", "sleep", "wake"]
    assert out.window_passes == streamed.window_passes == [2, 2, 1]
    assert torch.isnan(out.logits[:, : 2 * L]).all() and not torch.isnan(out.logits[:, 2 * L :]).any()
    assert torch.isfinite(streamed.logits).all()
    torch.testing.assert_close(streamed.logits[:, 2 * L :], out.logits[:, 2 * L :], atol=0, rtol=0)
    for a, b in zip(streamed.state.mixers.values(), out.state.mixers.values(), strict=True):
        torch.testing.assert_close(a.recurrent, b.recurrent, atol=0, rtol=0)  # the same consolidation


@pytest.mark.parametrize("family", ["qwen2", "ouro"])
def test_lockstep_runs_what_another_rank_needs_with_the_same_result(family):
    """Under ``lockstep`` (sharded training) a window runs "mixed" when another rank disagrees on its kind:
    the loss and the gradients are those of the local decision, and every block call's output reaches the
    backward pass (a zero-weighted term), so each rank's backward visits the same calls."""
    from sleepify.sleep import lockstep

    torch.manual_seed(0)
    _, model = build(FAMILIES[family](), jet_after=(1,), window=L)
    perturb_jets(model)
    model.train()
    ids = torch.randint(0, 64, (2, 3 * L))
    labels = last_window_labels(ids)  # locally: sleep, sleep, wake

    def loss_and_grads(**kw):
        model.zero_grad()
        out = model(ids, labels=labels, sleep_passes=2)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    plain, plain_grads = loss_and_grads()
    # the other rank: its rows are awake in window 1 and asleep in window 2
    other = torch.tensor([[3, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0]])  # rows: n, then per window
    with lockstep(lambda flags: torch.maximum(flags, other)):
        synced, synced_grads = loss_and_grads()
    assert plain.window_kinds == ["sleep", "sleep", "wake"]
    assert synced.window_kinds == ["sleep", "mixed", "mixed"]
    torch.testing.assert_close(synced.loss, plain.loss)
    assert synced_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(synced_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    longer = torch.tensor([[4, 0, 0]] + [[0, 0, 0]] * 3)  # another rank cut 4 windows
    with (
        lockstep(lambda flags: torch.maximum(flags, longer)),
        pytest.raises(SleepifyError, match="this rank has 3 windows, another has 4"),
    ):
        model(ids, labels=labels)


@pytest.mark.parametrize("logits", ["wake", "all"])
@pytest.mark.parametrize("keep", [1, L + 1, 3 * L])
def test_logits_to_keep_returns_the_last_columns(logits, keep):
    """``logits_to_keep=k``: the last ``k`` columns of the full logits (NaN where a slept window gives none),
    the same loss."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(1,), window=L)
    ids = torch.randint(0, 64, (2, 3 * L - 1))
    labels = last_window_labels(ids)
    with torch.no_grad():
        full = model(ids, labels=labels, logits=logits)
        kept = model(ids, labels=labels, logits=logits, logits_to_keep=keep)
    assert kept.logits.shape == (2, min(keep, 3 * L - 1), full.logits.shape[-1])
    torch.testing.assert_close(kept.logits, full.logits[:, -keep:], equal_nan=True)
    torch.testing.assert_close(kept.loss, full.loss)


# ------------------------------------------------------------------------------------------------------------
# the short-convolution state (sleep.conv_state, docs/sleep-semantics.md)


def _conv_seen(model, ids, passes):
    """Per call of the Jet mixer: the largest |value| in the conv window it starts from (0.0 = empty)."""
    seen: list[float] = []

    def hook(_module, args, kwargs):  # noqa: ANN001, ANN202
        state = kwargs.get("state", args[1] if len(args) > 1 else None)
        seen.append(0.0 if state is None or not state.conv else max(float(c.abs().max()) for c in state.conv))

    handle = model.jet_layers[0].mixer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids, sleep_passes=passes, logits="none")
    finally:
        handle.remove()
    return seen


# What the first Jet mixer's conv window holds when each of its 7 calls starts (windows: sleep with 3
# passes, sleep with 3, wake): 0 = empty, 1 = carried from the call before.
CONV_SEEN = {
    "reset": [0, 0, 0, 0, 0, 0, 0],
    "carry": [0, 1, 1, 1, 1, 1, 1],
    "carry-across-windows": [0, 0, 0, 1, 0, 0, 1],
    "carry-between-passes": [0, 1, 1, 0, 1, 1, 0],
}


@pytest.mark.parametrize("conv_state", sorted(CONV_SEEN))
def test_conv_state_between_passes_and_windows(conv_state):
    """reset (Algorithm 1): every pass of every window starts with an empty conv window, only S carries;
    carry: pass n continues from the conv window pass n - 1 left, and a window from the previous one's;
    carry-across-windows / carry-between-passes: only the one path."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(0,), window=L)
    perturb_jets(model)
    model.config.conv_state = conv_state
    ids = torch.randint(1, 64, (2, 3 * L))
    seen = _conv_seen(model, ids, passes=3)
    assert [int(x > 0) for x in seen] == CONV_SEEN[conv_state]


@pytest.mark.parametrize(
    ("variant", "same_as"), [("carry-across-windows", "carry"), ("carry-between-passes", "reset")]
)
def test_conv_state_halves_at_one_pass(variant, same_as):
    """With N = 1 there is no pass to carry between: each half of carry is one of the two full settings."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(0, 2), window=L)
    perturb_jets(model)
    ids = torch.randint(1, 64, (2, 3 * L))
    logits = {}
    for conv_state in (variant, same_as):
        model.config.conv_state = conv_state
        with torch.no_grad():
            logits[conv_state] = model(ids, sleep_passes=1).logits
    torch.testing.assert_close(logits[variant], logits[same_as], rtol=0, atol=0)


@pytest.mark.parametrize("conv_state", sorted(CONV_SEEN))
def test_conv_state_at_eviction(conv_state):
    """What the next window computes depends on the carried conv windows only under carry."""
    torch.manual_seed(0)
    _, model = build(FAMILIES["qwen2"](), jet_after=(0, 2), window=L)
    perturb_jets(model)
    model.config.conv_state = conv_state
    ids = torch.randint(1, 64, (1, 2 * L))
    state = engine(model, ids[:, :L], sleep_passes=2, sleep_windows=[True], logits="none").state
    noisy = copy.copy(state)
    noisy.mixers = {
        i: type(m)(m.recurrent, tuple(torch.randn_like(c) for c in m.conv)) for i, m in state.mixers.items()
    }
    a = engine(model, ids[:, L:], state, sleep_passes=2).logits
    b = engine(model, ids[:, L:], noisy, sleep_passes=2).logits
    if conv_state in ("reset", "carry-between-passes"):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert (a - b).abs().max() > 1e-4
