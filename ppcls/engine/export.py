"""Export for deployment: the network with a softmax on top, saved by `paddle.jit.save`
with a dynamic batch dimension and the input shape of `Global.image_shape`."""

import os

import paddle

from ppcls.arch import build_model
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError
from ppcls.weights import load_weights
from ppcls.weights.model_files import MODEL_PREFIX, find_model_files


class InferenceModel(paddle.nn.Layer):
    """Class probabilities: deployment post-processing expects a softmax output."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return paddle.nn.functional.softmax(self.network(x), axis=-1)


def build_inference_network(config):
    """The configured network with `Global.pretrained_model` loaded (EMA weights when the
    config has an EMA section and the checkpoint saved them), in eval mode."""
    model = build_model(config)
    path = config["Global"].get("pretrained_model")
    if path:
        load_weights(model, path, prefer_ema=bool(config.get("EMA")),
                     configured_stem_relu=config["Arch"].get("stem_relu"))
    else:
        logger.warning("Global.pretrained_model is not set: using randomly initialised weights")
    model.eval()
    return model


def export_inference_model(config, save_dir):
    shape = config["Global"]["image_shape"]
    if len(shape) != 3:
        raise ConfigError(f"Global.image_shape must be [C, H, W], got {shape}")
    model = InferenceModel(build_inference_network(config))
    model.eval()
    spec = paddle.static.InputSpec([None] + list(shape), "float32", name="x")
    paddle.jit.save(model, os.path.join(save_dir, MODEL_PREFIX), input_spec=[spec])
    return find_model_files(save_dir)
