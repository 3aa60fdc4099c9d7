"""Prediction over image files, shared by `tools/infer.py` (dygraph) and the deployed
predictor (`deploy/python/predict_cls.py`): they differ only in `run_batch`.

Each file is read and preprocessed alone, so a missing, unreadable or non-image file gives
its own result {'file_name': ..., 'error': ...} while the others are still predicted.
Results come back in file order.
"""

import json
import os
import random

import numpy as np

from ppcls.data.preprocess import DecodeImage, apply_transforms, build_transforms
from ppcls.utils.errors import ConfigError
from ppcls.weights import find_model_files, find_onnx_file

# PaddleClas's inference keys (accepted even where they have no effect here) and ours.
DEPLOY_DEFAULTS = {
    "infer_imgs": None, "inference_model_dir": None, "batch_size": 1, "backend": "paddle",
    "use_gpu": False, "enable_mkldnn": True, "cpu_num_threads": 2, "benchmark": False,
    "enable_benchmark": False, "use_fp16": False, "use_int8": False, "ir_optim": True,
    "use_tensorrt": False, "gpu_mem": 8000, "enable_profile": False, "min_subgraph_size": 15,
    "save_path": None, "save_log_path": None, "use_onnx": False,
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def list_images(path):
    """One file, or the image files of a folder (recursively) in sorted order."""
    if os.path.isdir(path):
        found = []
        for root, _, files in os.walk(path):
            found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        return sorted(found)
    if isinstance(path, (list, tuple)):
        return list(path)
    return [path]  # a single (maybe missing) file gets its own error result


class Preprocessor:
    """Inference transforms. Decoding comes first: the deploy config's transform_ops start
    after it (PaddleClas's deploy decodes itself), so DecodeImage is added when absent."""

    def __init__(self, transform_ops, where):
        ops = build_transforms(transform_ops, where)
        if not ops or not isinstance(ops[0], DecodeImage):
            ops.insert(0, DecodeImage(to_rgb=True))
        self.ops = ops
        self._rng = random.Random(0)  # inference ops are deterministic; kept for the signature

    def __call__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        return apply_transforms(self.ops, data, self._rng)


def _describe(err):
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    return str(err) or type(err).__name__


def predict_files(files, preprocess, run_batch, postprocess, batch_size=1):
    """Returns one result per file, in order; `run_batch(array [N, C, H, W]) -> probs`."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    results, pending = [], []  # pending: (position, file, image)

    def flush():
        if pending:
            probs = run_batch(np.stack([image for _, _, image in pending]).astype(np.float32))
            for (position, _, _), result in zip(pending, postprocess(probs, [f for _, f, _ in pending])):
                results[position] = result
            pending.clear()

    for file in files:
        results.append(None)
        try:
            image = preprocess(file)
        except (OSError, ValueError) as err:
            results[-1] = {"file_name": file, "error": _describe(err)}
            continue
        pending.append((len(results) - 1, file, image))
        if len(pending) == batch_size:
            flush()
    flush()
    return results


def print_results(results):
    for result in results:
        print(result)


def save_results(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)


# ----------------------------------------------------------------------------- backends
# Each takes the deploy config's Global section and returns run_batch(images) -> probs.

def paddle_runner(g):
    """A function running one batch through Paddle Inference."""
    from paddle import inference
    import paddle

    model_file, params_file = find_model_files(g["inference_model_dir"])
    config = inference.Config(model_file, params_file)
    if g["use_gpu"]:
        if not paddle.is_compiled_with_cuda():
            raise ConfigError("Global.use_gpu is True but this Paddle has no CUDA; set "
                              "-o Global.use_gpu=False or install paddlepaddle-gpu")
        config.enable_use_gpu(int(g["gpu_mem"]), 0)
        if g["use_tensorrt"]:
            precision = inference.PrecisionType.Half if g["use_fp16"] else inference.PrecisionType.Float32
            config.enable_tensorrt_engine(precision_mode=precision, max_batch_size=int(g["batch_size"]),
                                          min_subgraph_size=int(g["min_subgraph_size"]))
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(g["cpu_num_threads"]))
        if g["enable_mkldnn"]:
            config.enable_mkldnn()
            if g["use_fp16"]:
                config.enable_mkldnn_bfloat16()
    config.switch_ir_optim(bool(g["ir_optim"]))
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    input_handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output_handle = predictor.get_output_handle(predictor.get_output_names()[0])

    def run_batch(images):
        input_handle.reshape(images.shape)
        input_handle.copy_from_cpu(images)
        predictor.run()
        return output_handle.copy_to_cpu()

    return run_batch


def onnxruntime_runner(g):
    import onnxruntime

    path = find_onnx_file(g["inference_model_dir"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(g["cpu_num_threads"])
    options.log_severity_level = 3  # paddle2onnx leaves unused initializers; not worth a warning
    providers = (["CUDAExecutionProvider"] if g["use_gpu"] else []) + ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    input_name = session.get_inputs()[0].name

    def run_batch(images):
        return session.run(None, {input_name: images})[0]

    return run_batch


RUNNERS = {"paddle": paddle_runner, "onnxruntime": onnxruntime_runner}


def backend_of(g):
    """The backend a deploy config's Global section asks for: PaddleClas's `use_onnx: True`
    (load <inference_model_dir>/inference.onnx) is our `backend: onnxruntime`."""
    backend = "onnxruntime" if g.get("use_onnx") else g["backend"]
    if backend not in RUNNERS:
        raise ConfigError(f"Global.backend must be one of {', '.join(RUNNERS)}, got {backend!r}")
    return backend
