"""AutoAugment's ImageNet policy (Cubuk et al., arXiv 1805.09501) and RandAugment
(Cubuk et al., arXiv 1909.13719) on uint8 HWC arrays, using Pillow's image operations.

Magnitudes run from 0 to 10 (`_MAX_LEVEL`); each operation maps a magnitude to its own
range. Geometric operations pick a random sign.
"""

from PIL import Image, ImageEnhance, ImageOps
import numpy as np

_MAX_LEVEL = 10.0
_FILL = (128, 128, 128)


def _signed(value, rng):
    return value if rng.random() < 0.5 else -value


def _shear_x(img, m, rng):
    v = _signed(0.3 * m / _MAX_LEVEL, rng)
    return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0), Image.BICUBIC, fillcolor=_FILL)


def _shear_y(img, m, rng):
    v = _signed(0.3 * m / _MAX_LEVEL, rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0), Image.BICUBIC, fillcolor=_FILL)


def _translate_x(img, m, rng):
    v = _signed(150 / 331 * m / _MAX_LEVEL * img.size[0], rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, v, 0, 1, 0), fillcolor=_FILL)


def _translate_y(img, m, rng):
    v = _signed(150 / 331 * m / _MAX_LEVEL * img.size[1], rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v), fillcolor=_FILL)


def _rotate(img, m, rng):
    return img.rotate(_signed(30 * m / _MAX_LEVEL, rng), fillcolor=_FILL)


def _enhancer(kind):
    def apply(img, m, rng):
        return kind(img).enhance(1 + _signed(0.9 * m / _MAX_LEVEL, rng))
    return apply


def _posterize(img, m, rng):
    return ImageOps.posterize(img, max(1, 8 - int(4 * m / _MAX_LEVEL)))


def _solarize(img, m, rng):
    return ImageOps.solarize(img, 256 - int(256 * m / _MAX_LEVEL))


OPERATIONS = {
    "ShearX": _shear_x, "ShearY": _shear_y, "TranslateX": _translate_x,
    "TranslateY": _translate_y, "Rotate": _rotate,
    "Color": _enhancer(ImageEnhance.Color), "Contrast": _enhancer(ImageEnhance.Contrast),
    "Brightness": _enhancer(ImageEnhance.Brightness),
    "Sharpness": _enhancer(ImageEnhance.Sharpness),
    "Posterize": _posterize, "Solarize": _solarize,
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, rng: ImageOps.invert(img),
}

# The 25 ImageNet sub-policies: two (operation, probability, magnitude) steps each.
IMAGENET_POLICY = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
]


def _to_pil(img):
    return Image.fromarray(np.ascontiguousarray(img))


class AutoAugment:
    """Apply one random ImageNet sub-policy."""

    def __call__(self, img, rng):
        pil = _to_pil(img)
        for name, probability, magnitude in IMAGENET_POLICY[rng.randrange(len(IMAGENET_POLICY))]:
            if rng.random() < probability:
                pil = OPERATIONS[name](pil, magnitude, rng)
        return np.asarray(pil)


class RandAugment:
    """Apply `num_layers` operations drawn uniformly, each at `magnitude` (0..10)."""

    def __init__(self, num_layers=2, magnitude=5):
        self.num_layers, self.magnitude = num_layers, magnitude
        self.names = sorted(OPERATIONS)

    def __call__(self, img, rng):
        pil = _to_pil(img)
        for _ in range(self.num_layers):
            pil = OPERATIONS[rng.choice(self.names)](pil, self.magnitude, rng)
        return np.asarray(pil)
