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
import numpy as np  # noqa: E402

from ppcls.inference import (DEPLOY_DEFAULTS, RUNNERS, list_images, print_results,  # noqa: E402,F401
                             read_deploy_config, save_results)  # (DEPLOY_DEFAULTS, RUNNERS: read here by tests)
from ppcls.predictor import Predictor  # noqa: E402
from ppcls.utils import logger  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import parse_args  # noqa: E402


def load_config(path, overrides, required=("infer_imgs", "inference_model_dir")):
    """The deploy config, typed and completed from the model's inference.yml (ppcls.inference)."""
    return read_deploy_config(path, overrides, required)


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
                       g["batch_size"])
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
