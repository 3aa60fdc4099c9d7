"""Optimizers by PaddleClas name, built from the `Optimizer` section:

    Optimizer: {name: Momentum, momentum: 0.9, lr: {name: Cosine, learning_rate: 0.1,
                warmup_epoch: 5}, regularizer: {name: L2, coeff: 3.0e-5}, clip_norm: 5.0}

`clip_norm` clips each gradient tensor's norm (Paddle's ClipGradByNorm), as PaddleClas does;
`clip_global_norm` (ours) clips the norm of all gradients together (ClipGradByGlobalNorm).

Note on RMSProp: Paddle, like TensorFlow, adds epsilon inside the square root
(`g / sqrt(ms + epsilon)`); PyTorch adds it outside. TF-style recipes (epsilon 1e-3) port
to Paddle unchanged. TF starts the mean square at 1.0, Paddle at 0.
"""

import copy

import paddle

from ppcls.optimizer.learning_rate import SCHEDULES
from ppcls.utils.errors import ConfigError, shown, unknown
from ppcls.utils.factory import check, create, split_spec


def _split_by_decay(named_parameters, no_weight_decay_name, one_dim_no_decay):
    """(decayed, not decayed) trainable parameters. `no_weight_decay_name` holds
    space-separated substrings of the structured names (e.g. "bn fc.bias"), as in PaddleClas."""
    skip = (no_weight_decay_name or "").split()
    decay, no_decay = [], []
    for name, param in named_parameters:
        if param.stop_gradient:
            continue
        excluded = any(s in name for s in skip) or (one_dim_no_decay and len(param.shape) == 1)
        (no_decay if excluded else decay).append(param)
    return decay, no_decay


def _param_groups(named_parameters, no_weight_decay_name, one_dim_no_decay):
    decay, no_decay = _split_by_decay(named_parameters, no_weight_decay_name, one_dim_no_decay)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}] if no_decay else decay


def _momentum(learning_rate, parameters, weight_decay, grad_clip, multi_precision,
              momentum: float = 0.9, use_nesterov: bool = False, no_weight_decay_name: str = "",
              one_dim_param_no_weight_decay: bool = False):
    params = _param_groups(parameters, no_weight_decay_name, one_dim_param_no_weight_decay)
    return paddle.optimizer.Momentum(learning_rate, momentum, parameters=params,
                                     use_nesterov=use_nesterov, weight_decay=weight_decay,
                                     grad_clip=grad_clip, multi_precision=multi_precision)


def _rmsprop(learning_rate, parameters, weight_decay, grad_clip, multi_precision,
             rho: float = 0.95, epsilon: float = 1e-6, momentum: float = 0.0,
             centered: bool = False, no_weight_decay_name: str = "",
             one_dim_param_no_weight_decay: bool = False):
    params = _param_groups(parameters, no_weight_decay_name, one_dim_param_no_weight_decay)
    return paddle.optimizer.RMSProp(learning_rate, rho=rho, epsilon=epsilon, momentum=momentum,
                                    centered=centered, parameters=params,
                                    weight_decay=weight_decay, grad_clip=grad_clip)


def _adamw(learning_rate, parameters, weight_decay, grad_clip, multi_precision,
           beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
           no_weight_decay_name: str = "", one_dim_param_no_weight_decay: bool = False):
    # AdamW's decay is decoupled: `weight_decay` is a coefficient, not a regularizer.
    coeff = weight_decay._coeff if isinstance(weight_decay, paddle.regularizer.L2Decay) else (
        weight_decay or 0.0)
    decay, no_decay = _split_by_decay(parameters, no_weight_decay_name,
                                      one_dim_param_no_weight_decay)
    decayed = {p.name for p in decay}  # Paddle asks by its own parameter names
    return paddle.optimizer.AdamW(learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
                                  parameters=decay + no_decay, weight_decay=coeff,
                                  grad_clip=grad_clip,
                                  apply_decay_param_fun=lambda name: name in decayed,
                                  multi_precision=multi_precision)


OPTIMIZERS = {"Momentum": _momentum, "RMSProp": _rmsprop, "AdamW": _adamw}


