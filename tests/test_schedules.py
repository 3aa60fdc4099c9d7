"""Learning-rate schedules against PaddleClas's definitions, computed with Paddle's own
schedulers (PaddleClas builds each schedule from these: the decay over the steps after
warm-up, inside LinearWarmup from warmup_start_lr to learning_rate)."""

import math

import pytest
from paddle.optimizer import lr as paddle_lr

from ppcls.optimizer import build_lr_scheduler

EPOCHS, STEPS, WARMUP = 10, 7, 2


def paddleclas_reference(name, warmup_epoch):
    """The scheduler PaddleClas builds for the same config (by its source's formulas)."""
    decay_steps = (EPOCHS - warmup_epoch) * STEPS
    decay = {
        "Cosine": lambda: paddle_lr.CosineAnnealingDecay(0.4, T_max=decay_steps, eta_min=0.01),
        "Linear": lambda: paddle_lr.PolynomialDecay(0.4, decay_steps=decay_steps, end_lr=0.02,
                                                    power=2.0),
        "Step": lambda: paddle_lr.StepDecay(0.4, step_size=3 * STEPS, gamma=0.5),
        "Piecewise": lambda: paddle_lr.PiecewiseDecay([4 * STEPS, 8 * STEPS], [0.4, 0.04, 0.004]),
    }[name]()
    if not warmup_epoch:
        return decay
    return paddle_lr.LinearWarmup(decay, warmup_steps=warmup_epoch * STEPS, start_lr=0.001,
                                  end_lr=0.4)


SPECS = {
    "Cosine": {"name": "Cosine", "learning_rate": 0.4, "eta_min": 0.01},
    "Linear": {"name": "Linear", "learning_rate": 0.4, "end_lr": 0.02, "power": 2.0},
    "Step": {"name": "Step", "learning_rate": 0.4, "step_size": 3, "gamma": 0.5},
    "Piecewise": {"name": "Piecewise", "decay_epochs": [4, 8], "values": [0.4, 0.04, 0.004]},
}


@pytest.mark.parametrize("warmup_epoch", [0, WARMUP])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_schedule_equals_paddleclas_at_every_step(name, warmup_epoch):
    spec = dict(SPECS[name], warmup_epoch=warmup_epoch, warmup_start_lr=0.001)
    ours = build_lr_scheduler(spec, EPOCHS, STEPS)
    reference = paddleclas_reference(name, warmup_epoch)
    for step in range(EPOCHS * STEPS):
        assert ours() == pytest.approx(reference(), rel=1e-9, abs=1e-12), step
        ours.step()
        reference.step()


def test_exponential_is_the_tf_staircase():
    """The TF MnasNet recipe: lr x 0.97 ** floor(epoch / 2.4) after warm-up."""
    spec = {"name": "Exponential", "learning_rate": 0.064, "gamma": 0.97, "decay_epochs": 2.4,
            "warmup_epoch": WARMUP}
    ours = build_lr_scheduler(spec, EPOCHS, STEPS)
    for step in range(EPOCHS * STEPS):
        if step < WARMUP * STEPS:
            expected = 0.064 * step / (WARMUP * STEPS)
        else:
            expected = 0.064 * 0.97 ** math.floor((step - WARMUP * STEPS) / (2.4 * STEPS))
        assert ours() == pytest.approx(expected, rel=1e-12), step
        ours.step()


def test_resumed_scheduler_continues_at_the_same_value():
    spec = dict(SPECS["Cosine"], warmup_epoch=WARMUP)
    first = build_lr_scheduler(spec, EPOCHS, STEPS)
    for _ in range(30):
        first.step()
    resumed = build_lr_scheduler(spec, EPOCHS, STEPS)
    resumed.set_state_dict(first.state_dict())
    for _ in range(10):
        assert resumed() == first()
        first.step()
        resumed.step()
