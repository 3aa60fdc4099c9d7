"""The eval transform that published weights were scored with, as PaddleClas-schema
`transform_ops`, so that converted weights see the input tensor their source computed.

Both sources load with Pillow (`.convert("RGB")`), resize the short side with Pillow's
antialiased filter as torchvision's `Resize(int)` does (long side truncated), centre-crop
with torchvision's `CenterCrop` offsets, scale to [0, 1] and normalise:
    torchvision: `weights.transforms()`, its ImageClassification preset (resize_size,
        crop_size, bilinear, antialias=True);
    timm: `create_transform(**resolve_data_config(model=m), is_training=False)`, i.e.
        Resize(floor(crop / crop_pct), interpolation) and CenterCrop(crop).
tests/test_preprocess_sources.py checks the result against those libraries' own output
(fixture made by tools/make_transform_fixture.py).
"""

import math


def short_side(preprocess):
    """The short side a `Preprocess` record resizes to before its centre crop."""
    if (preprocess.resize is None) == (preprocess.crop_pct is None):
        raise ValueError(f"a Preprocess record gives resize (torchvision) or crop_pct (timm), "
                         f"not both or neither: {preprocess!r}")
    if preprocess.resize is not None:
        return preprocess.resize
    return math.floor(preprocess.crop / preprocess.crop_pct)  # timm's scale_size


def eval_transform_ops(preprocess):
    """`transform_ops` (a list of one-key dicts, as in a config's DataLoader.Eval.dataset or
    Infer.transforms) reproducing the eval transform of a `Preprocess` record
    (variants.py). The result is CHW float32."""
    return [
        {"DecodeImage": {"to_rgb": True, "channel_first": False, "backend": "pil"}},
        {"ResizeImage": {"resize_short": short_side(preprocess),
                         "interpolation": preprocess.interpolation, "backend": "pil"}},
        {"CropImage": {"size": preprocess.crop, "offset_rounding": "half_even"}},
        {"NormalizeImage": {"scale": "1.0/255.0", "mean": list(preprocess.mean),
                            "std": list(preprocess.std), "order": ""}},
        {"ToCHWImage": None},
    ]
