"""Learning-rate schedules, stepped once per iteration (or per epoch with `by_epoch`).

Each schedule is a function of the step counted from the end of warm-up, as PaddleClas's
schedules behave inside Paddle's LinearWarmup; warm-up rises linearly from
`warmup_start_lr` to the base rate over `warmup_epoch` epochs. One LRScheduler class carries
them, so the scheduler state saved with a checkpoint is just the step (`last_epoch`).
"""

import math

from paddle.optimizer import lr as paddle_lr

from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown


class WarmupSchedule(paddle_lr.LRScheduler):
    """lr(step) = warm-up for the first `warmup_steps`, then `decay(step - warmup_steps)`."""

    def __init__(self, base_lr, decay, warmup_steps=0, warmup_start_lr=0.0, last_epoch=-1,
                 by_epoch=False):
        self.decay, self.warmup_steps, self.warmup_start_lr = decay, warmup_steps, warmup_start_lr
        self.base = base_lr
        self.by_epoch = by_epoch
        super().__init__(base_lr, last_epoch)

    def get_lr(self):
        step = self.last_epoch
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base - self.warmup_start_lr) * step / self.warmup_steps
        return self.decay(step - self.warmup_steps)


class _Schedule:
    """Shared arguments of PaddleClas's schedules. `epochs` and `step_each_epoch` are
    supplied by the trainer."""

    def __init__(self, epochs, step_each_epoch, learning_rate: float, warmup_epoch: float = 0,
                 warmup_start_lr: float = 0.0, last_epoch: int = -1, by_epoch: bool = False):
        if learning_rate is None or learning_rate < 0:
            raise ConfigError(f"Optimizer.lr.learning_rate must be >= 0, got {shown(learning_rate)}")
        self.learning_rate, self.by_epoch = float(learning_rate), by_epoch
        self.steps_per_unit = 1 if by_epoch else step_each_epoch
        self.warmup_steps = round(min(warmup_epoch, epochs) * self.steps_per_unit)
        self.total_steps = epochs * self.steps_per_unit
        self.decay_steps = max(self.total_steps - self.warmup_steps, 1)
        self.warmup_start_lr, self.last_epoch = warmup_start_lr, last_epoch

    def decay(self, step):
        raise NotImplementedError

    def __call__(self):
        return WarmupSchedule(self.learning_rate, self.decay, self.warmup_steps,
                              self.warmup_start_lr, self.last_epoch, self.by_epoch)


class Constant(_Schedule):
    def decay(self, step):
        return self.learning_rate


class Cosine(_Schedule):
    """Half a cosine from learning_rate to eta_min over the steps after warm-up."""

    def __init__(self, epochs, step_each_epoch, learning_rate: float, eta_min: float = 0.0, **kwargs):
        super().__init__(epochs, step_each_epoch, learning_rate, **kwargs)
        self.eta_min = eta_min

    def decay(self, step):
        progress = min(step / self.decay_steps, 1.0)
        return self.eta_min + (self.learning_rate - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


class Linear(_Schedule):
    """Polynomial decay (power 1: linear) to end_lr over the steps after warm-up."""

    def __init__(self, epochs, step_each_epoch, learning_rate: float, end_lr: float = 0.0,
                 power: float = 1.0, **kwargs):
        super().__init__(epochs, step_each_epoch, learning_rate, **kwargs)
        self.end_lr, self.power = end_lr, power

    def decay(self, step):
        progress = min(step / self.decay_steps, 1.0)
        return (self.learning_rate - self.end_lr) * (1 - progress) ** self.power + self.end_lr


class Piecewise(_Schedule):
    """values[i] after the i-th boundary of decay_epochs (values has one more entry)."""

    def __init__(self, epochs, step_each_epoch, decay_epochs: list, values: list,
                 learning_rate: (float, type(None)) = None, **kwargs):
        if len(values) != len(decay_epochs) + 1:
            raise ConfigError("Optimizer.lr.values needs one more entry than decay_epochs")
        if learning_rate is not None and learning_rate != values[0]:
            # PaddleClas configs often give it too, and PaddleClas does not use it either.
            logger.warning("Optimizer.lr.learning_rate (%s) is not used by Piecewise: the "
                           "rate starts at values[0] (%s)", learning_rate, values[0])
        super().__init__(epochs, step_each_epoch, values[0], **kwargs)
        self.boundaries = [e * self.steps_per_unit for e in decay_epochs]
        self.values = values

    def decay(self, step):
        return self.values[sum(step >= b for b in self.boundaries)]


class Exponential(_Schedule):
    """learning_rate * gamma ** (step / decay period); the TF MnasNet recipe decays by 0.97
    every 2.4 epochs in steps (staircase)."""

    def __init__(self, epochs, step_each_epoch, learning_rate: float, gamma: float = 0.97,
                 decay_epochs: float = 2.4, staircase: bool = True, **kwargs):
        super().__init__(epochs, step_each_epoch, learning_rate, **kwargs)
        self.gamma, self.staircase = gamma, staircase
        self.period = decay_epochs * self.steps_per_unit

    def decay(self, step):
        exponent = step / self.period
        return self.learning_rate * self.gamma ** (math.floor(exponent) if self.staircase else exponent)


class Step(_Schedule):
    """Multiply by gamma every step_size epochs."""

    def __init__(self, epochs, step_each_epoch, learning_rate: float, step_size: int, gamma: float = 0.1,
                 **kwargs):
        super().__init__(epochs, step_each_epoch, learning_rate, **kwargs)
        self.gamma, self.step_size = gamma, step_size * self.steps_per_unit

    def decay(self, step):
        return self.learning_rate * self.gamma ** (step // self.step_size)


SCHEDULES = {s.__name__: s for s in (Constant, Cosine, Linear, Piecewise, Exponential, Step)}
