"""Native Jet-Nemotron against the upstream-generated fixture.

See shared/fixtures/jet-nemotron-tiny/README.md for what each reference tensor is."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import sleepify  # noqa: F401  (registers the model types)
from sleepify.layers.jet_block import JetBlock
from sleepify.layers.state import MixerState
from sleepify.models.compat import output_cache
from sleepify.models.jet_nemotron import (
    JetNemotronCache,
    JetNemotronConfig,
    JetNemotronForCausalLM,
    JetNemotronModel,
    KVState,
)

JET_LAYERS = (0, 1, 4, 5)


@functools.cache
def _load(path: str):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, load_file(f"{path}/reference.safetensors")


@pytest.fixture
def fixture_path(fixtures_dir):
    path = fixtures_dir / "jet-nemotron-tiny"
    if not path.is_dir():
        pytest.skip(f"fixture not found at {path}")
    return path


@pytest.fixture
def ref(fixture_path):
    return _load(str(fixture_path))[1]


@pytest.fixture
def model(fixture_path):
    """Loaded once per session; tests must not modify it."""
    return _load(str(fixture_path))[0]


def test_loads_without_remote_code_and_no_missing_keys(fixture_path):
    path = fixture_path
    config = AutoConfig.from_pretrained(str(path))
    assert type(config) is JetNemotronConfig
    assert config.mixer_types == ["jet", "jet", "attn", "swa", "jet", "jet"]
    assert config.layer_types[:4] == [
        "linear_attention",
        "linear_attention",
        "full_attention",
        "sliding_attention",
    ]
    assert config.swa_window_size == 8
    jb = config.jet_block_config()
    assert (jb.num_heads, jb.head_dim, jb.head_v_dim, jb.value_dim, jb.norm_eps) == (2, 16, 32, 64, 1e-5)
    m, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True)
    assert type(m) is JetNemotronForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    weights = load_file(str(path / "model.safetensors"))
    state = m.state_dict()
    for k, v in weights.items():
        assert torch.equal(state[k], v), k
    assert type(AutoModel.from_pretrained(str(path))) is JetNemotronModel
    assert [type(layer.self_attn) is JetBlock for layer in m.model.layers] == [
        True,
        True,
        False,
        False,
        True,
        True,
    ]


@torch.no_grad()
def test_logits_hidden_states_mixer_outputs_loss(model, ref):
    captured = {}
    hooks = [
        layer.self_attn.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, out[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        out = model(ref["input_ids"], use_cache=False, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(out.logits, ref["logits"], atol=3e-4, rtol=1e-5)
    assert len(out.hidden_states) == 7
    torch.testing.assert_close(torch.stack(out.hidden_states), ref["hidden_states"], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        torch.stack([captured[i] for i in range(6)]), ref["mixer_out"], atol=1e-4, rtol=0
    )
    loss = model(ref["input_ids"], labels=ref["input_ids"], use_cache=False).loss
    torch.testing.assert_close(loss, ref["loss_with_labels"][0], atol=1e-4, rtol=1e-5)


@torch.no_grad()
def test_long_sequence(model, ref):
    out = model(ref["input_ids_long"], use_cache=False)
    torch.testing.assert_close(out.logits, ref["logits_long"], atol=3e-4, rtol=1e-5)


@torch.no_grad()
def test_prefill_cache_and_incremental_decode(model, ref):
    ids, gen = ref["input_ids"], ref["generate_ids"]
    out = model(ids[:, :24], use_cache=True)
    cache = output_cache(out)
    assert isinstance(cache, JetNemotronCache) and cache.get_seq_length() == 24
    for i in JET_LAYERS:
        torch.testing.assert_close(
            cache.recurrent_state(i), ref[f"prefill_cache.{i}.recurrent_state"], atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            cache.conv_state(i), ref[f"prefill_cache.{i}.conv_state"], atol=1e-4, rtol=0
        )
    for i, length in ((2, 24), (3, 8)):
        k, v = cache.key_value(i)
        assert k.shape == (2, 2, length, 16)
        torch.testing.assert_close(k, ref[f"prefill_cache.{i}.key"], atol=1e-4, rtol=0)
        torch.testing.assert_close(v, ref[f"prefill_cache.{i}.value"], atol=1e-4, rtol=0)
    logits = [out.logits[:, -1]]
    for t in range(1, 8):
        step = model(gen[:, 24 + t - 1 : 24 + t], cache=cache, use_cache=True)
        logits.append(step.logits[:, -1])
    assert cache.key_value(3)[0].shape[2] == 8  # the SWA cache rolls, it never grows past the window
    inc = torch.stack(logits, 1)
    torch.testing.assert_close(inc, ref["incremental_logits"], atol=1e-4, rtol=1e-5)
    full = model(gen[:, :31], use_cache=False).logits[:, 23:31]
    torch.testing.assert_close(full, ref["full_forward_logits_on_generated"], atol=3e-4, rtol=1e-5)


@torch.no_grad()
def test_greedy_generate(model, ref):
    ids = ref["input_ids"][:, :24]
    gen = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    assert torch.equal(gen, ref["generate_ids"])


@torch.no_grad()
def test_padding_is_not_a_token_upstream_bug_a_and_b(model, ref):
    """Upstream's sdpa path treats the last token as padding and packs padded batches into one row whose
    convolution leaks across the boundary; here left/right-padded rows equal the unpadded reference."""
    ids = ref["input_ids"]
    pad = 5
    batch = torch.zeros(3, 40, dtype=torch.long)
    mask = torch.zeros(3, 40, dtype=torch.long)
    batch[0, pad:] = ids[0, : 40 - pad]  # left padded
    mask[0, pad:] = 1
    batch[1] = ids[1]  # no padding
    mask[1] = 1
    batch[2, : 40 - pad] = ids[1, : 40 - pad]  # right padded
    mask[2, : 40 - pad] = 1
    batch[mask == 0] = 7  # arbitrary tokens in the pad slots
    out = model(batch, attention_mask=mask, use_cache=False)
    torch.testing.assert_close(out.logits[0, pad:], ref["logits"][0, : 40 - pad], atol=3e-4, rtol=1e-5)
    torch.testing.assert_close(out.logits[1], ref["logits"][1], atol=3e-4, rtol=1e-5)
    torch.testing.assert_close(out.logits[2, : 40 - pad], ref["logits"][1, : 40 - pad], atol=3e-4, rtol=1e-5)


@torch.no_grad()
def test_batched_generate_with_left_padding(model, ref):
    """Batched generation with padding: row 0 (left padded) reproduces the fixture's tokens, row 1 (a longer
    prompt) equals generating it alone; nothing leaks between rows."""
    ids = ref["input_ids"]
    pad = 4
    prompt = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids[:1, :24]], 1)
    prompt = torch.cat([prompt, ids[1:, :28]], 0)
    mask = torch.ones_like(prompt)
    mask[0, :pad] = 0
    gen = model.generate(prompt, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(gen[0, 28:], ref["generate_ids"][0, 24:])
    alone = model.generate(
        ids[1:, :28],
        attention_mask=torch.ones(1, 28, dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(gen[1], alone[0])


@torch.no_grad()
def test_layers_driven_one_by_one_with_explicit_states(model, ref):
    """The per-layer hook: run each decoder layer window by window with its own state (what the sleep
    engine does) and get the model's logits."""
    ids = ref["input_ids"]
    states = [None] * len(model.model.layers)
    logits = []
    for lo, hi in ((0, 16), (16, 17), (17, 30), (30, 40)):
        h = model.model.embed_tokens(ids[:, lo:hi])
        for i, layer in enumerate(model.model.layers):
            h, states[i] = layer(h, state=states[i])
        logits.append(model.lm_head(model.model.norm(h)))
    torch.testing.assert_close(torch.cat(logits, 1), ref["logits"], atol=3e-4, rtol=1e-5)
    assert (
        isinstance(states[0], MixerState)
        and isinstance(states[2], KVState)
        and isinstance(states[3], KVState)
    )
    assert states[2].key.shape[2] == 40 and states[3].key.shape[2] == 8 and states[3].length == 40


