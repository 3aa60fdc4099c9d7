"""AMP mechanisms that a GPU run meets, reached on a CPU where Paddle allows: the
state-dict hooks of O2's decorate, float16 parameters, the optimizer's float32 master
weights and their accumulators, and the op lists given to auto_cast.

On a CPU, `paddle.amp.decorate` and `auto_cast` return without acting (Paddle 3.3.1,
paddle/amp/auto_cast.py: decorate checks for a GPU/XPU/custom place before casting), and
Paddle has no float16 convolution or optimizer kernels there; so these tests call the same
pieces decorate calls (`amp_initialize`, `StateDictHook`) and stop where a float16 kernel
would be needed."""

import copy

import numpy as np
import paddle
import pytest
from paddle.amp.auto_cast import StateDictHook, amp_initialize

from conftest import QUICK_START, digits_overrides
from ppcls.arch import build_model
from ppcls.engine import replicas
from ppcls.engine.amp import autocast, convert_optimizer_state, keep_float32_masters
from ppcls.engine.checkpoints import check_weights_finite
from ppcls.engine.ema import ModelEMA
from ppcls.engine.engine import Engine
from ppcls.optimizer import build_optimizer
from ppcls.utils.config import get_config
from ppcls.weights.checkpoint import resume_checkpoint, save_checkpoint
from ppcls.weights.paddle_pickle import read_paddle_file


def hook_like_decorate(model):
    """What `decorate(..., save_dtype="float32")` adds to a model (auto_cast.py, the
    `save_dtype` branch of amp_decorate): every sublayer's state_dict casts its tensors.
    Returns a list that grows by one at each hooked state_dict call of a sublayer."""
    calls = []
    for layer in model.sublayers(include_self=True):
        layer.register_state_dict_hook(StateDictHook("float32"))
        layer.register_state_dict_hook(lambda state, _calls=calls: _calls.append(len(state)))
    return calls


def small_model(seed):
    paddle.seed(seed)
    return build_model({"Arch": {"name": "MnasNet_small", "class_num": 10}})


def test_one_state_dict_of_a_decorated_model_runs_a_hook_per_sublayer():
    """The cost the EMA and the checks must not pay at every step."""
    model = small_model(0)
    calls = hook_like_decorate(model)
    model.state_dict()
    assert len(calls) == len(model.sublayers(include_self=True))


