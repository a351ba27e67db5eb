"""What several stages share and that is not the run layout (:mod:`sleepify.runs`)."""

from __future__ import annotations


def quiet_library_bars() -> None:
    """No progress bars from datasets (loading files, map), huggingface_hub (downloads) or transformers
    (loading weights, writing shards): -q, and a stage run with ``progress=False``. Each library reads its
    switch at import, so set both the environment (for one imported later) and the switch of one already
    imported (without importing any: the CLI calls this before a command's imports)."""
    import os
    import sys

    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def pad_id(config: object) -> int:
    """The id batches are padded with: the config's ``pad_token_id``, 0 without one. transformers v5
    configs may not define the attribute at all (a converted Jet-Nemotron's does not), so never read it
    directly."""
    value = getattr(config, "pad_token_id", None)
    return 0 if value is None else int(value)
