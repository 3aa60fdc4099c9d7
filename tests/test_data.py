"""Image operators, batch operators, samplers and the dataset."""

import io
import os
import random

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from ppcls.data.dataloader import ImageNetDataset
from ppcls.data.preprocess import TRANSFORM_OPS, build_transforms
from ppcls.data.preprocess.batch_ops import CutmixOperator, MixupOperator, OpSampler
from ppcls.data.sampler import DistributedBatchSampler
from ppcls.utils.errors import ConfigError

IMAGE = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def test_resize_short_crop_and_normalize():
    ops = build_transforms([{"ResizeImage": {"resize_short": 40}}, {"CropImage": {"size": 32}},
                            {"NormalizeImage": {"scale": "1.0/255.0", "order": ""}},
                            {"ToCHWImage": None}], "ops")
    out = IMAGE
    for op in ops:
        out = op(out, random.Random(0))
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    resized = cv2.resize(IMAGE, (53, 40))
    expected = (resized[4:36, 10:42] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(out.transpose(1, 2, 0), expected, atol=1e-5)


# 640x427: the backends' resize_short and the two crop roundings differ on it
ROCKET = os.path.join(ROOT, "demo", "rocket.jpg")


def _pipeline(specs, data, seed=0):
    out = data
    for op in build_transforms(specs, "ops"):
        out = op(out, random.Random(seed))
    return out


def _rocket_bytes():
    with open(ROCKET, "rb") as f:
        return f.read()


def test_default_cv2_path_is_paddleclas_arithmetic_on_opencv():
    """PaddleClas's eval ops by plain OpenCV: short side 256, long side round(640 * 256 / 427)
    = 384, centre crop at (384 - 224) // 2 = 80."""
    data = _rocket_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(bgr[:, :, ::-1], (384, 256), interpolation=cv2.INTER_LINEAR)[16:240, 80:304]
    out = _pipeline([{"DecodeImage": {"to_rgb": True}}, {"ResizeImage": {"resize_short": 256}},
                     {"CropImage": {"size": 224}}], data)
    np.testing.assert_array_equal(out, expected)
    explicit = _pipeline([{"DecodeImage": {"backend": "cv2"}},
                          {"ResizeImage": {"resize_short": 256, "backend": "cv2",
                                           "interpolation": "bilinear"}},
                          {"CropImage": {"size": 224, "offset_rounding": "floor"}}], data)
    np.testing.assert_array_equal(explicit, expected)


def test_pil_path_is_torchvision_arithmetic_on_pillow():
    """torchvision's Resize(256) + CenterCrop(224) by plain Pillow: long side
    int(256 * 640 / 427) = 383, crop left int(round(159 / 2)) = 80 (79 with floor)."""
    data = _rocket_bytes()
    resized = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
        (383, 256), Image.Resampling.BILINEAR))
    specs = [{"DecodeImage": {"backend": "pil"}},
             {"ResizeImage": {"resize_short": 256, "backend": "pil"}}]
    np.testing.assert_array_equal(_pipeline(specs, data), resized)
    half_even = _pipeline(specs + [{"CropImage": {"size": 224, "offset_rounding": "half_even"}}],
                          data)
    np.testing.assert_array_equal(half_even, resized[16:240, 80:304])
    floor = _pipeline(specs + [{"CropImage": {"size": 224}}], data)
    np.testing.assert_array_equal(floor, resized[16:240, 79:303])


@pytest.mark.parametrize("backend", ["cv2", "pil", "PIL"])
def test_decode_to_rgb_false_gives_bgr(backend):
    data = _rocket_bytes()
    rgb = _pipeline([{"DecodeImage": {"backend": backend}}], data)
    bgr = _pipeline([{"DecodeImage": {"backend": backend, "to_rgb": False}}], data)
    chw = _pipeline([{"DecodeImage": {"backend": backend, "channel_first": True}}], data)
    assert rgb.shape == (427, 640, 3) and rgb.dtype == np.uint8 and rgb.flags.writeable
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1))