@pytest.mark.parametrize("source_dtype", ["float32", "float16"])
def test_ema_update_follows_the_formula_without_state_dict_hooks(source_dtype):
    """ema = decay * ema + (1 - decay) * weights, for every parameter and BN statistic,
    from float32 weights or O2's float16 ones, and no hooked state_dict call."""
    source, average = small_model(1), small_model(2)
    ema = ModelEMA(average, source, decay=0.9)
    calls = hook_like_decorate(source) + hook_like_decorate(average)
    if source_dtype == "float16":
        amp_initialize([source], "float16", None)  # what O2's decorate casts (BN stays)
    for name, param in source.named_parameters():
        param.set_value(paddle.randn(param.shape).astype(param.dtype))
    calls_before = len(calls)
    expected = {}
    source_values = {n: t.astype("float32").numpy() for n, t in
                     replicas.named_state_tensors(source)}
    for name, tensor in replicas.named_state_tensors(average):
        expected[name] = tensor.numpy() * np.float32(0.9) + source_values[name] * np.float32(0.1)
    ema.update(source)
    assert len(calls) == calls_before, "a state_dict hook ran"
    for name, tensor in replicas.named_state_tensors(average):
        np.testing.assert_allclose(tensor.numpy(), expected[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)
        assert tensor.dtype == paddle.float32


def test_training_steps_and_their_checks_run_no_state_dict_hook(digits, tmp_path):
    """A training epoch with EMA, the finite-weights check of every save and the replicas'
    checksums work on the parameters and buffers; only writing a checkpoint (float32
    files) goes through state_dict."""
    config = get_config(QUICK_START, digits_overrides(digits, tmp_path, epochs=1,
                                                      extra=["EMA.decay=0.9"]))
    engine = Engine(config, "train")
    calls = hook_like_decorate(engine.model)
    engine.train_epoch(1)
    check_weights_finite(engine.model, 1, 6, engine.checkpoints)
    replicas.state_checksums([engine.model, engine.ema.model])
    assert calls == []


# ------------------------------------------------- resuming at another AMP level
def fp32_latest(digits, tmp_path):
    """`latest` of one float32 epoch (6 steps): its optimizer holds velocities."""
    config = get_config(QUICK_START, digits_overrides(digits, tmp_path / "fp32", epochs=1))
    Engine(config, "train").train()
    return config, tmp_path / "fp32" / "MnasNet_B1_x0_5" / "latest"


def o2_model_and_optimizer(config):
    """A model and optimizer as AMP O2 builds them (engine._setup_training). Without the
    config's global-norm clip: it runs before the optimizer looks up its state, and Paddle
    has no float16 CPU kernel for it either."""
    config = copy.deepcopy(config)
    del config["Optimizer"]["clip_global_norm"]
    model = build_model(config)
    optimizer, _ = build_optimizer(config, 2, 6, model.named_parameters(), multi_precision=True)
    return model, optimizer


def step_up_to_the_kernels(model, optimizer):
    """One optimizer step on float16 weights: Paddle creates or looks up the masters and
    their accumulators by name (where a wrongly named state fails), then stops on a CPU
    at the float16 update kernel, which it has only on GPUs."""
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    paddle.add_n([p.astype("float32").sum() for p in trainable]).backward()
    try:
        optimizer.step()
    except RuntimeError as err:  # only the missing CPU kernel of the update is expected
        if "kernel `momentum` is not registered" not in str(err):
            raise


def to_o2(model, optimizer):
    keep_float32_masters(optimizer, model)
    hook_like_decorate(model)
    amp_initialize([model], "float16", None)
    assert any(p.dtype == paddle.float16 for p in model.parameters())


def o2_checkpoint(config, latest, prefix):
    """What an O2 run on a GPU saves at `prefix` (float32 .pdparams through decorate's
    save_dtype hooks; master-named accumulators and the masters in .pdopt), made on a CPU
    from `latest`; the masters differ from the weights in their low bits, as in training."""
    model, optimizer = o2_model_and_optimizer(config)
    model.set_state_dict(read_paddle_file(str(latest) + ".pdparams"))
    to_o2(model, optimizer)
    step_up_to_the_kernels(model, optimizer)
    for key, tensor in optimizer.state_dict().items():
        if key == "master_weights":
            for master in tensor.values():
                master.set_value(master + paddle.randn(master.shape) * 1e-4)
        elif key != "LR_Scheduler":
            tensor.set_value(paddle.randn(tensor.shape).astype(tensor.dtype))
    assert any("_fp32_master_0_velocity_0" in k for k in optimizer.state_dict())
    states = dict(read_paddle_file(str(latest) + ".pdstates"), amp_level="O2", master_weights=True)
    save_checkpoint(str(prefix), model, optimizer, None, states)
    return read_paddle_file(str(prefix) + ".pdopt")


def test_an_o2_checkpoint_resumes_in_float32(digits, tmp_path, capsys):
    """The velocities move to the float32 parameters' names and the master weights become
    the weights; training then goes on."""
    config, latest = fp32_latest(digits, tmp_path)
    prefix = tmp_path / "o2" / "latest"
    saved = o2_checkpoint(config, latest, prefix)
    resumed = Engine(get_config(QUICK_START, digits_overrides(
        digits, tmp_path / "resumed", extra=[f"Global.checkpoints={prefix}"])), "train")
    assert (f"{prefix} was saved at AMP O2 and this run is float32: its optimizer state was "
            "converted") in capsys.readouterr().out
    structured = {p.name: n for n, p in resumed.model.named_parameters()}
    loaded = resumed.optimizer.state_dict()  # before the first step: the state to be used
    velocities = {k: v for k, v in loaded.items() if k.endswith("_velocity_0")}
    assert velocities and not any("_fp32_master_" in k for k in loaded)
    for key, value in velocities.items():
        name = structured[key[:-len("_velocity_0")]]
        if name in saved["master_weights"]:  # BatchNorm's parameters have none
            name += "_fp32_master_0"
        np.testing.assert_array_equal(np.asarray(value), np.asarray(saved[f"{name}_velocity_0"]))
    for name, param in resumed.model.named_parameters():
        if name in saved["master_weights"]:
            np.testing.assert_array_equal(param.numpy(), np.asarray(saved["master_weights"][name]))
    resumed.train()  # epoch 2
    state = read_paddle_file(str(tmp_path / "resumed" / "MnasNet_B1_x0_5" / "latest.pdstates"))
    assert (state["epoch"], state["amp_level"]) == (2, "float32")


def test_a_float32_checkpoint_resumes_at_o2(digits, tmp_path):
    """The masters are made from the loaded float32 weights, and the velocities take the
    masters' names, where the first O2 step looks for them."""
    config, latest = fp32_latest(digits, tmp_path)
    saved = read_paddle_file(str(latest) + ".pdopt")
    model, optimizer = o2_model_and_optimizer(config)
    o2 = {"level": "O2", "use_promote": True}
    resume_checkpoint(str(latest), model, optimizer, None, lambda state: convert_optimizer_state(
        state, optimizer, model, o2, "float32", str(latest)))
    weights = {p.name: p.numpy() for p in model.parameters()}
    structured = {p.name: n for n, p in model.named_parameters()}
    to_o2(model, optimizer)
    step_up_to_the_kernels(model, optimizer)  # before: "Optimizer set error, ... should in"
    state = optimizer.state_dict()
    masters = state["master_weights"]
    assert masters
    for name, master in masters.items():
        np.testing.assert_array_equal(master.numpy(), weights[name])
        velocity = state[f"{master.name}_velocity_0"]
        np.testing.assert_array_equal(np.asarray(velocity),
                                      np.asarray(saved[f"{structured[name]}_velocity_0"]))


def test_an_o2_checkpoint_resumes_at_o2(digits, tmp_path):
    """The same level keeps the state as it is: the masters and their velocities load."""
    config, latest = fp32_latest(digits, tmp_path)
    prefix = tmp_path / "o2" / "latest"
    saved = o2_checkpoint(config, latest, prefix)
    model, optimizer = o2_model_and_optimizer(config)
    o2 = {"level": "O2", "use_promote": True}
    resume_checkpoint(str(prefix), model, optimizer, None, lambda state: convert_optimizer_state(
        state, optimizer, model, o2, "O2", str(prefix)))
    to_o2(model, optimizer)
    step_up_to_the_kernels(model, optimizer)
    state = optimizer.state_dict()
    structured = {p.name: n for n, p in model.named_parameters()}
    for name, master in state["master_weights"].items():
        np.testing.assert_array_equal(master.numpy(),
                                      np.asarray(saved["master_weights"][structured[name]]))
        np.testing.assert_array_equal(
            np.asarray(state[f"{master.name}_velocity_0"]),
            np.asarray(saved[f"{structured[name]}_fp32_master_0_velocity_0"]))


def test_the_amp_level_is_recorded_in_every_checkpoint(digits, tmp_path):
    config, latest = fp32_latest(digits, tmp_path)
    state = read_paddle_file(str(latest) + ".pdstates")
    assert (state["amp_level"], state["master_weights"]) == ("float32", False)


# ------------------------------------------------------------- O1's op lists
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_autocast_runs_depthwise_convolutions_in_float16(level):
    """MnasNet's main operator is on the float16 white list of the autocast that training
    and evaluation share. On a CPU auto_cast does not cast, but it installs its op lists
    on the tracer all the same (paddle/amp/auto_cast.py, amp_guard), which is what a GPU
    run consults for each operator."""
    from paddle.base.framework import _dygraph_tracer

    default_white, _ = _dygraph_tracer()._get_amp_op_list()
    with autocast({"level": level, "use_promote": True}):
        white, black = _dygraph_tracer()._get_amp_op_list()
    assert "depthwise_conv2d" in white and "depthwise_conv2d" not in black
    assert "conv2d" in white  # Paddle's own list is extended, not replaced
    assert "depthwise_conv2d" not in default_white  # outside, Paddle's lists come back
