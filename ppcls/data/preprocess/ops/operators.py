"""Image operators with PaddleClas's names and arguments.

Each operator is called as `op(img, rng)`: `img` is an HWC uint8 array (float32 after
NormalizeImage) and `rng` a `random.Random` owned by the sample, so an augmentation is a
function of the sample's seed alone, whatever process or worker runs it.
"""

import io
import math
import os

import cv2
import numpy as np
from PIL import Image

from ppcls.utils.errors import ConfigError, did_you_mean, shown

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
        raise ConfigError(f"backend: {shown(value)} is not supported, only 'cv2' or 'pil'")
    return backend


class _Resizer:
    """resize(img, (width, height), rng) with a named filter, by OpenCV or by Pillow."""

    def __init__(self, interpolation, backend):
        self.backend = _backend(backend)
        filters = _FILTERS[self.backend]
        name = "bilinear" if interpolation is None else interpolation
        name = name.lower() if isinstance(name, str) else name
        if name not in filters:
            raise ConfigError(f"interpolation: {shown(interpolation)} is not supported with backend "
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


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _size_pair(size, key="size"):
    """An int, or [width, height] as PaddleClas writes it; positive."""
    pair = (size, size) if _is_int(size) else size
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(_is_int(v) and v > 0 for v in pair)):
        raise ConfigError(f"{key} must be a positive integer or [width, height], got {shown(size)}")
    return pair[0], pair[1]


def parse_number(value, key="value"):
    """A finite number as configs write it, including fractions such as '1.0/255.0'. Each
    side is read by float(), which rounds a decimal exactly as Fraction did, in bounded
    time: Fraction('1e99999999') built a 100-million-digit integer first."""
    number = None
    if isinstance(value, str):
        numerator, slash, denominator = value.partition("/")
        try:
            top, bottom = float(numerator), float(denominator) if slash else 1.0
        except ValueError:
            bottom = None
        if bottom == 0:
            raise ConfigError(f"{key}: {shown(value)} divides by zero")
        number = None if bottom is None else top / bottom
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past 1e308
            number = math.inf
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {shown(value)}")
    return number


# ------------------------------------------------------------------ the pixel cap
# Every image's width x height is checked from its header before it is decoded. The
# default, 2**27 (134 MPix, 384 MiB as 8-bit RGB), is 1.5x Pillow's MAX_IMAGE_PIXELS:
# it admits the 100-MPix frames of medium-format cameras (11648x8736), while a 140 KB
# PNG of 12000x12000 (432 MB decoded, 1.7 GB as float32) is refused.
DEFAULT_MAX_PIXELS = 2**27
MAX_PIXELS_LIMIT = 2**30  # OpenCV refuses to decode larger images anyway
PIXEL_CAP_VARIABLE = "PPCLS_MAX_IMAGE_PIXELS"


