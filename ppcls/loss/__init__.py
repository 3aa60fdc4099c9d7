"""Losses by PaddleClas name. `build_loss(Loss.Train)` returns a callable giving a dict of
each named loss (already weighted) and their sum under "loss"."""

import paddle
import paddle.nn.functional as F

from ppcls.utils.errors import ConfigError
from ppcls.utils.factory import split_spec, create


class CELoss(paddle.nn.Layer):
    """Cross-entropy with optional label smoothing (`epsilon`). Accepts integer labels
    `[N]` / `[N, 1]` or soft targets `[N, class_num]` (from Mixup/CutMix)."""

    def __init__(self, epsilon: float = None):
        super().__init__()
        if epsilon is not None and not 0 <= epsilon < 1:
            raise ConfigError(f"CELoss.epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits, label):
        class_num = logits.shape[-1]
        soft = label.ndim == 2 and label.shape[-1] == class_num and label.dtype != paddle.int64
        if not soft and not self.epsilon:
            return {"CELoss": F.cross_entropy(logits, label.reshape([-1]))}
        target = label if soft else F.one_hot(label.reshape([-1]), class_num)
        if self.epsilon:
            target = target * (1 - self.epsilon) + self.epsilon / class_num
        loss = -(target * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()
        return {"CELoss": loss}


LOSSES = {"CELoss": CELoss}


class CombinedLoss:
    def __init__(self, specs, where):
        if not isinstance(specs, list) or not specs:
            raise ConfigError(f"{where} must be a non-empty list such as "
                              "[{CELoss: {weight: 1.0}}]")
        self.losses = []
        for i, spec in enumerate(specs):
            name, args = split_spec(spec, f"{where}.{i}")
            weight = args.pop("weight", 1.0)
            self.losses.append((create(LOSSES, name, args, f"{where}.{i}", kind="loss"), weight))

    def __call__(self, logits, label):
        out = {}
        for loss, weight in self.losses:
            out.update({k: v * weight for k, v in loss(logits, label).items()})
        out["loss"] = paddle.add_n(list(out.values()))
        return out


def build_loss(config, mode):
    specs = (config.get("Loss") or {}).get(mode)
    return CombinedLoss(specs, f"Loss.{mode}") if specs else None
