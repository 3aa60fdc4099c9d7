"""Importing this package registers every backbone."""

from ppcls.arch.backbone.model_zoo.mnasnet import (  # noqa: F401
    VARIANTS,
    MnasNet,
    MnasNet_A1_x0_5,
    MnasNet_A1_x0_75,
    MnasNet_A1_x1_0,
    MnasNet_A1_x1_4,
    MnasNet_B1_x0_5,
    MnasNet_B1_x0_75,
    MnasNet_B1_x1_0,
    MnasNet_B1_x1_3,
    MnasNet_B1_x1_4,
    MnasNet_small,
)
