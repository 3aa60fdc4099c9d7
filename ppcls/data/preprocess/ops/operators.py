"""Image operators with PaddleClas's names and arguments.

Each operator is called as `op(img, rng)`: `img` is an HWC uint8 array (float32 after
NormalizeImage) and `rng` a `random.Random` owned by the sample, so an augmentation is a
function of the sample's seed alone, whatever process or worker runs it.
"""

import io
import math
from fractions import Fraction

import cv2
import numpy as np
from PIL import Image

from ppcls.utils.errors import ConfigError, did_you_mean

_PIL = Image.Resampling
# Resize filters by PaddleClas's names (its UnifiedResize), plus the aliases 'linear' and
# 'cubic'; None is bilinear. 'random' draws bilinear or bicubic per image from the sample's
# rng. As in PaddleClas, PIL has no 'area' (its resize is antialiased anyway; 'box' is the
# nearest thing) and OpenCV no 'box' or 'hamming'.
_FILTERS = {
    "cv2": {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
            "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC,
            "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4,
            "random": (cv2.INTER_LINEAR, cv2.INTER_CUBIC)},
    "pil": {"nearest": _PIL.NEAREST, "bilinear": _PIL.BILINEAR, "linear": _PIL.BILINEAR,
            "bicubic": _PIL.BICUBIC, "cubic": _PIL.BICUBIC, "box": _PIL.BOX,
            "hamming": _PIL.HAMMING, "lanczos": _PIL.LANCZOS,
            "random": (_PIL.BILINEAR, _PIL.BICUBIC)},
}


def _backend(value):
    """'cv2' or 'pil', in any case, as PaddleClas reads it (it falls back to cv2 with a
    warning on anything else; here that is an error)."""
    backend = value.lower() if isinstance(value, str) else value
    if backend not in _FILTERS:
        raise ConfigError(f"backend: {value!r} is not supported, only 'cv2' or 'pil'")
    return backend


class _Resizer:
    """resize(img, (width, height), rng) with a named filter, by OpenCV or by Pillow."""

    def __init__(self, interpolation, backend):
        self.backend = _backend(backend)
        filters = _FILTERS[self.backend]
        name = "bilinear" if interpolation is None else interpolation
        name = name.lower() if isinstance(name, str) else name
        if name not in filters:
            raise ConfigError(f"interpolation: {interpolation!r} is not supported with backend "
                              f"{self.backend!r}{did_you_mean(name, filters)}; allowed: "
                              + ", ".join(filters))
        self.filter = filters[name]

    def __call__(self, img, size, rng):
        resample = rng.choice(self.filter) if isinstance(self.filter, tuple) else self.filter
        if self.backend == "cv2":
            return cv2.resize(img, size, interpolation=resample)
        # Pillow filters every channel alike, so BGR arrays resize as well as RGB ones;
        # np.array, not asarray: a writable array, as OpenCV gives
        return np.array(Image.fromarray(np.ascontiguousarray(img)).resize(size, resample))


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
    """Encoded bytes -> HWC uint8 array, RGB unless to_rgb is False (then BGR).

    backend 'cv2' decodes with OpenCV, 'pil' with Pillow (`Image.open(...).convert("RGB")`,
    as torchvision's and timm's image folders load). They differ: OpenCV turns a photo by
    its EXIF orientation and Pillow does not, CMYK JPEGs come out a level apart, and builds
    with other libjpeg versions can differ more (the wheels tested here agree on plain
    JPEGs). Weights scored by those libraries need 'pil' for the exact input they saw."""

    def __init__(self, to_rgb=True, channel_first=False, to_np=True, backend="cv2"):
        only("to_np", to_np, True, "images are numpy arrays throughout")
        self.backend = _backend(backend)
        self.to_rgb, self.channel_first = to_rgb, channel_first

    def _decode_pil(self, data):
        try:
            rgb = np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # writable
        # unidentified or truncated files are OSErrors; a few plugins raise the others
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
        return rgb if self.to_rgb else rgb[:, :, ::-1]

    def _decode_cv2(self, data):
        try:
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            return None
        return bgr[:, :, ::-1] if self.to_rgb and bgr is not None else bgr

    def __call__(self, data, rng=None):
        if not data:
            raise ValueError("empty file, not a decodable image")
        img = self._decode_pil(data) if self.backend == "pil" else self._decode_cv2(data)
        if img is None:
            raise ValueError("not a decodable image")
        return img.transpose(2, 0, 1) if self.channel_first else img


