"""Export for Paddle Inference: the network with a softmax on top, saved by
`paddle.jit.save` with a dynamic batch dimension and the input shape of
`Global.image_shape`, and beside it `inference.yml` (inference_config.py) describing the
preprocessing and the labels the model needs, so a predictor does not depend on a
hand-kept deploy config.

Two programs share one parameter file: `inference.json` (PIR, Paddle 3's format, read by
paddle2onnx and by Paddle Inference's oneDNN and GPU paths) and `inference.pdmodel` (the
legacy program). Paddle Inference's OpenVINO engine, which the deployed predictor uses on
CPUs, reads only the legacy program in Paddle 3.3.1; it runs MnasNet-B1 at batch 1 on two
cores in about 4 ms where oneDNN needs about 7 ms (log/benchmark).
"""

import filecmp
import os
import tempfile

import paddle

from ppcls.arch import build_model
from ppcls.export.inference_config import inference_config, write_inference_config
from ppcls.export.model_files import MODEL_PREFIX, PARAMS_FILE, find_model_files
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError
from ppcls.weights import load_into


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
        load_into(model, path, for_eval=True, prefer_ema=bool(config.get("EMA")))
    else:
        logger.warning("Global.pretrained_model is not set: using randomly initialised weights")
    model.eval()
    return model


def export_inference_model(config, save_dir, onnx=True):
    """Writes the two programs, their parameters and inference.yml into `save_dir`, and
    `inference.onnx` beside them unless `onnx` is False (see write_onnx)."""
    shape = config["Global"]["image_shape"]  # [3, H, W], checked with the config
    network = build_inference_network(config)
    model = InferenceModel(network)
    model.eval()
    spec = paddle.static.InputSpec([None] + list(shape), "float32", name="x")
    paddle.jit.save(model, os.path.join(save_dir, MODEL_PREFIX), input_spec=[spec])
    save_legacy_program(model, spec, save_dir)
    write_inference_config(inference_config(config, network), save_dir)
    if onnx:
        write_onnx(save_dir)
    return find_model_files(save_dir)


def write_onnx(save_dir):
    """`inference.onnx` beside the Paddle files, so that the predictor's `Global.engine: auto`
    can time ONNX Runtime against Paddle Inference (it is the faster of the two for several
    MnasNet variants here). paddle2onnx converts MnasNet-B1 in about 0.1 s. A conversion that
    fails is one warning: the Paddle files stay usable."""
    try:
        from ppcls.export.onnx_model import export_onnx

        export_onnx(save_dir)
    except Exception as err:  # noqa: BLE001 - an optional extra format; say why, go on
        logger.warning(f"export: no inference.onnx ({type(err).__name__}: "
                       f"{str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}); "
                       "the predictor will not try ONNX Runtime")


def save_legacy_program(model, spec, save_dir):
    """Adds `inference.pdmodel` beside the PIR program, after checking that the legacy save
    wrote the same parameter file byte for byte. (Our layers record in it as they are; the
    squeeze-and-excitation gate through ppcls.ops.sigmoid.) If Paddle cannot record the
    legacy program, one warning says so and the export stays usable (the predictor then
    runs oneDNN)."""
    with tempfile.TemporaryDirectory(dir=save_dir) as tmp:
        prefix = os.path.join(tmp, MODEL_PREFIX)
        try:
            with paddle.pir_utils.OldIrGuard():
                paddle.jit.save(model, prefix, input_spec=[spec])
        except Exception as err:  # noqa: BLE001 - an optional second format; say why, go on
            logger.warning(f"export: no legacy program for the OpenVINO engine ({type(err).__name__}: "
                           f"{str(err).strip().splitlines()[-1][:200]}); the predictor will use oneDNN")
            return
        if not filecmp.cmp(prefix + ".pdiparams", os.path.join(save_dir, PARAMS_FILE), shallow=False):
            logger.warning("export: the legacy program's parameters differ from inference.pdiparams; "
                           "not writing inference.pdmodel (the predictor will use oneDNN)")
            return
        for suffix in (".pdmodel", ".pdiparams.info"):
            os.replace(prefix + suffix, os.path.join(save_dir, MODEL_PREFIX + suffix))
