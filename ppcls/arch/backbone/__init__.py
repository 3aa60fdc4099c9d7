"""Importing this package registers every backbone (without importing Paddle: the builders
import their networks when called)."""

import ppcls.arch.backbone.model_zoo.mnasnet  # noqa: F401
