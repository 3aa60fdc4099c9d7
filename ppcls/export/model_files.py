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


def program_input_shape(model_dir):
    """(C, H, W) of the image input an exported Paddle program declares, None for each
    dimension it leaves open; None when it cannot be read. The legacy program (protobuf)
    is read when present, else the PIR program's JSON: both come from one InputSpec."""
    legacy = os.path.join(model_dir, MODEL_FILES[1])
    try:
        if os.path.isfile(legacy):
            return _legacy_input_shape(legacy)
        return _pir_input_shape(os.path.join(model_dir, MODEL_FILES[0]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _image_dims(dims):
    """[N, C, H, W] with -1 for open dimensions -> (C, H, W) with None for them."""
    dims = [int(d) for d in dims]
    if len(dims) != 4:
        return None
    return tuple(d if d > 0 else None for d in dims[1:])


def _legacy_input_shape(path):
    from google.protobuf.message import DecodeError
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    with open(path, "rb") as f:
        try:
            program.ParseFromString(f.read())
        except DecodeError:
            return None
    block = program.blocks[0]
    fed = [op.outputs[0].arguments[0] for op in block.ops if op.type == "feed"]
    variables = {v.name: v for v in block.vars}
    if len(fed) != 1 or fed[0] not in variables:
        return None
    return _image_dims(variables[fed[0]].type.dense_tensor.tensor.dims)


def _pir_input_shape(path):
    """The shape attribute of the one `data` operation of a PIR program saved as JSON."""
    import json

    with open(path, encoding="utf-8") as f:
        program = json.load(f)["program"]
    ops = program["regions"][0]["blocks"][0]["ops"]
    inputs = [op for op in ops if str(op.get("#", "")).endswith(".data")]
    if len(inputs) != 1:
        return None
    attributes = {a["N"]: a["AT"].get("D") for a in inputs[0]["A"]}
    return _image_dims(attributes["shape"])
