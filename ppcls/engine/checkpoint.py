"""Checkpoints in PaddleClas's layout: `<prefix>.pdparams` (model), `.pdopt` (optimizer),
`.pdema` (EMA weights, when EMA is on) and `.pdstates` (epoch, iteration, metrics, schedule,
seed). Each file is written to a temporary name and renamed into place, and `.pdstates`
is written last, so a reader never sees a half-written file."""

import os

import paddle

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.utils.save_load import (check_compatible, load_pretrained_weights, read_state_dict,
                                   resolve_params_path)


def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    paddle.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rename_keys(state, renames):
    """Rename optimizer-state keys `<old>_<accumulator>` (and master-weight keys `<old>`)."""
    ordered = sorted(renames, key=len, reverse=True)  # longest first: conv2d_10 before conv2d_1

    def rename(key):
        if key in renames:
            return renames[key]
        for old in ordered:
            if key.startswith(old + "_"):
                return renames[old] + key[len(old):]
        return key

    renamed = {}
    for key, value in state.items():
        if key == "LR_Scheduler":  # the schedule's own state, not per parameter
            renamed[key] = value
        elif isinstance(value, dict):  # master weights, keyed by parameter name
            renamed[key] = _rename_keys(value, renames)
        else:
            renamed[rename(key)] = value
    return renamed


def _param_names(model):
    """Paddle names parameters by creation order within a process (conv2d_104.w_0); the
    model's structured names (blocks.0.0.dw.conv.weight) are stable across processes."""
    return {param.name: name for name, param in model.named_parameters()}


def optimizer_state_for_saving(optimizer, model):
    return _rename_keys(optimizer.state_dict(), _param_names(model))


def optimizer_state_for_loading(state, model):
    return _rename_keys(state, {v: k for k, v in _param_names(model).items()})


def save_checkpoint(prefix, model, optimizer=None, ema=None, state=None):
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    atomic_save(model.state_dict(), prefix + ".pdparams")
    if optimizer is not None:
        atomic_save(optimizer_state_for_saving(optimizer, model), prefix + ".pdopt")
    if ema is not None:
        atomic_save(ema.state_dict(), prefix + ".pdema")
    atomic_save(dict(state or {}), prefix + ".pdstates")


def strip_params_suffix(path):
    path = resolve_params_path(path)
    return path[: -len(".pdparams")] if path.endswith(".pdparams") else path


def read_states(prefix):
    path = prefix + ".pdstates"
    if not os.path.isfile(path):
        return None
    try:
        return paddle.load(path)
    except Exception as err:
        raise WeightsError(f"cannot read {path}: truncated or corrupt ({err})") from None


def load_checkpoint(path, model, optimizer=None, ema=None):
    """Restore everything a checkpoint holds; returns its `.pdstates` dict."""
    prefix = strip_params_suffix(path)
    state = read_states(prefix)
    if state is None:
        raise WeightsError(f"{prefix}.pdstates is missing: {prefix} is not a training "
                           "checkpoint (use Global.pretrained_model to load bare weights)")
    weights = read_state_dict(prefix + ".pdparams")
    model.set_state_dict(check_compatible(model, weights, prefix + ".pdparams"))
    if optimizer is not None:
        if not os.path.isfile(prefix + ".pdopt"):
            raise WeightsError(f"{prefix}.pdopt is missing; cannot resume the optimizer")
        optimizer.set_state_dict(optimizer_state_for_loading(paddle.load(prefix + ".pdopt"), model))
    if ema is not None:
        if os.path.isfile(prefix + ".pdema"):
            ema.set_state_dict(read_state_dict(prefix + ".pdema"))
        else:
            ema.set_state_dict(model.state_dict())
    return state


def load_weights(model, path, prefer_ema=False):
    """Weights for evaluation, export and inference: the EMA copy (`.pdema`) when the config
    has EMA and the checkpoint saved one, else the model weights. Returns "EMA" or "model"."""
    prefix = strip_params_suffix(path)
    if prefer_ema and os.path.isfile(prefix + ".pdema"):
        load_pretrained_weights(model, prefix + ".pdema", skip_mismatched_classifier=False)
        return "EMA"
    if prefer_ema:
        logger.warning("EMA is configured but %s.pdema does not exist: using the model weights",
                       prefix)
    load_pretrained_weights(model, path, skip_mismatched_classifier=False)
    return "model"
