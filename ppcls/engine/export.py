"""Export for deployment: the network with a softmax on top, saved by `paddle.jit.save`
with a dynamic batch dimension and the input shape of `Global.image_shape`."""

import os

import paddle

from ppcls.arch import build_model
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError
from ppcls.weights.loading import load_weights

MODEL_FILES = ("inference.json", "inference.pdmodel")  # PIR (Paddle 3) or legacy program
PARAMS_FILE = "inference.pdiparams"


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
        load_weights(model, path, prefer_ema=bool(config.get("EMA")))
    else:
        logger.warning("Global.pretrained_model is not set: using randomly initialised weights")
    model.eval()
    return model


def find_model_files(model_dir):
    """(model file, params file) of an exported model; a clear error when incomplete."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"inference model directory not found: {model_dir}")
    model_file = next((os.path.join(model_dir, f) for f in MODEL_FILES
                       if os.path.isfile(os.path.join(model_dir, f))), None)
    params_file = os.path.join(model_dir, PARAMS_FILE)
    missing = ([" or ".join(MODEL_FILES)] if model_file is None else []) + (
        [PARAMS_FILE] if not os.path.isfile(params_file) else [])
    if missing:
        raise ConfigError(f"{model_dir} is not a complete exported model: missing "
                          f"{', '.join(missing)} (create it with tools/export_model.py)")
    return model_file, params_file


def export_inference_model(config, save_dir):
    shape = config["Global"]["image_shape"]
    if len(shape) != 3:
        raise ConfigError(f"Global.image_shape must be [C, H, W], got {shape}")
    model = InferenceModel(build_inference_network(config))
    model.eval()
    spec = paddle.static.InputSpec([None] + list(shape), "float32", name="x")
    paddle.jit.save(model, os.path.join(save_dir, "inference"), input_spec=[spec])
    return find_model_files(save_dir)
