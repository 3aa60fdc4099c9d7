"""Classify images with an exported model through Paddle Inference (or ONNX Runtime).

    python deploy/python/predict_cls.py -c deploy/configs/inference_cls.yaml \
        -o Global.inference_model_dir=./inference -o Global.infer_imgs=demo/
    ... -o Global.backend=onnxruntime        (after tools/export_onnx.py)
    ... -o Global.benchmark=True             (per-image preprocess/inference/postprocess ms)
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402

from ppcls.data.postprocess import build_postprocess  # noqa: E402
from ppcls.engine.export import find_model_files  # noqa: E402
from ppcls.inference import (Preprocessor, list_images, predict_files, print_results,  # noqa: E402
                             save_results)
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import load_yaml, apply_override, parse_override, parse_args  # noqa: E402
from ppcls.utils.errors import ConfigError  # noqa: E402

ONNX_FILE = "model.onnx"
# PaddleClas's inference keys (accepted even where they have no effect here) and ours.
GLOBAL_DEFAULTS = {
    "infer_imgs": None, "inference_model_dir": None, "batch_size": 1, "backend": "paddle",
    "use_gpu": False, "enable_mkldnn": True, "cpu_num_threads": 2, "benchmark": False,
    "enable_benchmark": False, "use_fp16": False, "use_int8": False, "ir_optim": True,
    "use_tensorrt": False, "gpu_mem": 8000, "enable_profile": False, "min_subgraph_size": 15,
    "save_path": None, "save_log_path": None,
}
SECTIONS = ("Global", "PreProcess", "PostProcess")


def load_config(path, overrides):
    config = load_yaml(path)
    for text in overrides:
        apply_override(config, *parse_override(text))
    for section in config:
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
    for key in config.get("Global") or {}:
        if key not in GLOBAL_DEFAULTS:
            raise ConfigError(f"{path}: unknown key Global.{key}; allowed: "
                              + ", ".join(GLOBAL_DEFAULTS))
    config["Global"] = {**GLOBAL_DEFAULTS, **(config.get("Global") or {})}
    for key in ("infer_imgs", "inference_model_dir"):
        if not config["Global"][key]:
            raise ConfigError(f"Global.{key} is not set")
    return config


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

    path = os.path.join(g["inference_model_dir"], ONNX_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: create it with tools/export_onnx.py "
                          f"--model_dir {g['inference_model_dir']}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(g["cpu_num_threads"])
    providers = (["CUDAExecutionProvider"] if g["use_gpu"] else []) + ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    input_name = session.get_inputs()[0].name

    def run_batch(images):
        return session.run(None, {input_name: images})[0]

    return run_batch


RUNNERS = {"paddle": paddle_runner, "onnxruntime": onnxruntime_runner}


def benchmark(files, preprocess, run_batch, postprocess, batch_size, warmup=5, repeats=20):
    """Median milliseconds per image of each stage, over repeated runs of one batch."""
    batch_files = (files * batch_size)[:batch_size]
    timings = {"preprocess": [], "inference": [], "postprocess": []}
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        images = np.stack([preprocess(f) for f in batch_files]).astype(np.float32)
        t1 = time.perf_counter()
        probs = run_batch(images)
        t2 = time.perf_counter()
        postprocess(probs, batch_files)
        t3 = time.perf_counter()
        if i >= warmup:
            for key, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2)):
                timings[key].append(seconds * 1000 / batch_size)
    return {key: statistics.median(values) for key, values in timings.items()}


def main(args):
    config = load_config(args.config, args.override)
    g = config["Global"]
    if g["backend"] not in RUNNERS:
        raise ConfigError(f"Global.backend must be one of {', '.join(RUNNERS)}, got {g['backend']!r}")
    run_batch = RUNNERS[g["backend"]](g)
    preprocess = Preprocessor((config.get("PreProcess") or {}).get("transform_ops"),
                              "PreProcess.transform_ops")
    postprocess = build_postprocess(config.get("PostProcess"), "PostProcess")
    files = list_images(g["infer_imgs"])
    results = predict_files(files, preprocess, run_batch, postprocess, int(g["batch_size"]))
    print_results(results)
    if g["save_path"]:
        save_results(results, g["save_path"])
    if g["benchmark"] or g["enable_benchmark"]:
        readable = [f for f, r in zip(files, results) if "error" not in r]
        ms = benchmark(readable, preprocess, run_batch, postprocess, int(g["batch_size"]))
        print(f"benchmark ({g['backend']}, batch {g['batch_size']}, "
              f"{g['cpu_num_threads']} threads): preprocess {ms['preprocess']:.3f} ms, "
              f"inference {ms['inference']:.3f} ms, postprocess {ms['postprocess']:.3f} ms per image "
              "(median of 20 runs after 5 warm-up runs)")


if __name__ == "__main__":
    sys.exit(run(main, parse_args(description="Paddle Inference / ONNX Runtime prediction")))
