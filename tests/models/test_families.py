"""Every transformers decoder family through the one generic adapter, from a checkpoint that transformers
itself builds and saves: it converts with no recipe (the default plan), the converted model computes the
base model's logits (transformers' own forward is the reference), trains one step with N = 2 sleep passes,
and generates (sleepify's streaming generation = a greedy loop over the model's full forward)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

import sleepify  # noqa: F401 - registers the model types
from sleepify.config.schema import TrainSection
from sleepify.generation import generate
from sleepify.models.compat import transformers_at_least
from sleepify.models.hybrid.families import DECODER_SPECS, family_for
from sleepify.stages.convert import convert
from sleepify.training.optim import MuonAdamW
from tests.helpers import one_thread  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 96
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
# what each family's config needs beyond SMALL; the values that the adapter must honour are set away from
# their neutral value (multipliers != 1, soft caps that bite, sliding windows shorter than the sequence)
FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": dict(use_sliding_window=True, sliding_window=5, max_window_layers=2),
    "qwen3": dict(head_dim=8),
    "mistral": dict(head_dim=8, sliding_window=5),
    "gemma2": dict(
        head_dim=8,
        sliding_window=5,
        final_logit_softcapping=3.0,
        attn_logit_softcapping=2.0,
        query_pre_attn_scalar=8,
    ),
    "gemma3_text": dict(
        head_dim=8,
        sliding_window=5,
        layer_types=SLIDING,
        final_logit_softcapping=3.0,
        query_pre_attn_scalar=8,
    ),
    "phi3": dict(sliding_window=5),
    "olmo2": {},
    "granite": dict(
        embedding_multiplier=3.0, logits_scaling=2.5, residual_multiplier=0.7, attention_multiplier=0.3
    ),
    "smollm3": dict(no_rope_layer_interval=2),
    "gemma": dict(head_dim=8),
    "olmo": {},
    "olmo3": dict(sliding_window=5, layer_types=SLIDING),
    "starcoder2": dict(sliding_window=5),
    "cohere": dict(logit_scale=0.5),
    "cohere2": dict(head_dim=8, sliding_window=5, layer_types=SLIDING, logit_scale=0.5),
    "glm": dict(head_dim=8),
    "glm4": dict(head_dim=8),
    "helium": dict(head_dim=8),
    "exaone4": dict(sliding_window=5, layer_types=SLIDING),
    "ministral": dict(head_dim=8, sliding_window=5, layer_types=SLIDING),
    "seed_oss": dict(head_dim=8),
    "apertus": {},
    "arcee": dict(head_dim=8),
    "nemotron": dict(head_dim=8),
    "stablelm": {},
}


def test_every_generic_family_is_tested() -> None:
    assert sorted(FAMILIES) == sorted(DECODER_SPECS)


def tiny_checkpoint(model_type: str, folder) -> torch.nn.Module:
    """A transformers-built model with random weights (norm weights moved off 1) saved as a HF folder."""
    config = AutoConfig.for_model(model_type, **SMALL, **FAMILIES[model_type])
    torch.manual_seed(0)
    base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(folder)
    return base


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_converts_preserves_trains_generates(tmp_path, model_type: str) -> None:
    needs = DECODER_SPECS[model_type].min_transformers
    if needs and not transformers_at_least(needs):
        pytest.skip(f"{model_type} is checked on transformers >= {needs} only (refused below: next test)")
    tiny_checkpoint(model_type, tmp_path / "base")
    res = convert(str(tmp_path / "base"), out_dir=tmp_path / "out", log=None)
    plan = res.plan
    # the default plan: one Jet layer among the looped blocks, a few percent more parameters
    assert plan.jet_layers and all(v != "recipe" for v in plan.sources.values())
    start, end = plan.loop_range
    assert any(r["inserted"] and start <= r["index"] < end for r in res.block_table)
    assert 0 < res.params_after - res.params_before <= 0.10 * res.params_before

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    ids = torch.randint(3, VOCAB, (2, 13))  # longer than the sliding windows (5)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-4, rtol=0)

    # one training step: 3 windows of 5, the first two asleep (N = 2 passes), the last scored
    model.train()
    labels = ids.clone()
    labels[:, :11] = -100  # position p predicts labels[p + 1]: tokens 0..9 make no scored prediction
    out = model(ids, labels=labels, sleep_window=5, sleep_passes=2)
    assert out.window_kinds == ["sleep", "sleep", "wake"]
    opt = MuonAdamW(model, TrainSection())
    out.loss.backward()
    jet_out = model.jet_layers[0].mixer.o_proj.weight
    assert jet_out.grad is not None and jet_out.grad.abs().sum() > 0  # the Jet layer's state reaches the loss
    before = jet_out.detach().clone()
    opt.step()
    assert not torch.equal(before, jet_out) and torch.isfinite(jet_out).all()

    # generation that sleeps (window 4) = greedy over the model's own full forward
    model.eval()
    model.config.sleep_window = 4
    prompt = ids[:, :6]
    gen = generate(model, prompt, max_new_tokens=5)
    assert gen.sleeps > 0
    got = gen.tokens
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert [list(t) for t in got] == seq[:, 6:].tolist()


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "mistral", "cohere2"])
def test_window_attention_equals_transformers_eager(tmp_path, model_type: str) -> None:
    """Sliding layers, per-layer-type RoPE and attention soft-capping through the window attention op equal
    transformers' eager attention given the engine's 4-D masks: left padding, three windows, sliding
    eviction."""
    needs = DECODER_SPECS[model_type].min_transformers
    if needs and not transformers_at_least(needs):
        pytest.skip(f"{model_type} is checked on transformers >= {needs} only")
    tiny_checkpoint(model_type, tmp_path / "base")
    res = convert(str(tmp_path / "base"), out_dir=tmp_path / "out", log=None)
    model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    with torch.no_grad():  # Jet layers that write: the windows' states matter
        for p in model.jet_layers.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.config.eviction = "sliding"
    ids = torch.randint(3, VOCAB, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kw = dict(attention_mask=mask, logits="all", sleep_window=6, sleep_passes=2)
    with torch.no_grad():
        got = model(ids, **kw).logits
        model.base.config._attn_implementation = "eager"
        want = model(ids, **kw).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)


def test_a_family_checked_on_newer_transformers_is_refused_on_older(monkeypatch) -> None:  # noqa: ANN001
    import sleepify.models.hybrid.families as families
    from sleepify.errors import ModelLoadError

    needs = DECODER_SPECS["gemma2"].min_transformers
    assert needs
    monkeypatch.setattr(families, "transformers_at_least", lambda version: False)
    with pytest.raises(ModelLoadError, match=f"'gemma2' needs transformers >= {needs}"):
        family_for("gemma2")
    assert family_for("llama") is families.SUPPORTED_FAMILIES["llama"]  # no minimum: every version
