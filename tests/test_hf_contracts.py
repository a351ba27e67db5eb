"""The causal-LM contracts Hugging Face users rely on, on the sleep-capable model: hidden states, attentions
(a clear error), tuples, inputs_embeds, labels, resizing the vocabulary, gradient checkpointing (also from
transformers.Trainer) and PEFT LoRA on the base attention only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import sleepify  # noqa: F401
import sleepify.sleep as engine
from tests.test_generation import L, build_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("contracts"))


def load(folder: Path, passes: int = 2):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.config.sleep_passes = passes
    return model


def ids_and_labels(T: int = 2 * L + 3, B: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (B, T), generator=g)
    labels = ids.clone()
    labels[:, : L + 2] = -100  # the first window is not scored: it sleeps
    return ids, labels


def test_hidden_states_one_per_block_plus_embeddings(tiny_run: Path) -> None:
    model = load(tiny_run)
    ids, _ = ids_and_labels()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    blocks = len(model.config.block_plan)
    assert len(out.hidden_states) == blocks + 1
    assert all(h.shape == (*ids.shape, model.config.hidden_size) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], model.get_input_embeddings()(ids))
    # the last entry is the final (normed) state the head reads: it gives the returned logits
    head = model.get_output_embeddings()
    torch.testing.assert_close(head(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=1e-5)
    assert out.window_kinds == ["sleep", "sleep", "wake"]  # still sleeps
    assert model(ids).hidden_states is None  # only when asked


def test_output_attentions_is_a_clear_error(tiny_run: Path) -> None:
    with pytest.raises(ValueError, match="output_attentions is not supported"):
        load(tiny_run)(torch.randint(4, 100, (1, 5)), output_attentions=True)


def test_return_dict_false_gives_a_tuple(tiny_run: Path) -> None:
    model = load(tiny_run)
    ids, labels = ids_and_labels()
    with torch.no_grad():
        as_dict = model(ids, labels=labels)
        as_tuple = model(ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_inputs_embeds_and_labels(tiny_run: Path) -> None:
    model = load(tiny_run)
    ids, labels = ids_and_labels()
    with torch.no_grad():
        by_ids = model(ids, labels=labels)
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), labels=labels)
        manual = torch.nn.functional.cross_entropy(
            by_ids.logits[:, :-1].reshape(-1, by_ids.logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss)
    # labels -> the usual shifted cross entropy over the scored positions
    torch.testing.assert_close(by_ids.loss, manual, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_resize_token_embeddings_and_output_embeddings(tiny_run: Path, tmp_path: Path) -> None:
    model = load(tiny_run)
    old = model.config.vocab_size
    model.resize_token_embeddings(old + 8)
    assert model.get_input_embeddings().weight.shape[0] == old + 8
    assert model.get_output_embeddings().weight.shape[0] == old + 8
    assert model.config.vocab_size == model.config.base_config["vocab_size"] == old + 8
    ids = torch.tensor([[5, old + 3, 7, 9]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == old + 8 and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "resized")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resized").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, logits)
    head = torch.nn.Linear(model.config.hidden_size, old + 8, bias=False)
    model.set_output_embeddings(head)
    assert model.get_output_embeddings() is head


def _grads(model, ids, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(ids, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_is_per_window_checkpointing(tiny_run: Path, monkeypatch) -> None:  # noqa: ANN001
    model = load(tiny_run).train()
    ids, labels = ids_and_labels()
    plain = _grads(model, ids, labels)
    calls = []
    real = engine.checkpoint
    monkeypatch.setattr(engine, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = _grads(model, ids, labels)
    assert len(calls) == 3  # one per window
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    model.gradient_checkpointing_disable()
    calls.clear()
    _grads(model, ids, labels)
    assert not calls and not model.is_gradient_checkpointing


@pytest.mark.slow
def test_hf_trainer_with_gradient_checkpointing(tiny_run: Path, tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model = load(tiny_run)
    ids, labels = ids_and_labels(B=8)
    # transformers 5.24 renamed the argument (the old name still works there, with a FutureWarning)
    fields = TrainingArguments.__dataclass_fields__
    switch = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        **{switch: True},
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert model.is_gradient_checkpointing
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_lora_targets_the_base_attention_only(tiny_run: Path) -> None:
    peft = pytest.importorskip("peft")
    model = load(tiny_run)
    targets = model.attention_lora_targets()
    assert targets and all(t.startswith("base.") and ".self_attn." in t for t in targets)
    assert any("jet_layers" in t for t in model.attention_lora_targets(include_jet=True))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in lora.named_parameters() if ".lora_A" in n}
    assert adapted and not any("jet_layers" in n for n in adapted)
    ids, labels = ids_and_labels()
    out = lora(input_ids=ids, labels=labels)
    out.loss.backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if p.requires_grad)
    # the reason for the helper: bare projection names also adapt the inserted Jet layers
    bare = peft.get_peft_model(load(tiny_run), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert any("jet_layers" in n and "lora_A" in n for n, _ in bare.named_parameters())
