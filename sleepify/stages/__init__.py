"""The pipeline's stages, one module each, named after its command: ``convert``, ``data``, ``train``
(``warmup`` is train with another recipe), ``eval``, ``export``, ``generate``, ``push`` and ``bench``.

Each offers ``plan_*`` (everything that can fail cheaply, nothing written) and ``run_*`` over typed inputs
(paths, a resolved recipe, a :class:`~sleepify.config.overrides.RunOverrides`). They sit between the API
(``sleepify/api.py``, the documented façade the CLI calls) and the engine floors (``sleepify.sleep``,
``sleepify.generation``, ``sleepify.training``, ``sleepify.evaluation``, ``sleepify.data``); where a
run's folders are is :mod:`sleepify.runs`. Modules are imported on use (``import sleepify.stages`` is
cheap).
"""

STAGES = ("convert", "data", "train", "eval", "export", "generate", "push", "bench")
