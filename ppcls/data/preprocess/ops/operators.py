"""Image operators with PaddleClas's names and arguments.

Each operator is called as `op(img, rng)`: `img` is an HWC uint8 array (float32 after
NormalizeImage) and `rng` a `random.Random` owned by the sample, so an augmentation is a
function of the sample's seed alone, whatever process or worker runs it.
"""

import math
from fractions import Fraction

import cv2
import numpy as np

from ppcls.utils.errors import ConfigError

_INTERPOLATIONS = {
    None: cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
    "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC,
    "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4,
}


def _interpolation(name):
    if name not in _INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {name!r}; allowed: "
                          + ", ".join(k for k in _INTERPOLATIONS if k))
    return _INTERPOLATIONS[name]


def _size_pair(size):
    """An int, or [width, height] as PaddleClas writes it."""
    if isinstance(size, int):
        return size, size
    width, height = size
    return int(width), int(height)


def parse_number(value):
    """Numbers as configs write them, including fractions such as '1.0/255.0'."""
    if isinstance(value, str):
        numerator, _, denominator = value.partition("/")
        try:
            return float(Fraction(numerator.strip())) / (
                float(Fraction(denominator.strip())) if denominator else 1.0)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{value!r} is not a number") from None
    return float(value)


def only(key, value, supported, why):
    """PaddleClas keys accepted with the one value implemented here; others are refused."""
    if value != supported:
        raise ConfigError(f"{key}: {value!r} is not supported, only {supported!r} ({why})")


class DecodeImage:
    """Encoded bytes -> HWC uint8 array (RGB unless to_rgb is False)."""

    def __init__(self, to_rgb=True, channel_first=False, to_np=True, backend="cv2"):
        only("to_np", to_np, True, "images are numpy arrays throughout")
        only("backend", backend, "cv2", "images are decoded with OpenCV")
        self.to_rgb, self.channel_first = to_rgb, channel_first

    def __call__(self, data, rng=None):
        if not data:
            raise ValueError("empty file, not a decodable image")
        try:
            img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
        if img is None:
            raise ValueError("not a decodable image")
        if self.to_rgb:
            img = img[:, :, ::-1]
        return img.transpose(2, 0, 1) if self.channel_first else img


class ResizeImage:
    """Resize to `size` ([w, h] or int), or the short side to `resize_short`."""

    def __init__(self, size=None, resize_short=None, interpolation=None, backend="cv2"):
        if (size is None) == (resize_short is None):
            raise ConfigError("ResizeImage needs exactly one of size and resize_short")
        only("backend", backend, "cv2", "resizing uses OpenCV")
        self.size = _size_pair(size) if size is not None else None
        self.resize_short = resize_short
        self.interpolation = _interpolation(interpolation)

    def __call__(self, img, rng=None):
        height, width = img.shape[:2]
        if self.size is not None:
            target = self.size
        else:
            ratio = self.resize_short / min(width, height)
            target = (int(round(width * ratio)), int(round(height * ratio)))
        return cv2.resize(img, target, interpolation=self.interpolation)


class CropImage:
    """Centre crop to `size` ([w, h] or int)."""

    def __init__(self, size):
        self.width, self.height = _size_pair(size)

    def __call__(self, img, rng=None):
        height, width = img.shape[:2]
        if height < self.height or width < self.width:
            raise ValueError(f"image {width}x{height} is smaller than the crop "
                             f"{self.width}x{self.height}; resize it first")
        top, left = (height - self.height) // 2, (width - self.width) // 2
        return img[top:top + self.height, left:left + self.width]


class RandCropImage:
    """Random-resized crop: a random area fraction in `scale` and aspect ratio in `ratio`
    (uniform, or log-uniform with use_log_aspect), then resize to `size`; a centre crop if
    10 tries fail."""

    def __init__(self, size, scale=None, ratio=None, interpolation=None, use_log_aspect=False,
                 backend="cv2"):
        only("backend", backend, "cv2", "resizing uses OpenCV")
        self.size = _size_pair(size)
        self.scale = tuple(parse_number(s) for s in (scale or (0.08, 1.0)))
        self.ratio = tuple(parse_number(r) for r in (ratio or (3.0 / 4.0, 4.0 / 3.0)))
        self.use_log_aspect = use_log_aspect
        self.interpolation = _interpolation(interpolation)

    def _aspect(self, rng):
        if self.use_log_aspect:
            return math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        return rng.uniform(*self.ratio)

    def _window(self, height, width, rng):
        area = height * width
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = self._aspect(rng)
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif aspect > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, rng):
        top, left, h, w = self._window(*img.shape[:2], rng)
        crop = img[top:top + h, left:left + w]
        return cv2.resize(crop, self.size, interpolation=self.interpolation)


