"""Conformance of sleepify's native Ouro against the upstream reference outputs in ``fixtures/ouro-tiny``.

Every reference tensor was produced by the upstream ByteDance remote code (see the fixture's README); the
tests here only load ``config.json`` + ``model.safetensors`` with our classes and compare.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

import sleepify  # noqa: F401  (registers "ouro")
from sleepify.models.compat import output_cache
from sleepify.models.ouro import OuroConfig, OuroForCausalLM, OuroModel, ensure_looped_cache

ATOL, RTOL = 5e-5, 1e-5
PROMPT = 24  # prompt length used by the generation references


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ouro_dir(fixtures_dir):
    path = fixtures_dir / "ouro-tiny"
    if not (path / "reference.safetensors").is_file():
        pytest.skip(f"ouro-tiny fixture not found at {path}")
    return path


@pytest.fixture
def ref(ouro_dir):
    return load_file(str(ouro_dir / "reference.safetensors"))


_MODELS: dict[tuple[str, str], OuroForCausalLM] = {}


def _load(ouro_dir, attn: str = "sdpa") -> OuroForCausalLM:
    key = (str(ouro_dir), attn)
    if key not in _MODELS:
        model, info = AutoModelForCausalLM.from_pretrained(
            ouro_dir, attn_implementation=attn, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        _MODELS[key] = model.eval()
    return _MODELS[key]


@pytest.fixture
def model(ouro_dir):
    return _load(ouro_dir, "sdpa")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------------------------
# config / registration / loading


def test_autoconfig_loads_without_remote_code(ouro_dir):
    config = AutoConfig.from_pretrained(ouro_dir)  # config.json carries auto_map, no code files exist
    assert type(config) is OuroConfig
    assert config.total_ut_steps == 4 and config.early_exit_threshold == 1.0
    assert config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}
    assert config.head_dim == 16 and config.num_key_value_heads == 2
    assert config.layer_types == ["full_attention"] * 4
    assert config.auto_map["AutoModelForCausalLM"] == "modeling_ouro.OuroForCausalLM"
    # the explicit local registration wins even when remote code is allowed (no code files exist here)
    assert type(AutoConfig.from_pretrained(ouro_dir, trust_remote_code=True)) is OuroConfig


def test_real_ouro_config_fields():
    # the released Ouro-1.4B config.json values (architectures.md section 1.2), legacy rope keys included
    config = OuroConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=128,
        max_position_embeddings=65536,
        rope_theta=1000000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        total_ut_steps=4,
        early_exit_threshold=1.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        torch_dtype="bfloat16",
        auto_map={"AutoConfig": "configuration_ouro.OuroConfig"},
    )
    assert config.rope_parameters["rope_theta"] == 1000000.0
    assert config.dtype == torch.bfloat16
    with torch.device("meta"):
        model = OuroForCausalLM(config)
    assert model.model.num_cache_slots() == 96
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 1.4347e9) < 1e6  # [computed] in architectures.md: 1.4347B
    assert model.model.early_exit_gate.weight.shape == (1, 2048)


def test_loading_is_complete_and_exact(ouro_dir, model):
    from safetensors.torch import load_file as load

    weights = load(str(ouro_dir / "model.safetensors"))
    state = model.state_dict()
    assert len(weights) == 49
    assert set(weights) == set(state)
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), name
    assert type(model) is OuroForCausalLM
    assert isinstance(model.model.layers, torch.nn.ModuleList) and len(model.model.layers) == 4


def test_automodel_is_registered(ouro_dir):
    base = AutoModel.from_pretrained(ouro_dir)
    assert type(base) is OuroModel


# ------------------------------------------------------------------------------------------------------------
# forward semantics


@torch.no_grad()
def test_per_step_hidden_states_and_gates(model, ref):
    out = model.model(ref["input_ids"], use_cache=False)
    _close(torch.stack(out.hidden_states_per_step), ref["hidden_states_per_step"])
    _close(torch.stack(out.gate_logits_per_step).squeeze(-1), ref["gate_logits_per_step"])
    assert torch.equal(out.last_hidden_state, out.hidden_states_per_step[-1])
    assert output_cache(out) is None


@torch.no_grad()
def test_per_step_logits(model, ref):
    for k in range(4):
        _close(model(ref["input_ids"], use_cache=False, exit_at_step=k).logits, ref["logits_per_step"][k])


@torch.no_grad()
def test_default_logits_and_exit_pdf(model, ref):
    out = model(ref["input_ids"], use_cache=False)
    _close(out.logits, ref["logits"])
    _close(out.exit_pdf, ref["exit_pdf"])
    torch.testing.assert_close(out.exit_pdf.sum(-1), torch.ones(2, 40), atol=1e-6, rtol=0)
    # threshold 1.0 comes before use_weighted_exit, so the flag has no effect (as upstream)
    _close(model(ref["input_ids"], use_cache=False, use_weighted_exit=True).logits, ref["logits"])


@torch.no_grad()
def test_expected_logits_and_loss_with_labels(model, ref):
    ids = ref["input_ids"]
    out = model(ids, labels=ids, use_cache=False)
    _close(out.logits, ref["expected_logits"])
    torch.testing.assert_close(out.loss.reshape(1), ref["loss_with_labels"], atol=1e-5, rtol=1e-6)
    # without labels the same mixture comes back only when no threshold is set (exit_threshold=None falls
    # back to config.early_exit_threshold, so disable it there) and use_weighted_exit=True
    model.config.early_exit_threshold = None
    try:
        weighted = model(ids, use_cache=False, use_weighted_exit=True)
        _close(weighted.logits, ref["expected_logits"])
        _close(model(ids, use_cache=False).logits, ref["logits_per_step"][3])  # plain last step
    finally:
        model.config.early_exit_threshold = 1.0


@torch.no_grad()
def test_early_exit_threshold_picks_first_step_over_threshold(model, ref):
    threshold = 0.5
    out = model(ref["input_ids"], use_cache=False, exit_threshold=threshold)
    # independent expectation from the reference PDF and per-step logits
    cdf = ref["exit_pdf"].cumsum(-1)
    reached = cdf >= threshold
    first = torch.where(reached.any(-1), reached.float().argmax(-1), torch.full_like(cdf[..., 0], 3).long())
    assert len(first.unique()) > 1  # the threshold really mixes steps on this batch
    per_step = ref["logits_per_step"].permute(1, 2, 0, 3)  # [B, S, T, V]
    expected = per_step.gather(2, first[..., None, None].expand(-1, -1, 1, per_step.shape[-1])).squeeze(2)
    _close(out.logits, expected)


@torch.no_grad()
def test_logits_to_keep(model, ref):
    out = model(ref["input_ids"], use_cache=False, logits_to_keep=5)
    _close(out.logits, ref["logits"][:, -5:])
    _close(out.exit_pdf, ref["exit_pdf"][:, -5:])


def test_exit_at_step_out_of_range_raises(model, ref):
    with torch.no_grad(), pytest.raises(ValueError, match="exit_at_step"):
        model(ref["input_ids"], use_cache=False, exit_at_step=4)


@torch.no_grad()
def test_fewer_loop_steps_from_config(ouro_dir, ref):
    config = AutoConfig.from_pretrained(ouro_dir)
    config.total_ut_steps = 2
    model = AutoModelForCausalLM.from_pretrained(ouro_dir, config=config).eval()
    out = model.model(ref["input_ids"], use_cache=False)
    assert len(out.hidden_states_per_step) == 2
    _close(torch.stack(out.hidden_states_per_step), ref["hidden_states_per_step"][:2])


# ------------------------------------------------------------------------------------------------------------
# the run_stack hook


@torch.no_grad()
def test_run_stack_reproduces_the_loop(model, ref):
    inner = model.model
    cache = DynamicCache()
    loop = inner.prepare_loop_inputs(ref["input_ids"][:, :PROMPT], cache=cache, use_cache=True)
    hidden = loop.hidden_states
    for step in range(4):
        hidden = inner.run_stack(hidden, loop.position_embeddings, loop.attention_mask, cache, step=step)
        _close(hidden, ref["hidden_states_per_step"][step][:, :PROMPT])
    assert len(cache.layers) == 16
    for slot in range(16):
        _close(cache.layers[slot].keys, ref["prefill_cache.key"][slot])


@torch.no_grad()
def test_run_stack_blocks_can_be_looped_by_hand(model, ref):
    inner = model.model
    loop = inner.prepare_loop_inputs(ref["input_ids"])
    hidden = loop.hidden_states
    for _ in range(4):
        for layer in inner.layers:
            hidden = layer(hidden, loop.attention_mask["full_attention"], loop.position_embeddings)
        hidden = inner.norm(hidden)
    _close(hidden, ref["hidden_states_per_step"][3])


# ------------------------------------------------------------------------------------------------------------
# cache and generation


@torch.no_grad()
def test_prefill_cache_layout(model, ref):
    out = model(ref["input_ids"][:, :PROMPT], use_cache=True)
    cache = output_cache(out)
    assert len(cache.layers) == 16
    for slot in range(16):
        _close(cache.layers[slot].keys, ref["prefill_cache.key"][slot])
        _close(cache.layers[slot].values, ref["prefill_cache.value"][slot])


@torch.no_grad()
def test_incremental_decode(model, ref):
    gen = ref["generate_ids"]
    out = model(gen[:, :PROMPT], use_cache=True)
    cache = output_cache(out)
    steps = [out.logits[:, -1]]
    for t in range(1, 8):
        out = model(gen[:, PROMPT + t - 1 : PROMPT + t], cache=cache, use_cache=True)
        cache = output_cache(out)
        steps.append(out.logits[:, -1])
    incremental = torch.stack(steps, dim=1)
    _close(incremental, ref["incremental_logits"])
    assert torch.equal(incremental.argmax(-1), gen[:, PROMPT:])
    assert cache.get_seq_length() == PROMPT + 7
    assert all(layer.keys.shape[-2] == PROMPT + 7 for layer in cache.layers)


@torch.no_grad()
def test_full_forward_on_generated(model, ref):
    logits = model(ref["generate_ids"][:, :31], use_cache=False).logits[:, 23:31]
    _close(logits, ref["full_forward_logits_on_generated"])


@torch.no_grad()
def test_config_built_cache_is_extended(model, ref):
    cache = DynamicCache(config=model.config)  # one layer per layer_types entry, as generate() builds it
    assert len(cache.layers) == 4
    out = model(ref["input_ids"][:, :PROMPT], cache=cache, use_cache=True)
    assert output_cache(out) is cache and len(cache.layers) == 16
    _close(cache.layers[15].keys, ref["prefill_cache.key"][15])
    small = DynamicCache(config=model.config)
    small.update(torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16), 0)
    with pytest.raises(ValueError, match="total_ut_steps"):
        ensure_looped_cache(small, 16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_greedy_generate(ouro_dir, ref, attn):
    model = _load(ouro_dir, attn)
    prompt = ref["input_ids"][:, :PROMPT]
    gen = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=8,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    assert torch.equal(gen, ref["generate_ids"])


# ------------------------------------------------------------------------------------------------------------
# attention backends, padding, serialisation


@torch.no_grad()
def test_eager_matches_sdpa_and_reference(ouro_dir, ref):
    sdpa, eager = _load(ouro_dir, "sdpa"), _load(ouro_dir, "eager")
    assert eager.config._attn_implementation == "eager"
    ids = ref["input_ids"]
    for k in range(4):
        a = eager(ids, use_cache=False, exit_at_step=k).logits
        _close(a, ref["logits_per_step"][k])
        _close(a, sdpa(ids, use_cache=False, exit_at_step=k).logits)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_left_padding_matches_unpadded(ouro_dir, ref, attn):
    model = _load(ouro_dir, attn)
    ids = ref["input_ids"]
    pad = 7
    short = ids[0, : 30 - pad]
    batch = torch.stack([torch.cat([torch.zeros(pad, dtype=torch.long), short]), ids[1, :30]])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(batch, attention_mask=mask, position_ids=position_ids, use_cache=False)
    assert torch.isfinite(out.logits).all()
    _close(out.logits[0, pad:], ref["logits"][0, : 30 - pad])  # causal: a prefix sees only itself
    _close(out.logits[1], ref["logits"][1, :30])
    # without explicit position ids (shifted positions), RoPE is relative, so the real tokens still agree
    shifted = model(batch, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(shifted[0, pad:], ref["logits"][0, : 30 - pad], atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_left_padded_generate_matches_unpadded(model, ref):
    ids = ref["input_ids"]
    pad = 4
    batch = torch.stack(
        [torch.cat([torch.zeros(pad, dtype=torch.long), ids[0, : PROMPT - pad]]), ids[1, :PROMPT]]
    )
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    gen = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    single = model.generate(
        ids[:1, : PROMPT - pad],
        attention_mask=torch.ones(1, PROMPT - pad, dtype=torch.long),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(gen[0, pad:], single[0])
    assert torch.equal(gen[1], ref["generate_ids"][1, : PROMPT + 6])


@torch.no_grad()
def test_save_pretrained_round_trip(model, ref, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(reloaded) is OuroForCausalLM and reloaded.config.model_type == "ouro"
    assert reloaded.config.total_ut_steps == 4
    reloaded.eval()
    ids = ref["input_ids"]
    assert torch.equal(reloaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits)
    for k in range(4):
        assert torch.equal(
            reloaded(ids, use_cache=False, exit_at_step=k).logits,
            model(ids, use_cache=False, exit_at_step=k).logits,
        )


def test_natively_built_config_round_trips_through_auto_config(tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoConfig

    from sleepify.models.ouro import OuroConfig

    OuroConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64).save_pretrained(
        tmp_path
    )
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "OuroConfig" and loaded.num_hidden_layers == 2
