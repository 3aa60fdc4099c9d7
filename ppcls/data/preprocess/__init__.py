"""Image operators by PaddleClas name, and the pipeline that applies them."""

from ppcls.data.preprocess.batch_ops import BATCH_OPS  # noqa: F401
from ppcls.data.preprocess.ops.autoaugment import AutoAugment, RandAugment
from ppcls.data.preprocess.ops.operators import (CropImage, DecodeImage, DecodeRandCrop,
                                                 NormalizeImage, RandCropImage, RandFlipImage,
                                                 RandomErasing, ResizeImage, ToCHWImage)
from ppcls.utils.factory import create_list

TRANSFORM_OPS = {op.__name__: op for op in (
    DecodeImage, ResizeImage, CropImage, RandCropImage, RandFlipImage, NormalizeImage,
    ToCHWImage, AutoAugment, RandAugment, RandomErasing)}


def build_transforms(specs, where):
    return create_list(TRANSFORM_OPS, specs, where, kind="image operator")


def fuse(ops):
    """A DecodeImage followed by a RandCropImage becomes one DecodeRandCrop when it can
    (what loaders run; a list of single operators stays what the config says)."""
    fused = []
    for op in ops:
        if fused and DecodeRandCrop.applies(fused[-1], op):
            fused[-1] = DecodeRandCrop(fused[-1], op)
        else:
            fused.append(op)
    return fused


def apply_transforms(ops, data, rng):
    for op in ops:
        data = op(data, rng)
    return data
