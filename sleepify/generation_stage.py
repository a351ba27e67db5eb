"""Deprecated: moved to sleepify.stages.generate.

Every name still resolves, with a DeprecationWarning (docs/architecture.md, "Moved modules")."""

from sleepify._moved import forward

__getattr__ = forward(__name__, ("sleepify.stages.generate",))