class RandFlipImage:
    """Flip with probability 0.5: flip_code 1 horizontal, 0 vertical, -1 both (OpenCV)."""

    def __init__(self, flip_code=1):
        if flip_code not in (-1, 0, 1):
            raise ConfigError(f"RandFlipImage.flip_code must be 1, 0 or -1, got {flip_code!r}")
        self.flip_code = flip_code

    def __call__(self, img, rng):
        return cv2.flip(img, self.flip_code) if rng.random() < 0.5 else img


class NormalizeImage:
    """(img * scale - mean) / std as float32. `order` 'chw' expects CHW input; '' or 'hwc'
    HWC. The dataset turns HWC into CHW at the end, as PaddleClas does."""

    def __init__(self, scale=None, mean=None, std=None, order="chw", output_fp16=False,
                 channel_num=3):
        self.scale = parse_number(scale if scale is not None else "1.0/255.0")
        shape = (3, 1, 1) if order == "chw" else (1, 1, 3)
        self.mean = np.array(mean if mean is not None else [0.485, 0.456, 0.406],
                             dtype=np.float32).reshape(shape)
        self.std = np.array(std if std is not None else [0.229, 0.224, 0.225],
                            dtype=np.float32).reshape(shape)
        only("channel_num", channel_num, 3, "images have 3 channels")
        for key, value in (("mean", mean), ("std", std)):
            if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 3):
                raise ConfigError(f"{key} must be a list of 3 numbers (one per channel), got "
                                  f"{value!r}")
        self.dtype = np.float16 if output_fp16 else np.float32

    def __call__(self, img, rng=None):
        img = (img.astype(np.float32) * self.scale - self.mean) / self.std
        return img.astype(self.dtype)


class ToCHWImage:
    def __call__(self, img, rng=None):
        return img.transpose(2, 0, 1)


class RandomErasing:
    """Erase a random rectangle of an HWC float image (Zhong et al., 2017) with probability
    EPSILON; area fraction in [sl, sh], aspect ratio in [r1, 1/r1]. mode 'const' fills with
    `mean`, 'pixel' with per-pixel normal noise, 'channel' with per-channel noise."""

    def __init__(self, EPSILON=0.5, sl=0.02, sh=0.4, r1=0.3, mean=(0.0, 0.0, 0.0),
                 attempt=100, use_log_aspect=False, mode="const"):
        if mode not in ("const", "pixel", "channel"):
            raise ConfigError(f"RandomErasing.mode must be const, pixel or channel, got {mode!r}")
        self.probability, self.sl, self.sh = EPSILON, parse_number(sl), parse_number(sh)
        self.r1 = (math.log(r1), math.log(1 / r1)) if use_log_aspect else (r1, 1 / r1)
        self.use_log_aspect, self.mean, self.attempt, self.mode = use_log_aspect, mean, attempt, mode

    def __call__(self, img, rng):
        if rng.random() > self.probability:
            return img
        height, width, channels = img.shape
        for _ in range(self.attempt):
            target_area = rng.uniform(self.sl, self.sh) * height * width
            aspect = rng.uniform(*self.r1)
            aspect = math.exp(aspect) if self.use_log_aspect else aspect
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < w < width and 0 < h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                img = img.copy()
                noise = np.random.default_rng(rng.getrandbits(64))
                if self.mode == "pixel":
                    img[top:top + h, left:left + w] = noise.standard_normal((h, w, channels))
                elif self.mode == "channel":
                    img[top:top + h, left:left + w] = noise.standard_normal((1, 1, channels))
                else:
                    img[top:top + h, left:left + w] = np.asarray(self.mean[:channels])
                return img
        return img