def test_pil_decode_keeps_stored_orientation_as_torchvision_loads():
    """OpenCV turns a photo by its EXIF orientation; Pillow, and so torchvision's and timm's
    loaders, do not."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, "JPEG", exif=exif.tobytes())
    assert _pipeline([{"DecodeImage": {"backend": "pil"}}], buf.getvalue()).shape == (60, 80, 3)
    assert _pipeline([{"DecodeImage": {"backend": "cv2"}}], buf.getvalue()).shape == (80, 60, 3)
    for backend in ("cv2", "pil"):
        with pytest.raises(ValueError, match="not a decodable image"):
            _pipeline([{"DecodeImage": {"backend": backend}}], b"not an image")
        with pytest.raises(ValueError, match="not a decodable image"):
            _pipeline([{"DecodeImage": {"backend": backend}}], buf.getvalue()[:200])


@pytest.mark.parametrize("backend,name,expected", [
    ("cv2", "nearest", cv2.INTER_NEAREST), ("cv2", "area", cv2.INTER_AREA),
    ("cv2", "Bicubic", cv2.INTER_CUBIC), ("cv2", "lanczos", cv2.INTER_LANCZOS4),
    ("pil", "nearest", Image.Resampling.NEAREST), ("pil", "box", Image.Resampling.BOX),
    ("pil", "hamming", Image.Resampling.HAMMING), ("pil", "bicubic", Image.Resampling.BICUBIC),
    ("pil", "lanczos", Image.Resampling.LANCZOS), ("pil", None, Image.Resampling.BILINEAR),
])
def test_interpolation_names_pick_the_backends_filters(backend, name, expected):
    out = _pipeline([{"ResizeImage": {"size": [37, 23], "interpolation": name,
                                      "backend": backend}}], IMAGE)
    if backend == "cv2":
        reference = cv2.resize(IMAGE, (37, 23), interpolation=expected)
    else:
        reference = np.asarray(Image.fromarray(IMAGE).resize((37, 23), expected))
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_random_interpolation_is_bilinear_or_bicubic_by_the_sample_rng(backend):
    specs = [{"RandCropImage": {"size": 24, "interpolation": "random", "backend": backend}}]
    outs = {_pipeline(specs, IMAGE, seed).tobytes() for seed in range(8)}
    assert len(outs) > 1
    np.testing.assert_array_equal(_pipeline(specs, IMAGE, 3), _pipeline(specs, IMAGE, 3))
    (op,) = build_transforms([{"ResizeImage": {"size": 24, "interpolation": "random",
                                               "backend": backend}}], "ops")
    assert len({op(IMAGE, random.Random(s)).tobytes() for s in range(12)}) == 2


@pytest.mark.parametrize("spec,message", [
    ({"DecodeImage": {"backend": "skimage"}},
     "ops.0.DecodeImage: backend: 'skimage' is not supported, only 'cv2' or 'pil'"),
    ({"ResizeImage": {"resize_short": 8, "backend": "torch"}},
     "ops.0.ResizeImage: backend: 'torch' is not supported, only 'cv2' or 'pil'"),
    ({"RandCropImage": {"size": 8, "backend": "skimage"}},
     "ops.0.RandCropImage: backend: 'skimage' is not supported"),
    ({"ResizeImage": {"resize_short": 8, "interpolation": "area", "backend": "pil"}},
     "ops.0.ResizeImage: interpolation: 'area' is not supported with backend 'pil'; allowed: "
     "nearest, bilinear"),
    ({"ResizeImage": {"resize_short": 8, "interpolation": "hamming"}},
     "interpolation: 'hamming' is not supported with backend 'cv2'; allowed: nearest"),
    ({"RandCropImage": {"size": 8, "interpolation": "bicubc"}},
     "interpolation: 'bicubc' is not supported with backend 'cv2' (did you mean 'bicubic'?)"),
    ({"ResizeImage": {"resize_short": 8, "interpolation": 2}},
     "interpolation: 2 is not supported with backend 'cv2'"),
    ({"CropImage": {"size": 8, "offset_rounding": "round"}},
     "ops.0.CropImage: offset_rounding: 'round' is not supported, only 'floor' or 'half_even'"),
])
def test_unsupported_backends_and_filters_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError) as err:
        build_transforms([spec], "ops")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("spec", [
    {"RandCropImage": {"size": 24}}, {"RandCropImage": {"size": [24, 16], "use_log_aspect": True}},
    {"RandFlipImage": {"flip_code": 1}}, {"AutoAugment": None},
    {"RandAugment": {"num_layers": 2, "magnitude": 9}},
])
def test_random_ops_are_functions_of_the_sample_rng(spec):
    (op,) = build_transforms([spec], "ops")
    a, b = op(IMAGE, random.Random(5)), op(IMAGE, random.Random(5))
    np.testing.assert_array_equal(a, b)
    outs = {op(IMAGE, random.Random(s)).tobytes() for s in range(12)}
    assert len(outs) > 1  # really random across seeds
    assert a.dtype == np.uint8 and a.shape[2] == 3


def test_rand_crop_size_is_width_height():
    (op,) = build_transforms([{"RandCropImage": {"size": [24, 16]}}], "ops")
    assert op(IMAGE, random.Random(0)).shape == (16, 24, 3)


def test_random_erasing_erases_with_mean():
    (op,) = build_transforms([{"RandomErasing": {"EPSILON": 1.0, "mean": [0, 0, 0]}}], "ops")
    img = np.ones((32, 32, 3), np.float32)
    out = op(img, random.Random(1))
    assert (out == 0).any() and (out == 1).any()


def test_unknown_op_and_argument_are_named():
    with pytest.raises(ConfigError, match="unknown image operator 'RandomCrop'.*RandCropImage"):
        build_transforms([{"RandomCrop": {"size": 3}}], "DataLoader.Train.dataset.transform_ops")
    with pytest.raises(ConfigError, match=r"transform_ops.0.ResizeImage: unknown argument 'short'"):
        build_transforms([{"ResizeImage": {"short": 3}}], "DataLoader.Train.dataset.transform_ops")
    assert {"DecodeImage", "RandCropImage", "RandFlipImage", "ResizeImage", "CropImage",
            "NormalizeImage", "ToCHWImage", "AutoAugment", "RandAugment",
            "RandomErasing"} <= set(TRANSFORM_OPS)


@pytest.mark.parametrize("op", [MixupOperator(10, 0.2), CutmixOperator(10, 1.0),
                                OpSampler(10, MixupOperator={"alpha": 0.2, "prob": 0.5},
                                          CutmixOperator={"alpha": 1.0, "prob": 0.5})])
def test_batch_ops_give_soft_targets(op):
    images = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 5])
    mixed, targets = op(images, labels, random.Random(3))
    assert mixed.shape == images.shape and targets.shape == (6, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.max(axis=1) < 1).any()


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_eval_shards_cover_every_sample_exactly_once():
    n, replicas = 37, 3
    seen = []
    for rank in range(replicas):
        sampler = DistributedBatchSampler(_Sized(n), 4, pad=False, num_replicas=replicas, rank=rank)
        seen += [i for batch in sampler for i, _ in batch]
    assert sorted(seen) == list(range(n))


def test_train_shards_are_padded_equal_and_seeded_consistently():
    plans = []
    for rank in range(2):
        sampler = DistributedBatchSampler(_Sized(37), 4, shuffle=True, seed=9, num_replicas=2,
                                          rank=rank)
        sampler.set_epoch(3)
        plans.append([item for batch in sampler for item in batch])
    assert len(plans[0]) == len(plans[1]) == 19
    seeds = {}
    for item in plans[0] + plans[1]:
        seeds.setdefault(item[1], item[0])
    assert len(seeds) == 38  # each position has its own augmentation seed


@pytest.mark.parametrize("n", [1, 7, 37, 96, 101])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_with_one_seed_cover_every_sample_once_per_epoch(n, replicas, drop_last):
    """The padding rule of sampler.py: each sample once across ranks, plus the first
    ceil(n / W) * W - n of the epoch's order repeated; drop_last leaves out each rank's
    last partial batch instead."""
    batch = 4
    for epoch in (1, 2):
        shards = []
        for rank in range(replicas):
            sampler = DistributedBatchSampler(_Sized(n), batch, shuffle=True, seed=5,
                                              drop_last=drop_last, num_replicas=replicas,
                                              rank=rank)
            sampler.set_epoch(epoch)
            shards.append([i for b in sampler for i, _ in b])
            assert shards[-1] == list(sampler.epoch_indices())
        counts = np.bincount(np.concatenate(shards).astype(int), minlength=n)
        per_rank = -(-n // replicas)
        order = np.random.default_rng([5, epoch]).permutation(n)
        padded = np.bincount(np.resize(order, per_rank * replicas), minlength=n)
        if drop_last:  # never more than the padded plan, and whole batches only
            assert (counts <= padded).all()
            assert counts.sum() == replicas * (per_rank // batch) * batch
        else:  # every sample, and repeats exactly where the padding puts them
            assert counts.min() >= 1 and (counts == padded).all()


def test_ranks_with_their_own_seeds_overlap():
    """What a per-rank seed did: shards drawn from different permutations overlap."""
    shards = []
    for rank, seed in enumerate((11, 12)):
        sampler = DistributedBatchSampler(_Sized(1000), 10, shuffle=True, seed=seed,
                                          num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        shards.append(sampler.epoch_indices())
    assert len(set(np.concatenate(shards))) < 800  # about 750 expected


def test_start_batch_replays_the_tail_of_the_epoch():
    sampler = DistributedBatchSampler(_Sized(50), 8, shuffle=True, seed=1, num_replicas=1, rank=0)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[3:]
    sampler.set_epoch(3)
    assert list(sampler) != full


def test_batch_size_zero_is_refused():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        DistributedBatchSampler(_Sized(5), 0)


def test_dataset_gives_chw_images_deterministically(digits):
    dataset = ImageNetDataset(str(digits), str(digits / "val_odd.txt"), [
        {"DecodeImage": {"to_rgb": True}}, {"RandCropImage": {"size": 24}},
        {"NormalizeImage": {"order": ""}}])
    img, label, _, problem = dataset[(3, 1234)]
    again, _, _, _ = dataset[(3, 1234)]
    assert img.shape == (3, 24, 24) and 0 <= label < 10 and problem is None
    np.testing.assert_array_equal(img, again)
