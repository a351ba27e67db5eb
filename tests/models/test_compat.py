"""The transformers compatibility layer (sleepify/models/compat.py): both cache keywords work on whichever
transformers is installed (CI runs this file on the newest release and on the floor version)."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

import sleepify  # noqa: F401  (registers the model types)
from sleepify.models.compat import (
    CACHE_KWARG,
    accepts_legacy_cache,
    cache_kwargs,
    generation_cache,
    output_cache,
    set_generation_cache,
)


def test_cache_name_matches_the_installed_transformers() -> None:
    # independent of the detection: the output dataclass accepts exactly this name as a real field
    assert CACHE_KWARG in CausalLMOutputWithPast.__dataclass_fields__
    out = CausalLMOutputWithPast(logits=torch.zeros(1), **cache_kwargs("C"))
    assert output_cache(out) == "C"
    kwargs: dict = {}
    set_generation_cache(kwargs, "C")
    assert generation_cache(kwargs) == "C" and list(kwargs) == [CACHE_KWARG]


def test_legacy_keyword_is_mapped_and_shown_in_the_signature() -> None:
    @accepts_legacy_cache
    def forward(input_ids, cache=None, **kwargs):
        return cache, kwargs

    assert forward(1, past_key_values="P") == ("P", {})
    assert forward(1, cache="C") == ("C", {})
    assert forward(1, past_key_values=None) == (None, {})
    with pytest.raises(TypeError, match="not both"):
        forward(1, cache="C", past_key_values="P")
    params = inspect.signature(forward).parameters
    assert {"cache", "past_key_values", "kwargs"} <= set(params)
    assert list(params)[-1] == "kwargs"


@pytest.fixture
def ouro(fixtures_dir):
    path = fixtures_dir / "ouro-tiny"
    if not (path / "config.json").is_file():
        pytest.skip(f"ouro-tiny fixture not found at {path}")
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_ouro_decodes_the_same_through_either_keyword(ouro) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, ouro.config.vocab_size, (1, 9))
    logits = {}
    for name in ("cache", "past_key_values"):
        cache = DynamicCache()
        with torch.no_grad():
            ouro(ids[:, :8], use_cache=True, **{name: cache})
            out = ouro(ids[:, 8:], use_cache=True, **{name: cache})
        assert output_cache(out) is cache
        logits[name] = out.logits
    with torch.no_grad():
        full = ouro(ids).logits[:, -1:]
    torch.testing.assert_close(logits["cache"], full, atol=5e-5, rtol=1e-5)
    assert torch.equal(logits["cache"], logits["past_key_values"])


@pytest.mark.parametrize("first", ["sleepify.models.compat", "sleepify.benchmarking", "sleepify.models.ouro"])
def test_any_module_can_be_a_process_first_import(first: str) -> None:
    """Importing transformers registers our model types, whose modules import compat: a process whose first
    import is compat (or a module importing it) must not meet compat half-initialised."""
    import subprocess
    import sys

    code = (
        f"import {first}\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert {'ouro', 'jet_nemotron', 'sleep_hybrid'} <= set(CONFIG_MAPPING.keys()), 'not registered'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
