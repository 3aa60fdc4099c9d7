"""ppcls.weights.load_into serves any model: the MnasNet specifics come from the model's own
hook, and a model without one loads files in its own tensor names."""

import numpy as np
import paddle
import pytest

from ppcls.utils.errors import WeightsError
from ppcls.weights import load_into


class Tiny(paddle.nn.Layer):
    """A model of no registry and with no hooks."""

    def __init__(self):
        super().__init__()
        self.body = paddle.nn.Linear(4, 3)


def test_a_model_without_hooks_loads_its_own_weights(tmp_path):
    saved = Tiny()
    paddle.save(saved.state_dict(), str(tmp_path / "tiny.pdparams"))
    model = Tiny()
    loaded = load_into(model, tmp_path / "tiny", for_eval=True)
    assert (loaded.source, loaded.kind) == ("ppcls", "model")
    assert loaded.path == str(tmp_path / "tiny.pdparams")
    np.testing.assert_array_equal(model.body.weight.numpy(), saved.body.weight.numpy())


def test_a_model_without_hooks_refuses_other_names(tmp_path):
    np.savez(tmp_path / "other.npz", **{"fc.weight": np.zeros((4, 3), np.float32)})
    with pytest.raises(WeightsError, match="body.weight"):
        load_into(Tiny(), tmp_path / "other.npz")
