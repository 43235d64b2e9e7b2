"""Modules built on ``onebyone.conv1x1``."""

from onebyone.nn.conv import Conv1x1, activation_module

__all__ = ["Conv1x1", "activation_module"]
