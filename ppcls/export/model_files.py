"""The files `tools/export_model.py` and `tools/export_onnx.py` write, found again for
prediction. Standard library only: the deployed predictor imports it without the model
zoo or the training code."""

import os

from ppcls.utils.errors import ConfigError

MODEL_PREFIX = "inference"  # paddle.jit.save(model, <dir>/inference) writes the files below
MODEL_FILES = ("inference.json", "inference.pdmodel")  # PIR (Paddle 3) or legacy program
LEGACY_PROGRAM = "inference.pdmodel"  # what Paddle Inference's OpenVINO engine reads
PARAMS_FILE = "inference.pdiparams"
INFERENCE_CONFIG = "inference.yml"  # preprocessing and labels, PaddleClas's export_for_fd format
ONNX_FILE = "inference.onnx"  # PaddleClas's name, loaded by Global.use_onnx
LEGACY_ONNX_FILES = ("model.onnx",)  # written by tools/export_onnx.py before it used ONNX_FILE


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


def find_onnx_file(model_dir):
    """The ONNX model `tools/export_onnx.py` wrote into `model_dir`."""
    for name in (ONNX_FILE,) + LEGACY_ONNX_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"{os.path.join(model_dir, ONNX_FILE)} not found: create it with "
                      f"tools/export_onnx.py --model_dir {model_dir}")
