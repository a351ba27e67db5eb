"""The project's one dtype table: the names a recipe (``model.dtype``, ``export.dtype``) takes, their short
forms (``--dtype bf16``) and bytes per element. The schema's choices, the run layout's loader
(:func:`sleepify.runs.torch_dtype`) and the conversion plan's memory estimate all read it."""

from __future__ import annotations

from typing import Literal

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}  # name -> bytes per element
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DtypeName = Literal[tuple(DTYPES)]  # type: ignore[valid-type]  (the schema's choices, from the table)
