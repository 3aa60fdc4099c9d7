"""eval_transform_ops gives, on the demo photos, the input tensor that torchvision's and timm's
own eval transforms give (tests/fixtures/source_transforms.json, written by
tools/make_transform_fixture.py with those libraries)."""

import hashlib
import json
import os
import random

import numpy as np
import pytest

from ppcls.arch.backbone.model_zoo.mnasnet.preprocess import eval_transform_ops, short_side
from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANTS, Preprocess
from ppcls.data.preprocess import apply_transforms, build_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "tests", "fixtures", "source_transforms.json")) as f:
    FIXTURE = json.load(f)
PRESETS = {preset["name"]: preset for preset in FIXTURE["presets"]}
RECORDS = {w.name: w for variant in VARIANTS for w in variant.weights}


def run(ops, photo):
    with open(os.path.join(ROOT, photo), "rb") as f:
        data = f.read()
    return apply_transforms(build_transforms(ops, "ops"), data, random.Random(0))


def uint8_digest(tensor, preprocess):
    """The fixture's digest: the uint8 CHW image a normalised tensor encodes."""
    mean = np.array(preprocess.mean).reshape(3, 1, 1)
    std = np.array(preprocess.std).reshape(3, 1, 1)
    levels = np.rint((tensor.astype(np.float64) * std + mean) * 255).astype(np.uint8)
    return hashlib.sha256(levels.tobytes()).hexdigest()


@pytest.mark.parametrize("entry", FIXTURE["entries"],
                         ids=[f"{e['preset']}-{os.path.basename(e['photo'])}"
                              for e in FIXTURE["entries"]])
def test_eval_transform_ops_give_the_sources_tensor(entry):
    preset = PRESETS[entry["preset"]]
    for name in preset["weights"]:
        preprocess = RECORDS[name].preprocess
        out = run(eval_transform_ops(preprocess), entry["photo"])
        assert list(out.shape) == entry["shape"] and out.dtype == np.float32
        made_with = f"fixture made with {FIXTURE['versions']}"
        values = out.reshape(-1)[FIXTURE["positions"]]
        np.testing.assert_allclose(values, entry["values"], rtol=0, atol=1e-5, err_msg=made_with)
        wide = out.astype(np.float64)  # the fixture's statistics are float64 ones
        np.testing.assert_allclose(wide.mean(axis=(1, 2)), entry["channel_mean"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(wide.std(axis=(1, 2)), entry["channel_std"], rtol=0, atol=1e-5)
        np.testing.assert_allclose([out.min(), out.max()], [entry["min"], entry["max"]],
                                   rtol=0, atol=1e-5)
        # every pixel: the same uint8 image under the same normalisation
        assert uint8_digest(out, preprocess) == entry["uint8_chw_sha256"], made_with


def test_every_weights_record_is_in_the_fixture_as_recorded():
    """A new or changed record needs the fixture made again (tools/make_transform_fixture.py),
    which also checks the record against its source's stated transform."""
    listed = {name: preset for preset in FIXTURE["presets"] for name in preset["weights"]}
    assert set(listed) == set(RECORDS)
    for name, preset in listed.items():
        recorded = {k: list(v) if isinstance(v, tuple) else v
                    for k, v in RECORDS[name].preprocess._asdict().items()}
        assert recorded == preset["preprocess"], name
    photos = {e["photo"] for e in FIXTURE["entries"]}
    assert len(photos) == 4 and len(FIXTURE["entries"]) == 4 * len(PRESETS)


def test_eval_transform_ops_spell_out_the_sources_arithmetic():
    tv = eval_transform_ops(Preprocess("bilinear", resize=232))
    assert tv[0] == {"DecodeImage": {"to_rgb": True, "channel_first": False, "backend": "pil"}}
    assert tv[1] == {"ResizeImage": {"resize_short": 232, "interpolation": "bilinear",
                                     "backend": "pil"}}
    assert tv[2] == {"CropImage": {"size": 224, "offset_rounding": "half_even"}}
    assert tv[3]["NormalizeImage"]["mean"] == [0.485, 0.456, 0.406]
    assert [next(iter(op)) for op in tv] == ["DecodeImage", "ResizeImage", "CropImage",
                                       "NormalizeImage", "ToCHWImage"]
    # timm: short side math.floor(crop / crop_pct)
    assert short_side(Preprocess("bicubic", crop_pct=0.875)) == 256
    assert short_side(Preprocess("bicubic", crop_pct=0.9, crop=240)) == 266  # 266.67
    assert short_side(Preprocess("bicubic", crop_pct=0.95)) == 235  # 235.79
    for bad in (Preprocess("bilinear"), Preprocess("bilinear", resize=256, crop_pct=0.875)):
        with pytest.raises(ValueError, match="resize .torchvision. or crop_pct .timm."):
            eval_transform_ops(bad)
