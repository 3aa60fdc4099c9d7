"""Classify images with an exported model through Paddle Inference (or ONNX Runtime).

    python deploy/python/predict_cls.py -c deploy/configs/inference_cls.yaml \
        -o Global.inference_model_dir=./inference -o Global.infer_imgs=demo/
    ... -o Global.use_onnx=True              (inference.onnx, after tools/export_onnx.py;
                                              Global.backend=onnxruntime is the same)
    ... -o Global.benchmark=True             (per-image preprocess/inference/postprocess ms)
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from ppcls.utils.threads import set_default_threads, usable_cores  # noqa: E402

set_default_threads()  # before Paddle is imported

import numpy as np  # noqa: E402

from ppcls.inference import (DEPLOY_DEFAULTS, RUNNERS, apply_inference_config, list_images,  # noqa: E402
                             print_results, save_results)
from ppcls.predictor import Predictor  # noqa: E402
from ppcls.utils import logger  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import (INT32_MAX, apply_override, check_numbers, load_yaml,  # noqa: E402
                                parse_args, parse_override)
from ppcls.utils.errors import ConfigError, shown, unknown  # noqa: E402

SECTIONS = ("Global", "PreProcess", "PostProcess")


def load_config(path, overrides, required=("infer_imgs", "inference_model_dir")):
    config = load_yaml(path)
    for text in overrides:
        apply_override(config, *parse_override(text))
    for section in config:
        if section not in SECTIONS:
            raise ConfigError(f"{path}: {unknown('section', section, SECTIONS)}")
    for key in config.get("PreProcess") or {}:
        if key != "transform_ops":
            raise ConfigError(f"{path}: PreProcess: {unknown('key', key, ['transform_ops'])}")
    check_numbers(config, path)
    for key, value in (config.get("Global") or {}).items():
        if key not in DEPLOY_DEFAULTS:
            raise ConfigError(f"{path}: Global: {unknown('key', key, list(DEPLOY_DEFAULTS))}")
        check_deploy_value(key, value, path)
    config["Global"] = g = {**DEPLOY_DEFAULTS, **(config.get("Global") or {})}
    for key in required:
        if not g[key]:
            raise ConfigError(f"Global.{key} is not set")
    if not g["use_gpu"] and int(g["cpu_num_threads"]) > usable_cores():
        logger.warning(f"Global.cpu_num_threads is {g['cpu_num_threads']} but this process may use "
                       f"{usable_cores()} cores: more threads than cores slow inference down")
    if g["save_log_path"] and not (g["benchmark"] or g["enable_benchmark"]):
        raise ConfigError("Global.save_log_path receives the benchmark figures: set "
                          "-o Global.benchmark=True too, or remove save_log_path")
    return apply_inference_config(config, path)


# Largest deploy Global integers: a batch's images are all held at once.
DEPLOY_MAXIMUMS = {"batch_size": 4096, "cpu_num_threads": 1024}


def check_deploy_value(key, value, path):
    """A Global value of the type of its default (a path, a list of paths or null where
    that is null), and integers positive and bounded."""
    default = DEPLOY_DEFAULTS[key]
    if default is None:
        valid = value is None or isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
    elif isinstance(default, (bool, str)):
        valid = isinstance(value, type(default))
    else:
        valid = (isinstance(value, int) and not isinstance(value, bool)
                 and 1 <= value <= DEPLOY_MAXIMUMS.get(key, INT32_MAX))
    if not valid:
        kind = ("a path or null" if default is None else "true or false" if isinstance(default, bool)
                else "a string" if isinstance(default, str)
                else f"an integer from 1 to {DEPLOY_MAXIMUMS.get(key, INT32_MAX)}")
        raise ConfigError(f"{path}: Global.{key} must be {kind}, got {shown(value)}")


def benchmark(files, preprocess, run_batch, postprocess, batch_size, warmup=5, repeats=20):
    """Median milliseconds per image of each stage, over repeated runs of one batch (of
    the first image, so that a model taking any size gets a batch of one size)."""
    batch_files = files[:1] * batch_size
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
    predictor = Predictor(config=config)
    files = list_images(g["infer_imgs"])
    results = predictor.predict(files)
    print_results(results)
    if g["save_path"]:
        save_results(results, g["save_path"])
    readable = [f for f, r in zip(files, results) if "error" not in r]
    if (g["benchmark"] or g["enable_benchmark"]) and not readable:
        logger.warning("benchmark: no image could be predicted, so nothing was timed")
    elif g["benchmark"] or g["enable_benchmark"]:
        ms = benchmark(readable, predictor.preprocessor, predictor.runner, predictor.postprocessor,
                       int(g["batch_size"]))
        where = "GPU" if g["use_gpu"] else f"{g['cpu_num_threads']} threads"
        line = (f"benchmark ({predictor.backend}, {predictor.precision}, batch {g['batch_size']}, "
                f"{where}): preprocess {ms['preprocess']:.3f} ms, "
                f"inference {ms['inference']:.3f} ms, postprocess {ms['postprocess']:.3f} ms per image "
                f"(median of 20 runs after 5 warm-up runs; engine {predictor.engine})")
        print(line)
        if g["save_log_path"]:
            os.makedirs(os.path.dirname(os.path.abspath(g["save_log_path"])), exist_ok=True)
            with open(g["save_log_path"], "a") as f:
                f.write(f"{os.path.abspath(g['inference_model_dir'])}: {line}\n")


if __name__ == "__main__":
    sys.exit(run(main, parse_args(description="Paddle Inference / ONNX Runtime prediction")))
