"""The training loader's fast paths keep the augmentation and the batches of the plain path:
RandCropImage's crop distribution (tested against its specification), the reduced-size JPEG
decode (against full decoding), uint8 batches normalised and mixed on the device (against
the workers doing it), and identical batches for 0, 1 and 2 loader workers."""

import io
import math
import os
import random

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from ppcls.data import build_dataloader
from ppcls.data.preprocess import DecodeRandCrop, build_transforms, fuse

ALPHA = 0.001  # significance of the KS tests; their samples come from fixed seeds
DRAWS = 20000


def spec_marginals(rho, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), log_ratio=False, n=1501):
    """CDFs of the area fraction s and of the aspect ratio r (or log r) that RandCropImage's
    specification gives for an image of aspect rho = width / height: (s, r) uniform on
    scale x ratio (log r uniform with use_log_aspect), kept when the w x h window fits,
    i.e. s * r <= rho and s / r <= 1 / rho. (Ten rejected tries fall back to a centre
    crop; on these images that has a probability below 1e-8.) By numerical integration
    over a grid, independently of the implementation."""
    s = np.linspace(*scale, n)
    t = np.linspace(*(np.log(ratio) if log_ratio else ratio), n)
    r = np.exp(t) if log_ratio else t
    fits = (s[:, None] * r[None, :] <= rho) & (s[:, None] / r[None, :] <= 1 / rho)
    density = fits / fits.sum()

    def cdf(grid, marginal):
        cumulative = np.cumsum(marginal)
        return lambda x: np.interp(x, grid, cumulative)

    return cdf(s, density.sum(axis=1)), cdf(t, density.sum(axis=0))


def crop_draws(op, height, width, seed=0):
    """Area fractions and ratios (log ratios with use_log_aspect) of DRAWS windows."""
    rng = random.Random(seed)
    windows = np.array([op.window(height, width, rng) for _ in range(DRAWS)], dtype=float)
    h, w = windows[:, 2], windows[:, 3]
    ratio = w / h
    return h * w / (height * width), np.log(ratio) if op.use_log_aspect else ratio


@pytest.mark.parametrize("height,width", [(2000, 2000), (1500, 2000)])
@pytest.mark.parametrize("log_aspect", [False, True])
def test_crop_windows_follow_the_specification(height, width, log_aspect):
    """Large images, so that rounding the window to pixels moves s and r by < 0.1%."""
    (op,) = build_transforms([{"RandCropImage": {"size": 224,
                                                 "use_log_aspect": log_aspect}}], "ops")
    area, ratio = crop_draws(op, height, width)
    area_cdf, ratio_cdf = spec_marginals(width / height, log_ratio=log_aspect)
    assert stats.kstest(area, area_cdf).pvalue > ALPHA
    assert stats.kstest(ratio, ratio_cdf).pvalue > ALPHA


def test_the_crop_test_sees_a_wrong_distribution():
    """The same tests reject windows drawn otherwise: log-uniform ratios where the
    specification says uniform, and side lengths (not areas) uniform in the scale."""
    (log_op,) = build_transforms([{"RandCropImage": {"size": 224, "use_log_aspect": True}}],
                                 "ops")
    _, log_ratio = crop_draws(log_op, 2000, 2000)
    _, ratio_cdf = spec_marginals(1.0)
    assert stats.kstest(np.exp(log_ratio), ratio_cdf).pvalue < ALPHA

    rng = np.random.default_rng(0)
    side = rng.uniform(math.sqrt(0.08), 1.0, DRAWS)
    ratio = rng.uniform(3 / 4, 4 / 3, DRAWS)
    area = side ** 2
    fits = (area * ratio <= 1) & (area / ratio <= 1)
    area_cdf, _ = spec_marginals(1.0)
    assert stats.kstest(area[fits], area_cdf).pvalue < ALPHA


def _photo_jpeg(width=640, height=424):
    """scikit-learn's photo of a Chinese temple (640x427), cut to multiples of 8 so that
    libjpeg's reduced sizes are exact, as a quality-90 JPEG."""
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0][:height, :width]
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90)
    return buf.getvalue(), photo


def _ops(size, **crop_args):
    specs = [{"DecodeImage": {"to_rgb": True}}, {"RandCropImage": {"size": size, **crop_args}}]
    return build_transforms(specs, "ops"), fuse(build_transforms(specs, "ops"))


