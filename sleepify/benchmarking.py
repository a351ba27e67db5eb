"""Deprecated: moved to sleepify.stages.bench.

Every name still resolves, with a DeprecationWarning (docs/architecture.md, "Moved modules")."""

from sleepify._moved import forward

__getattr__ = forward(__name__, ("sleepify.stages.bench", "sleepify.fsutil"))
