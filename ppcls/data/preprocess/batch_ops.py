"""Batch operators: Mixup (Zhang et al., 2017), CutMix (Yun et al., 2019) and a sampler
choosing between them. They take a batch of CHW float images `[N, C, H, W]`, integer labels
`[N]` and the batch's `random.Random`, and return the images with soft targets `[N, class_num]`.
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


class _PairMixer:
    """Shared by Mixup and CutMix: a Beta(alpha, alpha) mixing weight and a partner per
    sample, both drawn from the batch's rng."""

    def __init__(self, class_num, alpha):
        if alpha <= 0:
            raise ConfigError(f"{type(self).__name__}.alpha must be > 0, got {alpha}")
        self.class_num, self.alpha = class_num, alpha

    def draw(self, rng, n):
        lam = rng.betavariate(self.alpha, self.alpha)
        order = list(range(n))
        rng.shuffle(order)
        return lam, np.array(order)


class MixupOperator(_PairMixer):
    def __init__(self, class_num, alpha=1.0):
        super().__init__(class_num, alpha)

    def __call__(self, images, labels, rng):
        lam, perm = self.draw(rng, len(images))
        targets = one_hot(labels, self.class_num)
        images = lam * images + (1 - lam) * images[perm]
        return images.astype(np.float32), lam * targets + (1 - lam) * targets[perm]


class CutmixOperator(_PairMixer):
    def __init__(self, class_num, alpha=0.2):
        super().__init__(class_num, alpha)

    def __call__(self, images, labels, rng):
        lam, perm = self.draw(rng, len(images))
        height, width = images.shape[2:]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = rng.randrange(height), rng.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.copy()
        images[:, :, top:bottom, left:right] = images[perm][:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area really kept
        targets = one_hot(labels, self.class_num)
        return images, lam * targets + (1 - lam) * targets[perm]


class OpSampler:
    """Pick one of the given batch operators by its `prob` (the rest: leave the batch as it
    is, with one-hot targets). Configured as {MixupOperator: {alpha, prob}, ...}."""

    def __init__(self, class_num, **ops):
        self.class_num = class_num
        self.ops, self.probs = [], []
        for name, args in ops.items():
            if name not in BATCH_OPS or name == "OpSampler":
                raise ConfigError(f"OpSampler: unknown batch operator {name!r}; available: "
                                  "MixupOperator, CutmixOperator")
            args = dict(args or {})
            self.probs.append(float(args.pop("prob", 0)))
            self.ops.append(BATCH_OPS[name](class_num=class_num, **args))
        if sum(self.probs) > 1 + 1e-6:
            raise ConfigError(f"OpSampler: probabilities sum to {sum(self.probs)} > 1")

    def __call__(self, images, labels, rng):
        draw, cumulative = rng.random(), 0.0
        for op, prob in zip(self.ops, self.probs):
            cumulative += prob
            if draw < cumulative:
                return op(images, labels, rng)
        return images, one_hot(labels, self.class_num)


BATCH_OPS = {"MixupOperator": MixupOperator, "CutmixOperator": CutmixOperator,
             "OpSampler": OpSampler}
