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
