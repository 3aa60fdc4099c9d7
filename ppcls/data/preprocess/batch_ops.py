"""Batch operators: Mixup (Zhang et al., 2017), CutMix (Yun et al., 2019) and a sampler
choosing between them. Called on a batch of CHW float images `[N, C, H, W]`, integer labels
`[N]` and the batch's `random.Random`, they return the images mixed and soft targets
`[N, class_num]`. The loader splits that in two: `plan` (in the worker: every random draw,
and the targets) and `mix_images` (on the device, after normalisation; see ppcls/data).
"""

import math

import numpy as np

from ppcls.utils.errors import ConfigError


def one_hot(labels, class_num):
    if labels.ndim == 2:  # already soft
        return labels.astype(np.float32)
    out = np.zeros((len(labels), class_num), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def mix_images(images, mix):
    """Apply a mixing plan (from a batch operator's `plan`) to NCHW images: a numpy array in
    a loader worker, or a Paddle tensor on the device in the training process (the plan's
    partner order then arrives as a tensor there too). Normalisation is per pixel and
    affine, so mixing normalised images equals normalising mixed ones."""
    if not mix:
        return images
    partner = images[mix["perm"]]
    if "box" not in mix:  # Mixup
        return mix["lam"] * images + (1 - mix["lam"]) * partner
    top, bottom, left, right = mix["box"]  # CutMix: the partner's pixels inside the box
    mixed = images.copy() if isinstance(images, np.ndarray) else images.clone()
    mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    return mixed


class _PairMixer:
    """Shared by Mixup and CutMix: a Beta(alpha, alpha) mixing weight and a partner per
    sample, both drawn from the batch's rng. `plan` draws everything from the rng and
    gives the soft targets; `mix_images` applies the plan, wherever the images are."""

    def __init__(self, class_num, alpha):
        if alpha <= 0:
            raise ConfigError(f"{type(self).__name__}.alpha must be > 0, got {alpha}")
        self.class_num, self.alpha = class_num, alpha

    def draw(self, rng, n):
        lam = rng.betavariate(self.alpha, self.alpha)
        order = list(range(n))
        rng.shuffle(order)
        return lam, np.array(order)

    def __call__(self, images, labels, rng):
        targets, mix = self.plan(labels, rng, images.shape[2:])
        return mix_images(images, mix).astype(np.float32), targets


def _soft(labels, class_num, lam, perm):
    targets = one_hot(labels, class_num)
    return lam * targets + (1 - lam) * targets[perm]


class MixupOperator(_PairMixer):
    def __init__(self, class_num, alpha=1.0):
        super().__init__(class_num, alpha)

    def plan(self, labels, rng, image_hw):
        lam, perm = self.draw(rng, len(labels))
        return _soft(labels, self.class_num, lam, perm), {"lam": lam, "perm": perm}


class CutmixOperator(_PairMixer):
    def __init__(self, class_num, alpha=0.2):
        super().__init__(class_num, alpha)

    def plan(self, labels, rng, image_hw):
        lam, perm = self.draw(rng, len(labels))
        height, width = image_hw
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = rng.randrange(height), rng.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area really kept
        return _soft(labels, self.class_num, lam, perm), {"perm": perm,
                                                           "box": [top, bottom, left, right]}


class OpSampler:
    """Pick one of the given batch operators by its `prob` (the rest: leave the batch as it
    is, with one-hot targets). Configured as {MixupOperator: {alpha, prob}, ...}."""

    def __init__(self, class_num, MixupOperator: (dict, type(None)) = None,  # noqa: N803
                 CutmixOperator: (dict, type(None)) = None):  # noqa: N803 - PaddleClas's keys
        self.class_num = class_num
        self.ops, self.probs = [], []
        chosen = {"MixupOperator": MixupOperator, "CutmixOperator": CutmixOperator}
        for name, args in chosen.items():
            if args is None:
                continue
            args = dict(args)
            self.probs.append(float(args.pop("prob", 0)))
            self.ops.append(BATCH_OPS[name](class_num=class_num, **args))
        if sum(self.probs) > 1 + 1e-6:
            raise ConfigError(f"OpSampler: probabilities sum to {sum(self.probs)} > 1")

    def plan(self, labels, rng, image_hw):
        draw, cumulative = rng.random(), 0.0
        for op, prob in zip(self.ops, self.probs):
            cumulative += prob
            if draw < cumulative:
                return op.plan(labels, rng, image_hw)
        return one_hot(labels, self.class_num), {}

    def __call__(self, images, labels, rng):
        targets, mix = self.plan(labels, rng, images.shape[2:])
        return mix_images(images, mix), targets


BATCH_OPS = {"MixupOperator": MixupOperator, "CutmixOperator": CutmixOperator,
             "OpSampler": OpSampler}
