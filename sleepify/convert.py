"""Deprecated: moved to sleepify.stages.convert (weights I/O: sleepify.weights_io; sources: sleepify.hub).

Every name still resolves, with a DeprecationWarning (docs/architecture.md, "Moved modules")."""

from sleepify._moved import forward

__getattr__ = forward(
    __name__, ("sleepify.stages.convert", "sleepify.weights_io", "sleepify.hub", "sleepify.runs")
)
