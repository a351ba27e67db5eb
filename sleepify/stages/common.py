"""What several stages share and that is not the run layout (:mod:`sleepify.runs`)."""

from __future__ import annotations


def quiet_library_bars() -> None:
    """No progress bars from transformers (loading / writing weights) and datasets either (--quiet)."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets_logging.disable_progress_bar()