def pixel_cap(max_pixels=None):
    """The largest width x height decoded: `max_pixels` (DecodeImage's argument) when given,
    else $PPCLS_MAX_IMAGE_PIXELS, else DEFAULT_MAX_PIXELS."""
    if max_pixels is None:
        text = os.environ.get(PIXEL_CAP_VARIABLE, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        if len(text) > 10 or not text.isdigit() or not 1 <= int(text) <= MAX_PIXELS_LIMIT:
            raise ConfigError(f"{PIXEL_CAP_VARIABLE} must be an integer from 1 to "
                              f"{MAX_PIXELS_LIMIT}, got {shown(text)}")
        return int(text)
    if not _is_int(max_pixels) or not 1 <= max_pixels <= MAX_PIXELS_LIMIT:
        raise ConfigError(f"max_pixels must be an integer from 1 to {MAX_PIXELS_LIMIT}, got "
                          f"{shown(max_pixels)}")
    return max_pixels


def _check_output_size(size, cap):
    if size[0] * size[1] > cap:
        raise ConfigError(f"size {size[0]}x{size[1]} is over the pixel cap of {cap}")


def over_cap(width, height, cap, doing=""):
    return ValueError(f"{doing}{width}x{height} pixels ({width * height / 1e6:.1f} MPix), over the "
                      f"pixel cap of {cap} (raise DecodeImage.max_pixels or {PIXEL_CAP_VARIABLE} "
                      "if such images are genuine)")


def only(key, value, supported, why):
    """PaddleClas keys accepted with the one value implemented here; others are refused."""
    if value != supported:
        raise ConfigError(f"{key}: {shown(value)} is not supported, only {supported!r} ({why})")


class DecodeImage:
    """Encoded bytes -> HWC uint8 array, RGB unless to_rgb is False (then BGR).

    backend 'cv2' decodes with OpenCV, 'pil' with Pillow (`Image.open(...).convert("RGB")`,
    as torchvision's and timm's image folders load). They differ: OpenCV turns a photo by
    its EXIF orientation and Pillow does not, CMYK JPEGs come out a level apart, and builds
    with other libjpeg versions can differ more (the wheels tested here agree on plain
    JPEGs). Weights scored by those libraries need 'pil' for the exact input they saw.

    `max_pixels` (ours): images whose header gives more pixels are refused before decoding
    (see pixel_cap). Either backend reads the header with Pillow, which reads no pixels to
    do so; a format Pillow does not know is refused, since its size cannot be checked."""

    def __init__(self, to_rgb=True, channel_first=False, to_np=True, backend="cv2",
                 max_pixels: (int, type(None)) = None):
        only("to_np", to_np, True, "images are numpy arrays throughout")
        self.backend = _backend(backend)
        self.to_rgb, self.channel_first = to_rgb, channel_first
        self.max_pixels = pixel_cap(max_pixels)
        # Pillow's Image.open warns about images above its own limit and refuses those of
        # more than twice it, before we can read their size: our cap takes its place, so
        # Pillow is silent on every image the cap admits. (Silencing it per image instead,
        # with warnings.catch_warnings, would reset Python's record of warnings already
        # shown: another library's once-per-run warning would then repeat at every step.)
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < self.max_pixels:
            Image.MAX_IMAGE_PIXELS = self.max_pixels

    def read_header(self, data):
        """Pillow's image of the file's header, its size checked against the cap; a
        ValueError saying why the file cannot be used."""
        if not data:
            raise ValueError("empty file, not a decodable image")
        try:
            header = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ValueError(f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels, over the pixel "
                             f"cap of {self.max_pixels}") from None
        # unidentified or truncated files are OSErrors; a few plugins raise the others
        except (OSError, SyntaxError, ValueError):
            raise ValueError("not a decodable image") from None
        width, height = header.size
        if width * height > self.max_pixels:
            raise over_cap(width, height, self.max_pixels)
        return header

    def decode(self, data, header):
        """The pixels of a file whose `header` read_header returned."""
        img = self._decode_pil(header) if self.backend == "pil" else self._decode_cv2(data)
        if img is None:
            raise ValueError("not a decodable image")
        return img.transpose(2, 0, 1) if self.channel_first else img

    def _decode_pil(self, header):
        try:
            rgb = np.array(header.convert("RGB"))  # writable
        except (OSError, SyntaxError, ValueError):
            return None
        return rgb if self.to_rgb else rgb[:, :, ::-1]

    def _decode_cv2(self, data):
        try:
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            return None
        return bgr[:, :, ::-1] if self.to_rgb and bgr is not None else bgr

    def __call__(self, data, rng=None):
        return self.decode(data, self.read_header(data))


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
        if resize_short is not None and not (_is_int(resize_short) and resize_short > 0):
            raise ConfigError(f"resize_short must be a positive integer, got {shown(resize_short)}")
        self.size = _size_pair(size) if size is not None else None
        self.resize_short = resize_short
        self.resize = _Resizer(interpolation, backend)
        # an image within the cap can still be resized past it: a 4 x 4000 strip's short
        # side resized to 256 makes 256 x 256000
        self.max_pixels = pixel_cap()
        if self.size is not None:
            _check_output_size(self.size, self.max_pixels)

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
        target = self._target(width, height)
        if target[0] * target[1] > self.max_pixels:
            raise over_cap(*target, self.max_pixels, f"resizing {width}x{height} to ")
        return self.resize(img, target, rng)


class CropImage:
    """Centre crop to `size` ([w, h] or int).

    `offset_rounding` (ours; PaddleClas has only `size`) places an odd margin: 'floor'
    (default, PaddleClas) starts at (h - th) // 2; 'half_even' at int(round((h - th) / 2))
    as torchvision's CenterCrop does, Python rounding halves to even: a margin of 119 starts
    at 60, not 59. The two differ when the margin is 3 more than a multiple of 4."""

    def __init__(self, size, offset_rounding="floor"):
        self.width, self.height = _size_pair(size)
        if offset_rounding not in ("floor", "half_even"):
            raise ConfigError(f"offset_rounding: {shown(offset_rounding)} is not supported, only "
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


def _positive_range(values, key):
    """[low, high], finite, 0 < low <= high."""
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise ConfigError(f"{key} must be [low, high], got {shown(values)}")
    low, high = (parse_number(v, key) for v in values)
    if not 0 < low <= high:
        raise ConfigError(f"{key} must be [low, high] with 0 < low <= high, got {shown(values)}")
    return low, high


class RandCropImage:
    """Random-resized crop: a random area fraction in `scale` and aspect ratio in `ratio`
    (uniform, or log-uniform with use_log_aspect), then resize to `size`; a centre crop if
    10 tries fail. `backend` and `interpolation` as for ResizeImage. `reduced_decode` (ours):
    right after a DecodeImage, decode JPEGs at reduced size when the window allows (see
    DecodeRandCrop)."""

    def __init__(self, size, scale=None, ratio=None, interpolation=None, use_log_aspect=False,
                 backend="cv2", reduced_decode=True):
        self.size = _size_pair(size)
        _check_output_size(self.size, pixel_cap())
        self.reduced_decode = bool(reduced_decode)
        self.scale = _positive_range(scale or (0.08, 1.0), "scale")
        self.ratio = _positive_range(ratio or (3.0 / 4.0, 4.0 / 3.0), "ratio")
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


def jpeg_size(header):
    """(height, width) of a JPEG as OpenCV's decoder will orient it, from the header
    DecodeImage.read_header returned (tens of microseconds), or None for anything that is
    not a JPEG with a readable header."""
    if header.format != "JPEG":
        return None
    width, height = header.size
    try:
        transposed = header.getexif().get(0x0112) in _TRANSPOSING
    except Exception:  # noqa: BLE001 - unreadable EXIF: the full decoder gives its answer
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
        header = self.decode.read_header(data)  # the pixel cap holds for reduced decodes too
        size = jpeg_size(header)
        if size is None:
            return self.crop(self.decode.decode(data, header), rng)
        top, left, h, w = self.crop.window(*size, rng)
        factor = self.reduction(h, w)
        if factor == 1:
            img = self.decode.decode(data, header)
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
            raise ConfigError(f"RandFlipImage.flip_code must be 1, 0 or -1, got {shown(flip_code)}")
        self.flip_code = flip_code

    def __call__(self, img, rng):
        return cv2.flip(img, self.flip_code) if rng.random() < 0.5 else img


def _per_channel(key, values, default, nonzero=False):
    """3 finite float32 numbers, one per channel (non-zero ones for a divisor)."""
    values = default if values is None else values
    what = "finite non-zero numbers" if nonzero else "finite numbers"
    valid = (isinstance(values, (list, tuple)) and len(values) == 3
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values))
    if valid:
        with np.errstate(over="ignore"):
            array = np.array(values, dtype=np.float64).astype(np.float32)
        valid = np.all(np.isfinite(array)) and not (nonzero and np.any(array == 0))
    if not valid:
        raise ConfigError(f"{key} must be 3 {what} (one per channel), got {shown(values)}")
    return array


class NormalizeImage:
    """(img * scale - mean) / std as float32. `order` 'chw' expects CHW input; '' or 'hwc'
    HWC. The dataset turns HWC into CHW at the end, as PaddleClas does."""

    def __init__(self, scale=None, mean=None, std=None, order="chw", output_fp16=False,
                 channel_num=3):
        only("channel_num", channel_num, 3, "images have 3 channels")
        self.scale = parse_number(scale if scale is not None else "1.0/255.0", "scale")
        if self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {shown(scale)}")
        shape = (3, 1, 1) if order == "chw" else (1, 1, 3)
        self.mean = _per_channel("mean", mean, [0.485, 0.456, 0.406]).reshape(shape)
        self.std = _per_channel("std", std, [0.229, 0.224, 0.225], nonzero=True).reshape(shape)
        self.dtype = np.float16 if output_fp16 else np.float32
        # a tiny std or a huge scale sends pixels to infinity: a confident wrong answer
        with np.errstate(over="ignore", invalid="ignore"):
            extremes = (np.float32([0, 255]).reshape(-1, 1) * np.float32(self.scale)
                        - self.mean.reshape(1, 3)) / self.std.reshape(1, 3)
        if not np.all(np.abs(extremes) <= np.finfo(self.dtype).max):
            raise ConfigError(f"scale {self.scale:g}, mean and std turn pixel values 0..255 into "
                              f"numbers beyond {np.dtype(self.dtype).name} (up to "
                              f"{np.abs(extremes).max():g}): check them")

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
            raise ConfigError(f"RandomErasing.mode must be const, pixel or channel, got {shown(mode)}")
        self.probability, self.sl, self.sh = EPSILON, parse_number(sl, "sl"), parse_number(sh, "sh")
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
