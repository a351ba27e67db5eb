"""Deprecated: moved to sleepify.stages.train (torchrun launch: sleepify.cli.train_cmd).

Every name still resolves, with a DeprecationWarning (docs/architecture.md, "Moved modules")."""

from sleepify._moved import forward

__getattr__ = forward(__name__, ("sleepify.stages.train", "sleepify.stages.common", "sleepify.cli.train_cmd"))