def build_lr_scheduler(lr_spec, epochs, step_each_epoch):
    if isinstance(lr_spec, (int, float)) and not isinstance(lr_spec, bool):
        lr_spec = {"name": "Constant", "learning_rate": lr_spec}
    if not isinstance(lr_spec, dict) or "name" not in lr_spec:
        raise ConfigError("Optimizer.lr must be a number or a mapping with a name, e.g. "
                          "{name: Cosine, learning_rate: 0.1}")
    name, args = split_spec(lr_spec, "Optimizer.lr")
    schedule = create(SCHEDULES, name, args, "Optimizer.lr", kind="schedule",
                      injected={"epochs": epochs, "step_each_epoch": step_each_epoch})
    return schedule()


def _weight_decay(spec):
    if spec is None:
        return None
    name, args = split_spec(spec, "Optimizer.regularizer")
    kinds = {"L2": paddle.regularizer.L2Decay, "L1": paddle.regularizer.L1Decay}
    if name not in kinds:
        raise ConfigError(f"Optimizer.regularizer: {unknown('regularizer', name, list(kinds))}")
    for key in args:
        if key != "coeff":
            raise ConfigError(f"Optimizer.regularizer.{name}: {unknown('argument', key, ['coeff'])}")
    coeff = args.get("coeff", 0.0)
    if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or coeff < 0:
        raise ConfigError(f"Optimizer.regularizer.{name}.coeff must be a number >= 0, got "
                          f"{shown(coeff)}")
    return kinds[name](float(coeff))


def _grad_clip(clip_norm, clip_global_norm):
    if clip_norm and clip_global_norm:
        raise ConfigError("Optimizer: set clip_norm (per tensor) or clip_global_norm, not both")
    if clip_norm:
        return paddle.nn.ClipGradByNorm(float(clip_norm))
    if clip_global_norm:
        return paddle.nn.ClipGradByGlobalNorm(float(clip_global_norm))
    return None


INJECTED = ("learning_rate", "parameters", "weight_decay", "grad_clip", "multi_precision")


def _split_optimizer(config, epochs, step_each_epoch):
    """(name, arguments, lr scheduler, weight decay, grad clip, multi_precision) of the
    `Optimizer` section, every part checked."""
    spec = copy.deepcopy(config.get("Optimizer"))
    if not spec or "name" not in spec:
        raise ConfigError("Optimizer.name is missing; e.g. 'Optimizer: {name: Momentum, ...}'")
    lr = build_lr_scheduler(spec.pop("lr", None), epochs, step_each_epoch)
    weight_decay = _weight_decay(spec.pop("regularizer", None))
    if "weight_decay" in spec:  # AdamW configs give the coefficient directly
        weight_decay = spec.pop("weight_decay")
    grad_clip = _grad_clip(spec.pop("clip_norm", None), spec.pop("clip_global_norm", None))
    # PaddleClas's switch for float32 master weights; AMP O2 turns them on regardless.
    multi_precision = spec.pop("multi_precision", False)
    if not isinstance(multi_precision, bool):
        raise ConfigError(f"Optimizer.multi_precision must be true or false, got "
                          f"{shown(multi_precision)}")
    name, args = split_spec(spec, "Optimizer")
    check(OPTIMIZERS, name, args, "Optimizer", kind="optimizer", injected=INJECTED)
    return name, args, lr, weight_decay, grad_clip, multi_precision


def check_optimizer(config, epochs):
    _split_optimizer(config, epochs, step_each_epoch=1)


def build_optimizer(config, epochs, step_each_epoch, named_parameters, multi_precision=False):
    """Returns (optimizer, lr scheduler). `named_parameters`: the model's named_parameters()."""
    name, args, lr, weight_decay, grad_clip, wanted = _split_optimizer(config, epochs,
                                                                       step_each_epoch)
    optimizer = create(OPTIMIZERS, name, args, "Optimizer", kind="optimizer", injected={
        "learning_rate": lr, "parameters": list(named_parameters), "weight_decay": weight_decay,
        "grad_clip": grad_clip, "multi_precision": multi_precision or wanted})
    return optimizer, lr