class ResizeImage:
    """Resize to `size` ([w, h] or int), or the short side to `resize_short`, with the
    `interpolation` filter of the `backend` (see _FILTERS).

    The long side of a `resize_short` differs by backend. 'cv2' rounds it, as PaddleClas
    does: round(long * resize_short / short). 'pil' truncates it as torchvision's
    Resize(int) does, which torchvision's and timm's eval transforms use:
    int(resize_short * long / short). E.g. 640x427 to 256: 384x256 (cv2), 383x256 (pil).
    Pillow's resize is antialiased (it widens the filter when shrinking), as torchvision's
    is on PIL images; OpenCV's bilinear and bicubic are not."""

    def __init__(self, size=None, resize_short=None, interpolation=None, backend="cv2"):
        if (size is None) == (resize_short is None):
            raise ConfigError("ResizeImage needs exactly one of size and resize_short")
        self.size = _size_pair(size) if size is not None else None
        self.resize_short = resize_short
        self.resize = _Resizer(interpolation, backend)

    def _target(self, width, height):
        if self.size is not None:
            return self.size
        if self.resize.backend == "pil":
            short, long = sorted((width, height))
            long = int(self.resize_short * long / short)
            return (self.resize_short, long) if width <= height else (long, self.resize_short)
        ratio = self.resize_short / min(width, height)
        return int(round(width * ratio)), int(round(height * ratio))

    def __call__(self, img, rng=None):
        height, width = img.shape[:2]
        return self.resize(img, self._target(width, height), rng)


class CropImage:
    """Centre crop to `size` ([w, h] or int).

    `offset_rounding` (ours; PaddleClas has only `size`) places an odd margin: 'floor'
    (default, PaddleClas) starts at (h - th) // 2; 'half_even' at int(round((h - th) / 2))
    as torchvision's CenterCrop does, Python rounding halves to even: a margin of 119 starts
    at 60, not 59. The two differ when the margin is 3 more than a multiple of 4."""

    def __init__(self, size, offset_rounding="floor"):
        self.width, self.height = _size_pair(size)
        if offset_rounding not in ("floor", "half_even"):
            raise ConfigError(f"offset_rounding: {offset_rounding!r} is not supported, only "
                              "'floor' or 'half_even'")
        self.half_even = offset_rounding == "half_even"

    def _offset(self, margin):
        return int(round(margin / 2)) if self.half_even else margin // 2

    def __call__(self, img, rng=None):
        height, width = img.shape[:2]
        if height < self.height or width < self.width:
            raise ValueError(f"image {width}x{height} is smaller than the crop "
                             f"{self.width}x{self.height}; resize it first")
        top, left = self._offset(height - self.height), self._offset(width - self.width)
        return img[top:top + self.height, left:left + self.width]


