"""AMP mechanisms that a GPU run meets, reached on a CPU where Paddle allows: the
state-dict hooks of O2's decorate, float16 parameters, the optimizer's float32 master
weights and their accumulators, and the op lists given to auto_cast.

On a CPU, `paddle.amp.decorate` and `auto_cast` return without acting (Paddle 3.3.1,
paddle/amp/auto_cast.py: decorate checks for a GPU/XPU/custom place before casting), and
Paddle has no float16 convolution or optimizer kernels there; so these tests call the same
pieces decorate calls (`amp_initialize`, `StateDictHook`) and stop where a float16 kernel
would be needed."""

import numpy as np
import paddle
import pytest
from paddle.amp.auto_cast import StateDictHook, amp_initialize

from conftest import QUICK_START, digits_overrides
from ppcls.arch import build_model
from ppcls.engine import replicas
from ppcls.engine.ema import ModelEMA
from ppcls.engine.engine import Engine
from ppcls.utils.config import get_config


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
    engine._check_weights_finite(1, 6)
    replicas.state_checksums([engine.model, engine.ema.model])
    assert calls == []