def test_fused_decode_and_crop_draws_the_same_windows_and_is_exact_when_not_reduced():
    data, _ = _photo_jpeg()
    (decode, crop), (fused,) = _ops(224)
    assert isinstance(fused, DecodeRandCrop)
    reduced = 0
    for seed in range(40):
        rng = random.Random(seed)
        plain = crop(decode(data, rng), rng)
        factor = fused.reduction(*crop.window(424, 640, random.Random(seed))[2:])
        out = fused(data, random.Random(seed))
        assert out.shape == plain.shape == (224, 224, 3) and out.dtype == np.uint8
        if factor == 1:
            np.testing.assert_array_equal(out, plain)
        reduced += factor > 1
    assert reduced == 0  # a 224 window of a 640x424 photo is never 448 high


@pytest.mark.parametrize("factor,flag", [(2, cv2.IMREAD_REDUCED_COLOR_2),
                                         (4, cv2.IMREAD_REDUCED_COLOR_4),
                                         (8, cv2.IMREAD_REDUCED_COLOR_8)])
def test_reduced_decode_matches_full_decode_averaged(factor, flag):
    """libjpeg's DCT scaling against full decoding then averaging factor x factor blocks
    (INTER_AREA): mean absolute difference at most 2.5 levels of 255 on a detailed photo
    (measured: 1.0-2.1; a block misplaced by one pixel gives about 6)."""
    data, _ = _photo_jpeg()
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    assert reduced.shape == (424 // factor, 640 // factor, 3)
    averaged = cv2.resize(full, reduced.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - averaged.astype(int)).mean() <= 2.5
    shifted = np.roll(averaged, 1, axis=1)
    assert np.abs(reduced.astype(int) - shifted.astype(int)).mean() > 2.5


def test_reduced_decode_crop_matches_full_decode_of_the_same_window():
    """With a 48-pixel output most windows decode at 1/2-1/8 size. Reference: full decoding,
    the same window, an antialiased (INTER_AREA) resize. Tolerance: mean absolute
    difference at most 6 levels of 255 over the images (measured 4.6 on this detailed
    photo), and every image at least as close to the reference as the plain path's
    non-antialiased INTER_LINEAR resize of the full decode (which is 4-12 levels away)."""
    data, _ = _photo_jpeg()
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    (decode, crop), (fused,) = _ops(48)
    factors, distances = [], []
    for seed in range(60):
        top, left, h, w = crop.window(424, 640, random.Random(seed))
        factors.append(fused.reduction(h, w))
        reference = cv2.resize(np.ascontiguousarray(full[top:top + h, left:left + w]),
                               (48, 48), interpolation=cv2.INTER_AREA).astype(int)
        rng = random.Random(seed)
        plain = crop(decode(data, rng), rng).astype(int)
        out = fused(data, random.Random(seed)).astype(int)
        distances.append(np.abs(out - reference).mean())
        assert distances[-1] <= np.abs(plain - reference).mean() + 0.5, (seed, factors[-1])
    assert np.mean(distances) <= 6
    assert {2, 4, 8}.issubset(factors)


def test_exif_turned_jpeg_is_cropped_as_opencv_turns_it():
    """OpenCV applies the EXIF orientation; the window is drawn from the turned size."""
    _, photo = _photo_jpeg()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    (decode, crop), (fused,) = _ops(48)
    for seed in range(10):
        rng = random.Random(seed)
        plain = crop(decode(buf.getvalue(), rng), rng)
        out = fused(buf.getvalue(), random.Random(seed))
        assert out.shape == plain.shape
        assert np.abs(out.astype(int) - plain.astype(int)).mean() < 20  # not another region


def test_reduced_decode_can_be_turned_off_and_png_takes_the_plain_path():
    (_, _), (fused,) = _ops(48)
    assert isinstance(fused, DecodeRandCrop)
    assert not any(isinstance(op, DecodeRandCrop) for op in _ops(48, reduced_decode=False)[1])
    assert not any(isinstance(op, DecodeRandCrop) for op in _ops(48, backend="pil")[1])
    _, photo = _photo_jpeg()
    png = cv2.imencode(".png", photo[:, :, ::-1])[1].tobytes()
    (decode, crop), _ = _ops(48)
    rng = random.Random(3)
    np.testing.assert_array_equal(fused(png, random.Random(3)), crop(decode(png, rng), rng))
    with pytest.raises(ValueError, match="not a decodable image"):
        fused(b"\xff\xd8 not really a jpeg", random.Random(0))


# ---------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    from make_jpeg_dataset import write_dataset

    out = tmp_path_factory.mktemp("jpegs")
    write_dataset(str(out), images=40, classes=4, width_range=(96, 160),
                  height_range=(72, 120))
    return out


def _config(jpegs, workers, batch_ops, normalize_tail):
    ops = [{"DecodeImage": {"to_rgb": True, "channel_first": False}},
           {"RandCropImage": {"size": 32}}, {"RandFlipImage": {"flip_code": 1}}]
    ops += normalize_tail
    dataset = {"name": "ImageNetDataset", "image_root": str(jpegs),
               "cls_label_path": str(jpegs / "train_list.txt"), "transform_ops": ops}
    if batch_ops:
        dataset["batch_transform_ops"] = batch_ops
    return {"DataLoader": {"Train": {
        "dataset": dataset,
        "sampler": {"name": "DistributedBatchSampler", "batch_size": 8, "shuffle": True},
        "loader": {"num_workers": workers, "use_shared_memory": True}}}}


NORMALIZE_HWC = [{"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225], "order": ""}}]
NORMALIZE_CHW = [{"ToCHWImage": None},
                 {"NormalizeImage": {"scale": "1.0/255.0", "order": "chw"}}]
MIXUP = [{"MixupOperator": {"alpha": 0.2}}]
CUTMIX_OR_MIXUP = [{"OpSampler": {"MixupOperator": {"alpha": 0.8, "prob": 0.5},
                                  "CutmixOperator": {"alpha": 1.0, "prob": 0.5}}}]


def _batches(jpegs, workers, on_device, batch_ops=MIXUP, tail=NORMALIZE_HWC, epoch=2,
             start=0):
    loader = build_dataloader(_config(jpegs, workers, batch_ops, tail), "Train", 11, 4,
                              normalize_on_device=on_device)
    assert (loader.normalize is not None) == on_device
    loader.batch_sampler.set_epoch(epoch, start)
    return [(x.numpy(), y.numpy()) for x, y in loader]


@pytest.mark.parametrize("batch_ops,tail", [(MIXUP, NORMALIZE_HWC),
                                            (CUTMIX_OR_MIXUP, NORMALIZE_HWC),
                                            (None, NORMALIZE_CHW)])
def test_device_normalisation_and_mixing_give_the_workers_batches(jpegs, batch_ops, tail):
    """uint8 batches normalised and mixed in the training process equal the batches the
    workers normalise and mix, for 0, 1 and 2 workers; and resuming mid-epoch replays the
    rest of the epoch."""
    reference = _batches(jpegs, 0, False, batch_ops, tail)
    assert reference[0][0].shape == (8, 3, 32, 32) and reference[0][0].dtype == np.float32
    if batch_ops:
        assert reference[0][1].shape == (8, 4)  # soft targets
    for workers in (0, 1, 2):
        for on_device in (False, True):
            got = _batches(jpegs, workers, on_device, batch_ops, tail)
            assert len(got) == len(reference) == 5
            for (x, y), (rx, ry) in zip(got, reference):
                np.testing.assert_allclose(x, rx, rtol=0, atol=1e-5)
                np.testing.assert_array_equal(y, ry)
    resumed = _batches(jpegs, 2, True, batch_ops, tail, start=3)
    for (x, y), (rx, ry) in zip(resumed, reference[3:]):
        np.testing.assert_allclose(x, rx, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y, ry)


def test_workers_send_uint8_when_the_device_normalises(jpegs):
    loader = build_dataloader(_config(jpegs, 0, MIXUP, NORMALIZE_HWC), "Train", 11, 4,
                              normalize_on_device=True)
    image, _, _, problem = loader.dataset[(0, 5)]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and problem is None
    erasing = NORMALIZE_HWC + [{"RandomErasing": {"EPSILON": 0.5}}]
    kept = build_dataloader(_config(jpegs, 0, MIXUP, erasing), "Train", 11, 4,
                            normalize_on_device=True)
    assert kept.normalize is None  # an operator after NormalizeImage: all in the workers
    assert kept.dataset[(0, 5)][0].dtype == np.float32


def test_too_little_shared_memory_is_one_line_naming_use_shared_memory(jpegs):
    from ppcls.data import check_shared_memory
    from ppcls.utils.errors import ConfigError

    free = os.statvfs("/dev/shm")
    free = free.f_bavail * free.f_frsize
    check_shared_memory(free // 100, 8, "DataLoader.Train")  # 18 batches of 1%: fits
    with pytest.raises(ConfigError) as err:
        check_shared_memory(free // 10, 8, "DataLoader.Train")
    message = str(err.value)
    assert "\n" not in message and "DataLoader.Train.loader.use_shared_memory: False" in message
    assert "/dev/shm has" in message