def test_save_load_round_trip(model, ref, tmp_path):
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "jet_nemotron"
    assert saved["layer_types"] == ["jet", "jet", "attn", "swa", "jet", "jet"]
    assert saved["efficient_attention_config"]["jet"]["norm_eps"] == "1e-5"
    again, info = AutoModelForCausalLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert again.config.to_dict()["layer_types"] == saved["layer_types"]
    with torch.no_grad():
        a = model(ref["input_ids"], use_cache=False).logits
        b = again.eval()(ref["input_ids"], use_cache=False).logits
    assert torch.equal(a, b)


def test_config_accepts_the_2b_json_and_builds_on_meta():
    cfg = {
        "architectures": ["JetNemotronForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_jet_nemotron.JetNemotronConfig"},
        "model_type": "jet_nemotron",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "layer_types": ["jet"] * 14 + ["attn"] + ["jet"] * 4 + ["attn", "swa", "swa"] + ["jet"] * 6,
        "efficient_attention_config": {
            "jet": {
                "conv_size": 4,
                "dconv_generator_reduction": 8,
                "dconv_implementation": "triton",
                "expand_v": 2.6666666667,
                "head_dim": 96,
                "mode": "chunk",
                "norm_eps": "1e-5",
                "num_heads": 12,
            },
            "swa": {"window_size": 1152},
        },
        "torch_dtype": "bfloat16",
    }
    config = JetNemotronConfig.from_dict(cfg)
    assert config.rope_parameters["rope_theta"] == 1e6
    jb = config.jet_block_config()
    assert (jb.key_dim, jb.value_dim, jb.head_v_dim, jb.generator_hidden) == (1152, 3072, 256, 384)
    with torch.device("meta"):
        m = JetNemotronForCausalLM(config)
    n = sum(p.numel() for p in m.parameters())  # tied embeddings counted once
    assert abs(n - 1.965e9) / 1.965e9 < 0.01
    with pytest.raises(ValueError, match="layer type"):
        JetNemotronConfig(num_hidden_layers=1, layer_types=["mamba2"])


def test_fresh_init_follows_upstream():
    config = JetNemotronConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["jet", "attn"],
        efficient_attention_config={
            "jet": {"num_heads": 2, "head_dim": 8, "expand_v": 2, "norm_eps": "1e-5"}
        },
    )
    m = JetNemotronForCausalLM(config)
    jb = m.model.layers[0].self_attn
    assert torch.equal(
        jb.dynamic_conv1d.kernel_generator.w2.weight,
        torch.zeros_like(jb.dynamic_conv1d.kernel_generator.w2.weight),
    )
    assert jb.dynamic_conv1d.kernel_generator.w2.bias.abs().sum() > 0
    assert (jb.A_log.exp() <= 16).all() and jb.A_log._no_weight_decay
    ids = torch.randint(0, 64, (2, 9))
    out = m(ids, labels=ids)
    out.loss.backward()
    for name, p in m.named_parameters():
        if "kernel_generator.w1" in name:  # zero w2 at init blocks w1's gradient, as upstream
            continue
        assert p.grad is not None, name
