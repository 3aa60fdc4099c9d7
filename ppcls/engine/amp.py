"""Mixed precision (the `AMP` section) in one place: which level runs, the autocast every
forward pass of training and evaluation goes through, O2's float32 master weights, and
resuming a checkpoint saved at another level.

Levels: float32 (no AMP, or AMP on a CPU), O1 (float32 weights; white-listed operators run
in float16) and O2 (float16 weights except BatchNorm's; the optimizer updates float32
master copies). Everything here follows Paddle 3.3.1's paddle/amp/auto_cast.py,
amp_lists.py and optimizer/optimizer.py.
"""

import re

import paddle
from paddle.amp.auto_cast import need_keep_fp32  # which layers O2's decorate leaves alone

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError

FLOAT32 = "float32"  # the level name of a run without AMP, as checkpoints record it

# Paddle's float16 white list (amp_lists.py) has conv2d but not depthwise_conv2d, the
# operator F.conv2d runs on CUDA builds when groups == channels (nn/functional/conv.py).
# Off the list, with its float32 weight, O1 would run every depthwise convolution of
# MnasNet, and the BatchNorm and activation after it, in float32 behind extra casts. Its
# GPU kernel takes float16 (phi's depthwise_conv2d is registered for it).
WHITE_LIST = frozenset({"depthwise_conv2d"})


def amp_settings(config, device):
    """The `AMP` section (its level checked with the config) when AMP runs, else None
    (float32)."""
    amp = config.get("AMP")
    if not amp or not amp["use_amp"]:
        return None
    if device != "gpu":
        logger.warning("AMP needs a GPU: training in float32 on %s instead", device)
        return None
    return amp


def level_of(amp):
    return amp["level"] if amp else FLOAT32


def _describe(level):
    """A level for messages; None for a checkpoint saved before levels were recorded."""
    if level is None:
        return "an unrecorded precision"
    return level if level == FLOAT32 else f"AMP {level}"


def evaluates_under_autocast(amp):
    """Evaluation runs under auto_cast when AMP.use_fp16_test says so, and always at O2
    (its float16 model cannot take float32 images), in training and in eval.py alike:
    eval.py keeps the float32 weights the checkpoint holds, and auto_cast rounds them
    to float16 exactly as O2's decorate did in training."""
    if not amp:
        return False
    if amp["level"] == "O2" and not amp["use_fp16_test"]:
        logger.warning("AMP level O2 evaluates in float16: AMP.use_fp16_test is taken as True")
        return True
    return amp["use_fp16_test"]


def autocast(amp):
    """The auto_cast context of every AMP forward pass, training and evaluation alike."""
    return paddle.amp.auto_cast(level=amp["level"], use_promote=amp["use_promote"],
                                custom_white_list=set(WHITE_LIST))


def master_weight_params(model, amp):
    """The parameters the optimizer keeps float32 masters of: at O2, the trainable ones
    that decorate casts to float16 (BatchNorm's stay float32); none at O1 or float32."""
    if level_of(amp) != "O2":
        return []
    return [param for layer in model.sublayers(include_self=True)
            if not need_keep_fp32(layer, "float16")
            for param in layer.parameters(include_sublayers=False) if not param.stop_gradient]


def keep_float32_masters(optimizer, model, dtype="float16"):
    """AMP O2's decorate casts parameters to float16 in place, discarding their float32
    values; the optimizer then makes its float32 master weights at the first step from the
    float16 copies, so loaded weights would lose their low bits for good. Making the masters
    now, from the loaded float32 values, avoids that: Paddle's optimizer reuses a master
    that exists under the parameter's name (as it does for masters a resumed checkpoint
    restored, which are kept)."""
    for layer in model.sublayers(include_self=True):
        if need_keep_fp32(layer, dtype):
            continue
        for param in layer.parameters(include_sublayers=False):
            if not param.stop_gradient and param.name not in optimizer._master_weights:
                optimizer._create_master_weight(param)