class RandCropImage:
    """Random-resized crop: a random area fraction in `scale` and aspect ratio in `ratio`
    (uniform, or log-uniform with use_log_aspect), then resize to `size`; a centre crop if
    10 tries fail. `backend` and `interpolation` as for ResizeImage. `reduced_decode` (ours):
    right after a DecodeImage, decode JPEGs at reduced size when the window allows (see
    DecodeRandCrop)."""

    def __init__(self, size, scale=None, ratio=None, interpolation=None, use_log_aspect=False,
                 backend="cv2", reduced_decode=True):
        self.size = _size_pair(size)
        self.reduced_decode = bool(reduced_decode)
        self.scale = tuple(parse_number(s) for s in (scale or (0.08, 1.0)))
        self.ratio = tuple(parse_number(r) for r in (ratio or (3.0 / 4.0, 4.0 / 3.0)))
        self.use_log_aspect = use_log_aspect
        self.resize = _Resizer(interpolation, backend)

    def _aspect(self, rng):
        if self.use_log_aspect:
            return math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        return rng.uniform(*self.ratio)

    def window(self, height, width, rng):
        """(top, left, h, w) of the crop for an image of height x width."""
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
        top, left, h, w = self.window(*img.shape[:2], rng)
        return self.resize(img[top:top + h, left:left + w], self.size, rng)


# Orientations (EXIF tag 0x0112) that OpenCV applies by turning the image a quarter.
_TRANSPOSING = (5, 6, 7, 8)
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(data):
    """(height, width) of a JPEG as OpenCV's decoder will orient it, read from its header
    (tens of microseconds), or None for anything that is not a readable JPEG."""
    try:
        header = Image.open(io.BytesIO(data))
        if header.format != "JPEG":
            return None
        width, height = header.size
        transposed = header.getexif().get(0x0112) in _TRANSPOSING
    except Exception:  # noqa: BLE001 - unreadable here: the full decoder gives the error
        return None
    return (width, height) if transposed else (height, width)


class DecodeRandCrop:
    """DecodeImage (backend cv2) then RandCropImage (backend cv2, bilinear) in one step,
    which decodes a JPEG at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling: a fraction of the
    work) when the random window, scaled down so, still covers the output size; the final
    resize is then still a reduction. The window is drawn from the header's size by
    RandCropImage.window with the same rng calls, so crops follow the same distribution and
    seeds as the two operators; the window is placed in the reduced image to the nearest
    pixel. Windows too small to reduce, and non-JPEG files, take the two operators' own
    path, bit for bit. Built by `build_transforms`; RandCropImage's `reduced_decode: False`
    turns it off."""

    def __init__(self, decode, crop):
        self.decode, self.crop = decode, crop

    @staticmethod
    def applies(decode, crop):
        return (isinstance(decode, DecodeImage) and isinstance(crop, RandCropImage)
                and crop.reduced_decode and decode.backend == "cv2" and not decode.channel_first
                and crop.resize.backend == "cv2" and crop.resize.filter == cv2.INTER_LINEAR)

    def reduction(self, h, w):
        """The largest DCT scale-down that keeps the h x w window at least the output size."""
        out_w, out_h = self.crop.size
        return max((k for k in (1, 2, 4, 8) if h >= k * out_h and w >= k * out_w), default=1)

    def __call__(self, data, rng):
        size = jpeg_size(data) if data else None
        if size is None:
            return self.crop(self.decode(data), rng)
        top, left, h, w = self.crop.window(*size, rng)
        factor = self.reduction(h, w)
        if factor == 1:
            img = self.decode(data)
            return self.crop.resize(img[top:top + h, left:left + w], self.crop.size, rng)
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED[factor])
        if bgr is None:
            raise ValueError("not a decodable image")
        # libjpeg rounds the reduced size up: scale by the real ratio, not 1 / factor
        fy, fx = bgr.shape[0] / size[0], bgr.shape[1] / size[1]
        y0, y1 = round(top * fy), round((top + h) * fy)
        x0, x1 = round(left * fx), round((left + w) * fx)
        out = cv2.resize(bgr[y0:y1, x0:x1], self.crop.size, interpolation=cv2.INTER_LINEAR)
        return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if self.decode.to_rgb else out


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
        out = img.astype(np.float32)  # then in place: the same arithmetic, no temporaries
        out *= np.float32(self.scale)
        out -= self.mean
        out /= self.std
        return out.astype(self.dtype, copy=False)


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