def _master_suffix(param_name):
    """Accumulators of a parameter with a master are named after the master
    (`<param>_fp32_master_<n>_velocity_0`, optimizer.py's _gen_master_weight_var_name)."""
    return re.compile(re.escape(param_name) + r"_fp32_master_\d+_")


def convert_optimizer_state(state, optimizer, model, amp, saved_level, path):
    """The optimizer state `state` (Paddle's names), saved at `saved_level`, made right for
    this run's level. Paddle finds each accumulator by name at the first step, and names
    it after the float32 master when a parameter has one, so a state saved with masters
    (O2) cannot load without them and the reverse (`Optimizer set error, ... should in
    state dict`). Per parameter:
      - master saved, none now (O2 -> O1 or float32): the master's value becomes the
        parameter (the saved float32 weights are the float16 ones, rounded) and its
        accumulators take the parameter's name;
      - master now, none saved (O1 or float32 -> O2): the master is made from the loaded
        float32 weights and the accumulators take its name.
    Anything else that names a master it does not hold cannot be converted: one line."""
    saved_masters = dict(state.get("master_weights") or {})
    wanted = {p.name: p for p in master_weight_params(model, amp)}
    params = {p.name: p for p in model.parameters()}
    dropped = [name for name in saved_masters if name not in wanted]
    added = [name for name in wanted if name not in saved_masters]
    for name, master in saved_masters.items():
        _name_master_after(master, name)
    if not dropped and not added:
        _check_master_names(state, saved_masters, path, saved_level, amp)
        return state
    state = dict(state)
    for name in dropped:
        master = saved_masters.pop(name)
        if name in params:
            params[name].set_value(master.astype(params[name].dtype))
        state = _rename_accumulators(state, _master_suffix(name), name + "_")
    for name in added:
        master = optimizer._create_master_weight(wanted[name])  # from the loaded weights
        saved_masters[name] = master
        state = _rename_accumulators(state, re.compile(re.escape(name) + "_"),
                                     master.name + "_", skip=_master_suffix(name))
    if saved_masters:
        state["master_weights"] = saved_masters
    else:
        state.pop("master_weights", None)
    _check_master_names(state, saved_masters, path, saved_level, amp)
    logger.info("%s was saved at %s and this run is %s: its optimizer state was converted "
                "(%d float32 master weight(s) %s)", path, _describe(saved_level),
                _describe(level_of(amp)), len(dropped) or len(added),
                "taken as the weights" if dropped else "made from the weights")
    return state


def _name_master_after(master, param_name):
    """A loaded master keeps the name its tensor had in the process that saved it, after
    that process's parameter names, which follow creation order; Paddle names a master's
    accumulators after the master's name, so it must follow this process's parameter
    (as the accumulators' keys in the file, renamed from structured names, do)."""
    number = re.search(r"_fp32_master_(\d+)$", master.name or "")
    master.name = f"{param_name}_fp32_master_{number.group(1) if number else 0}"


def _rename_accumulators(state, pattern, replacement, skip=None):
    renamed = {}
    for key, value in state.items():
        if key not in ("master_weights", "LR_Scheduler") and pattern.match(key) and not (
                skip and skip.match(key)):
            key = pattern.sub(replacement, key, count=1)
        renamed[key] = value
    return renamed


def _check_master_names(state, masters, path, saved_level, amp):
    """An accumulator named after a master the state does not hold cannot be loaded."""
    for key in state:
        match = re.match(r"(.+)_fp32_master_\d+_", key)
        if match and match.group(1) not in masters:
            raise WeightsError(
                f"{path}.pdopt (saved at {_describe(saved_level)}) holds {key}, an optimizer "
                f"state for a float32 master weight it does not save, so this run at "
                f"{_describe(level_of(amp))} cannot resume it: resume at the level it was "
                f"saved at, or start from its weights with -o Global.pretrained_model={path}")
