"""Prediction over image files, shared by `tools/infer.py` (dygraph) and the deployed
predictor (`deploy/python/predict_cls.py`): they differ only in `run_batch`, a ModelRunner.

Each file is read and preprocessed alone, so a missing, unreadable or non-image file gives
its own result {'file_name': ..., 'error': ...} while the others are still predicted.
Results come back in file order, and each is the image's own:
- an image whose preprocessed size is not the model's input size (the exported program's,
  or Global.image_shape in dygraph) is resized to it, whole (one log line counts them);
  a model that leaves H and W open takes each image at its own size;
- a batch is only ever formed of images of one size;
- the runner checks what goes in and what comes out (N rows of probabilities for N
  images), and an engine failure on a batch is retried image by image: an image it still
  fails on gets an error result naming the engine's error.
"""

import json
import os
import random
from typing import NamedTuple

import cv2
import numpy as np

from ppcls.data.postprocess import build_postprocess
from ppcls.data.preprocess import DecodeImage, apply_transforms, build_transforms
from ppcls.data.preprocess.ops.operators import over_cap
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown
from ppcls.utils.schema import (DEPLOY, DEPLOY_GLOBAL, INFERENCE_YML, check_numbers, defaults,
                                read_sections)
from ppcls.utils.threads import usable_cores
from ppcls.utils.yaml_file import load_with_overrides, load_yaml
from ppcls.export.model_files import (INFERENCE_CONFIG, LEGACY_PROGRAM, find_model_files,
                                      find_onnx_file, program_input_shape)

# A deploy config's Global keys and their defaults (their table: ppcls/utils/schema.py).
DEPLOY_DEFAULTS = defaults(DEPLOY_GLOBAL)


def read_deploy_config(path, overrides=(), required=("infer_imgs", "inference_model_dir")):
    """A deploy config (deploy/python/predict_cls.py -c) with its overrides, read as a
    training config is: its sections and Global's keys known, every Global value typed and
    bounded once, here, with the defaults of the keys it omits; then completed from the
    model's inference.yml (`apply_inference_config`). One line naming the file and key.
    `required`: the Global keys the caller needs set (the service takes no infer_imgs)."""
    config = load_with_overrides(path, overrides)
    try:
        read_sections(config, DEPLOY)
        check_numbers(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    config.setdefault("Global", defaults(DEPLOY_GLOBAL))
    g = config["Global"]
    for key in required:
        if not g[key]:
            raise ConfigError(f"Global.{key} is not set")
    if not g["use_gpu"] and g["cpu_num_threads"] > usable_cores():
        logger.warning(f"Global.cpu_num_threads is {g['cpu_num_threads']} but this process may use "
                       f"{usable_cores()} cores: more threads than cores slow inference down")
    if g["save_log_path"] and not (g["benchmark"] or g["enable_benchmark"]):
        raise ConfigError("Global.save_log_path receives the benchmark figures: set "
                          "-o Global.benchmark=True too, or remove save_log_path")
    return apply_inference_config(config, path)


def read_inference_config(path):
    """The `inference.yml` export wrote beside a model, checked as a config is: one line
    naming the file for broken YAML, an unknown section or key (with a did-you-mean), or
    a value its transform ops or post-processes refuse."""
    exported = load_yaml(path)
    try:
        read_sections(exported, INFERENCE_YML)
        check_numbers(exported)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if "Hpi" in exported:
        logger.info(f"{path}: Hpi (PaddleX's high-performance inference settings) has no effect here")
    build_transforms((exported.get("PreProcess") or {}).get("transform_ops"),
                     f"{path}: PreProcess.transform_ops")
    if exported.get("PostProcess"):
        build_postprocess(exported["PostProcess"], f"{path}: PostProcess")
    return exported


def apply_inference_config(config, where):
    """Completes a deploy config from the `inference.yml` that export wrote beside the model:
    its PreProcess.transform_ops unless the deploy config gives its own, and its PostProcess
    entries under the deploy config's (an explicit value wins; an explicit class_id_map_file
    replaces the exported label_list)."""
    path = os.path.join(config["Global"]["inference_model_dir"], INFERENCE_CONFIG)
    exported = read_inference_config(path) if os.path.isfile(path) else {}
    own_ops = (config.get("PreProcess") or {}).get("transform_ops")
    if own_ops:
        build_transforms(own_ops, f"{where}: PreProcess.transform_ops")  # name the file
    else:
        ops = (exported.get("PreProcess") or {}).get("transform_ops")
        if not ops:
            missing = "has none" if os.path.isfile(path) else "does not exist"
            raise ConfigError(f"{where}: no PreProcess.transform_ops, and {path} {missing} "
                              "to supply them: re-export the model with tools/export_model.py "
                              "or add PreProcess.transform_ops to the deploy config")
        config["PreProcess"] = {**(config.get("PreProcess") or {}), "transform_ops": ops}
    post = {name: dict(args or {}) for name, args in (exported.get("PostProcess") or {}).items()}
    for name, args in (config.get("PostProcess") or {}).items():
        if name == "main_indicator" or not isinstance(args, dict):
            post[name] = args
            continue
        merged = {**post.get(name, {}), **args}
        if "class_id_map_file" in args:
            merged.pop("label_list", None)
        post[name] = merged
    config["PostProcess"] = post or None
    return config


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
    """From an image to what the model takes. An image is a file path, its encoded bytes,
    or a decoded HWC uint8 RGB array. Decoding comes first: the deploy config's
    transform_ops start after it (PaddleClas's deploy decodes itself), so DecodeImage is
    added when absent; an array skips the decoding but not its pixel cap. `input_shape`:
    the model's (C, H, W), None for a dimension it leaves open (None: not known); an image
    the transforms leave at another H x W is resized to it, whole, and listed in `resized`."""

    def __init__(self, transform_ops, where, input_shape=None):
        ops = build_transforms(transform_ops, where)
        if not ops or not isinstance(ops[0], DecodeImage):
            ops.insert(0, DecodeImage(to_rgb=True))
        self.ops = ops
        self.input_shape = tuple(input_shape) if input_shape else (None, None, None)
        self.resized = []  # (file, (height, width) before resizing)
        self._rng = random.Random(0)  # inference ops are deterministic; kept for the signature

    def __call__(self, source, name=None):
        image, before = self.prepare(source)
        if before is not None:
            self.resized.append((source if name is None else name, before))
        return image

    def prepare(self, source):
        """(the model's input for `source`, its (height, width) before `fit` resized it or
        None). It changes no state, so threads may share one Preprocessor. A ValueError
        or OSError says why the image cannot be used."""
        return self._fit(apply_transforms(self.ops[1:], self.decode(source), self._rng))

    def decode(self, source):
        decode = self.ops[0]
        if isinstance(source, np.ndarray):
            image = checked_array(source, decode.max_pixels)
            image = image if decode.to_rgb else image[:, :, ::-1]
            return image.transpose(2, 0, 1) if decode.channel_first else image
        if isinstance(source, (bytes, bytearray, memoryview)):
            return decode(bytes(source), self._rng)
        with open(source, "rb") as f:
            return decode(f.read(), self._rng)

    def fit(self, image, path):
        image, before = self._fit(image)
        if before is not None:
            self.resized.append((path, before))
        return image

    def _fit(self, image):
        channels, height, width = self.input_shape
        if image.ndim != 3 or (channels is not None and image.shape[0] != channels):
            expected = f"[{channels or 'C'}, H, W]"
            raise ValueError(f"preprocessed to shape {list(image.shape)} but the model takes "
                             f"{expected}: end the transform ops with ToCHWImage")
        target = (height or image.shape[1], width or image.shape[2])
        if target == image.shape[1:]:
            return image, None
        return resize_chw(image, target), image.shape[1:]

    def log_resized(self, total):
        """One line for the images `fit` resized since `resized` was last cleared."""
        if self.resized:
            (path, (height, width)), (_, target_h, target_w) = self.resized[0], self.input_shape
            logger.warning(f"resized {len(self.resized)} of {total} images to the model's "
                           f"{target_h}x{target_w} input, whole (first: {path}, {height}x{width} after "
                           "the transform ops); add ResizeImage and CropImage to them to choose how")


IMAGE_SOURCES = "a file path, encoded image bytes or a decoded HWC uint8 RGB array"


def is_image_source(value):
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray))


def checked_array(image, max_pixels):
    """A decoded image as the transform ops take it, or a ValueError saying what is wrong."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a decoded image must be an HWC uint8 RGB array, got shape "
                         f"{list(image.shape)} of {image.dtype}")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise over_cap(width, height, max_pixels)
    if height == 0 or width == 0:
        raise ValueError(f"an empty image ({height}x{width})")
    return image


def resize_chw(image, size):
    """A CHW image resized to (height, width): area filter when shrinking, bilinear when
    enlarging. Both weigh pixels by fractions summing to 1, so resizing a normalised image
    equals normalising the resized one."""
    height, width = size
    shrinking = height <= image.shape[1] and width <= image.shape[2]
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
    out = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out.reshape(height, width, -1).transpose(2, 0, 1)


def describe_error(err):
    """A reading or decoding error as a result's 'error' says it."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    return str(err) or type(err).__name__


def predict_files(files, preprocess, run_batch, postprocess, batch_size=1, names=None):
    """Returns one result per file, in order; `run_batch(array [N, C, H, W]) -> probs`.
    `files` may also be encoded bytes or decoded arrays (see Preprocessor); `names` (one per
    item, None for none) are the results' file_name, by default the files themselves. A
    batch holds images of one size; see the module's docstring."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    names = list(files) if names is None else list(names)
    results, pending = [None] * len(files), []  # pending: (position, name, image)
    preprocess.resized.clear()

    def flush():
        for position, result in _predict_batch(pending, run_batch, postprocess):
            results[position] = result
        pending.clear()

    for position, (file, name) in enumerate(zip(files, names)):
        try:
            image = preprocess(file, name)
        except (OSError, ValueError) as err:
            results[position] = {"file_name": name, "error": describe_error(err)}
            continue
        if pending and pending[0][2].shape != image.shape:
            flush()  # a model that takes any size: a batch per size
        pending.append((position, name, image))
        if len(pending) == batch_size:
            flush()
    flush()
    preprocess.log_resized(len(files))
    for result in results:
        if result.get("file_name", "") is None:
            del result["file_name"]  # bytes and arrays have no file
    return results


def _predict_batch(batch, run_batch, postprocess):
    """(position, result) for each image of `batch` (see run_each)."""
    if not batch:
        return []
    answers = run_each([image for _, _, image in batch], run_batch)
    done, results = [], []
    for (position, name, _), answer in zip(batch, answers):
        if isinstance(answer, EngineFailure):
            logger.warning(f"{name if name is not None else 'an image'}: {answer}")
            results.append((position, {"file_name": name, "error": str(answer)}))
        else:
            done.append((position, name, answer))
    if done:
        rows = np.stack([row for _, _, row in done])
        results += zip((position for position, _, _ in done), postprocess(rows, [n for _, n, _ in done]))
    return sorted(results, key=lambda item: item[0])


class EngineFailure:
    """What an engine said when it failed on an image run alone."""

    def __init__(self, reason):
        self.reason = reason

    def __str__(self):
        return f"prediction failed: {self.reason}"


def run_each(images, run_batch):
    """Each image's probabilities (images: CHW arrays of one shape), or an EngineFailure. If
    the engine fails on the batch, each image is run alone, so that an image it cannot take
    costs only its own answer."""
    try:
        return list(run_batch(np.stack(images).astype(np.float32, copy=False)))
    except Exception as err:  # noqa: BLE001 - engines raise their own types; any is this batch's
        if len(images) > 1:
            return [answer for image in images for answer in run_each([image], run_batch)]
        text = str(err).strip()
        return [EngineFailure(text.splitlines()[0] if text else type(err).__name__)]


def print_results(results):
    for result in results:
        print(result)


def save_results(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)


# ----------------------------------------------------------------------------- backends
# Each takes the deploy config's Global section and returns a ModelRunner.

class EngineError(RuntimeError):
    """An engine was given a batch its model does not take, or answered with the wrong shape."""


class ModelRunner:
    """run_batch(images [N, C, H, W] float32) -> probabilities [N, class_num], checked on
    both sides: the batch must have the model's `input_shape` ((C, H, W), None for a
    dimension the model leaves open), and the answer one finite row per image, as many
    columns as the first answer. (Given another size, OpenVINO logs its error and hands
    back the previous batch's output.)"""

    def __init__(self, run, input_shape, engine):
        self.run, self.engine = run, engine
        self.input_shape = tuple(input_shape) if input_shape else (None, None, None)
        self.class_num = None

    def __call__(self, images):
        expected = self.input_shape
        if images.ndim != 4 or any(e is not None and e != got for e, got in zip(expected, images.shape[1:])):
            dims = ", ".join(str(d) for d in ("N", *(e or "?" for e in expected)))
            raise EngineError(f"{self.engine} takes [{dims}] images, got {list(images.shape)}")
        probs = np.asarray(self.run(images))
        wrong = (probs.ndim != 2 or probs.shape[0] != len(images)
                 or (self.class_num is not None and probs.shape[1] != self.class_num))
        if wrong:
            raise EngineError(f"{self.engine} answered a batch of {len(images)} with an array of "
                              f"shape {list(probs.shape)}")
        if not np.all(np.isfinite(probs)):
            raise EngineError(f"{self.engine} answered with probabilities that are not finite")
        self.class_num = probs.shape[1]
        return probs


def paddle_runner(g, engine=None):
    """A ModelRunner of Paddle Inference on `engine` ('openvino', 'onednn' or 'native' on a
    CPU), or on the engine the keys choose (cpu_engine, gpu_plan) when None."""
    from paddle import inference

    model_dir = g["inference_model_dir"]
    chosen = engine is not None or g["use_bf16"]  # asked for: no other engine in its place
    if g["use_gpu"]:
        check_gpu_build(g["use_tensorrt"])
        engine = gpu_plan(g, model_dir).engine
    else:
        check_cpu_keys(g)
        engine = engine or cpu_engine(g, model_dir)
    try:
        predictor = inference.create_predictor(_paddle_config(g, model_dir, engine))
    except RuntimeError as error:
        if engine == "tensorrt":  # asked for by name: say why it cannot run rather than run without it
            raise ConfigError(f"Global.use_tensorrt: Paddle Inference could not build a TensorRT "
                              f"engine for {model_dir} ({str(error).splitlines()[0].strip()}); "
                              "run without -o Global.use_tensorrt=True") from None
        if engine == "openvino" and chosen:
            raise ConfigError(f"OpenVINO could not convert {model_dir} "
                              f"({str(error).splitlines()[0].strip()}): run another engine "
                              "(-o Global.engine=auto, without use_bf16)") from None
        if engine != "openvino":
            raise
        # a program of someone else's with an operator OpenVINO cannot convert
        engine = cpu_fallback_engine(g)
        logger.info(f"Paddle Inference: OpenVINO could not convert {model_dir} "
                    f"({str(error).splitlines()[0].strip()}); running {engine}")
        predictor = inference.create_predictor(_paddle_config(g, model_dir, engine))
    input_handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output_handle = predictor.get_output_handle(predictor.get_output_names()[0])

    def run_batch(images):
        input_handle.reshape(images.shape)
        input_handle.copy_from_cpu(images)
        predictor.run()
        return output_handle.copy_to_cpu()

    engine_name = f"Paddle Inference ({engine or 'gpu'})"
    return ModelRunner(run_batch, program_input_shape(model_dir), engine_name)


def _paddle_config(g, model_dir, engine):
    """Paddle Inference's Config for a deploy config's Global section on one engine."""
    from paddle import inference

    model_file, params_file = find_model_files(model_dir)
    if engine in ("openvino", "tensorrt"):
        model_file = os.path.join(model_dir, LEGACY_PROGRAM)
    config = inference.Config(model_file, params_file)
    if g["use_gpu"]:
        _configure_gpu(config, g, gpu_plan(g, model_dir))
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(g["cpu_num_threads"]))
        if engine == "openvino":
            config.enable_new_ir(False)  # the engine's subgraph pass runs on legacy programs only
            config.enable_openvino_engine(inference.PrecisionType.Bfloat16 if g["use_bf16"]
                                          else inference.PrecisionType.Float32)
            # OpenVINO keeps compiled models (a few MB each) to start faster next time; by
            # default it would write them to ./__cache__ wherever the predictor runs.
            config.set_optim_cache_dir(openvino_cache_dir())
        elif engine == "onednn":
            config.enable_mkldnn()
            if g["use_fp16"]:
                config.enable_mkldnn_bfloat16()
            if g["use_int8"]:  # the quantized ops' scales turn into oneDNN INT8 kernels
                config.enable_mkldnn_int8()
        else:
            config.disable_mkldnn()  # Paddle 3.3.1's Config starts with oneDNN on
            if g["use_int8"]:
                raise ConfigError("Global.use_int8 on CPU runs through oneDNN: set "
                                  "-o Global.enable_mkldnn=True")
    check_int8(model_file, g["use_int8"])
    if g["enable_profile"]:
        config.enable_profile()  # Paddle prints its operator profile when the predictor ends
    config.switch_ir_optim(bool(g["ir_optim"]))
    config.disable_glog_info()
    return config


def cpu_engine(g, model_dir):
    """'openvino', 'onednn' or 'native' (Paddle's own kernels). OpenVINO, bundled in
    Paddle's CPU wheels, is the fastest here (MnasNet-B1 batch 1 on 2 cores: about 4 ms,
    oneDNN about 7 ms; log/benchmark); it needs the legacy program that
    tools/export_model.py writes beside inference.json, IR optimisation, and float32 or
    use_bf16. When it cannot run, one line says why and oneDNN (enable_mkldnn) runs
    instead; with use_bf16, which only OpenVINO runs, that is a one-line refusal."""
    if g["use_bf16"]:
        reason = openvino_unavailable(g, model_dir)
        if reason:
            raise ConfigError(f"Global.use_bf16 runs on Paddle Inference's OpenVINO engine, which "
                              f"cannot run here: {reason}")
        return "openvino"
    fallback = cpu_fallback_engine(g)
    if not g["use_openvino"]:
        return fallback
    reason = openvino_unavailable(g, model_dir)
    if reason:
        logger.info(f"Paddle Inference: OpenVINO engine not used ({reason}); running {fallback}")
        return fallback
    return "openvino"


def openvino_unavailable(g, model_dir):
    """Why Paddle Inference's OpenVINO engine cannot run this model with these keys, or None."""
    reason = None
    if g["use_fp16"] or g["use_int8"]:
        reason = "use_fp16/use_int8 run on oneDNN"
    elif not g["ir_optim"]:
        reason = "it runs as an IR pass and ir_optim is False"
    elif not os.path.isfile(os.path.join(model_dir, LEGACY_PROGRAM)):
        reason = (f"{model_dir} has no {LEGACY_PROGRAM} (export again with tools/export_model.py "
                  "to get it)")
    elif not openvino_in_paddle():
        reason = "this Paddle build does not include it"
    elif is_int8_model(os.path.join(model_dir, LEGACY_PROGRAM)):
        reason = "it cannot convert INT8-quantized programs"
    return reason


def cpu_fallback_engine(g):
    """The CPU engine when OpenVINO does not run: oneDNN unless enable_mkldnn is False."""
    return "onednn" if g["enable_mkldnn"] else "native"


def openvino_cache_dir():
    """The cache's `openvino` folder (ppcls/utils/cache.py), created here (Paddle creates
    only the last level); the temporary directory if that cannot be written."""
    from ppcls.utils.cache import cache_dir

    path = str(cache_dir("openvino"))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        import tempfile

        path = os.path.join(tempfile.gettempdir(), "ppcls-openvino")
        os.makedirs(path, exist_ok=True)
    return path


def openvino_in_paddle():
    """Whether this Paddle wheel ships OpenVINO (x86-64 Linux CPU wheels do)."""
    import glob

    import paddle

    return bool(glob.glob(os.path.join(os.path.dirname(paddle.__file__), "libs", "libopenvino.so*")))


class GpuPlan(NamedTuple):
    """How Paddle Inference runs a deploy config on a GPU."""
    engine: str  # "tensorrt" (TensorRT subgraphs) or "gpu" (Paddle's CUDA kernels)
    model_file: str
    precision: str  # "fp32", "fp16" or "int8"


def gpu_plan(g, model_dir):
    """The engine, program and precision that use_gpu, use_tensorrt, use_fp16 and use_int8
    ask for, or a one-line refusal where Paddle 3.3.1 would ignore a key:
    - TensorRT runs on the legacy program (inference.pdmodel, beside inference.json) with the
      legacy IR: a PIR program goes through AnalysisPredictor::OptimizeInferencePirProgram,
      which has no TensorRT pass, so enable_tensorrt_engine on inference.json does nothing.
    - use_fp16 without TensorRT is Paddle's GPU mixed precision: enable_use_gpu's precision
      Half turns on the auto_mixed_precision pass (float16 kernels, float32 where Paddle's
      lists keep it; inputs and outputs stay float32).
    - use_int8 needs TensorRT (INT8 kernels from the quantized program's scales)."""
    precision = "int8" if g["use_int8"] else "fp16" if g["use_fp16"] else "fp32"
    if g["use_bf16"]:
        raise ConfigError("Global.use_bf16 runs OpenVINO's bfloat16 on a CPU; on a GPU use "
                          "-o Global.use_fp16=True, or remove use_bf16")
    if not g["use_tensorrt"]:
        if g["use_int8"]:
            raise ConfigError("Global.use_int8 on a GPU runs through TensorRT: set "
                              "-o Global.use_tensorrt=True")
        return GpuPlan("gpu", find_model_files(model_dir)[0], precision)
    if not g["ir_optim"]:
        raise ConfigError("Global.use_tensorrt: TensorRT runs as an IR pass and Global.ir_optim "
                          "is False; set -o Global.ir_optim=True")
    legacy = os.path.join(model_dir, LEGACY_PROGRAM)
    if not os.path.isfile(legacy):
        raise ConfigError(f"Global.use_tensorrt: {model_dir} has no {LEGACY_PROGRAM}, the program "
                          "Paddle's TensorRT engine reads: export again with tools/export_model.py")
    return GpuPlan("tensorrt", legacy, precision)


def tensorrt_shape_ranges(model_file, batch_size):
    """(min, max, optimal) input shapes for TensorRT's dynamic-shape mode, from the feed
    variables of a legacy program: batches of 1 to batch_size at the exported image size."""
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    with open(model_file, "rb") as f:
        program.ParseFromString(f.read())
    block = program.blocks[0]
    dims = {var.name: list(var.type.dense_tensor.tensor.dims) for var in block.vars}
    inputs = [name for op in block.ops if op.type == "feed"
              for out in op.outputs for name in out.arguments]
    smallest, largest = {}, {}
    for name in inputs:
        image = dims[name][1:]
        if any(d < 1 for d in image):
            raise ConfigError(f"Global.use_tensorrt: input {name} of {model_file} has a variable "
                              f"size {dims[name]}; export it with a fixed Global.image_shape")
        smallest[name], largest[name] = [1] + image, [batch_size] + image
    return smallest, largest, largest


def running_precision(g):
    """The precision a deploy config that the predictor accepted runs in: 'int8', 'fp16' (GPU
    mixed precision or TensorRT), 'bf16' (use_fp16 on a CPU: oneDNN's bfloat16 kernels;
    use_bf16: OpenVINO's) or 'fp32'. The benchmark line reports it."""
    if g["use_bf16"]:
        return "bf16"
    if g["use_int8"]:
        return "int8"
    if g["use_fp16"]:
        return "fp16" if g["use_gpu"] else "bf16"
    return "fp32"


def check_cpu_keys(g):
    """One line for a key Paddle Inference on a CPU would silently ignore."""
    if g["use_tensorrt"]:
        raise ConfigError("Global.use_tensorrt needs -o Global.use_gpu=True (TensorRT runs on "
                          "NVIDIA GPUs); remove it to run on the CPU")
    if g["use_fp16"] and not g["enable_mkldnn"]:
        raise ConfigError("Global.use_fp16 on a CPU runs bfloat16 through oneDNN: set "
                          "-o Global.enable_mkldnn=True, or remove use_fp16")
    if g["use_fp16"]:
        from paddle.base import core

        if not core.supports_bfloat16():  # Paddle would run float32 and say so only in its log
            raise ConfigError("Global.use_fp16 on a CPU runs oneDNN's bfloat16 kernels, which need "
                              "AVX-512 (avx512_core); this CPU has none: remove use_fp16")
    if g["use_bf16"]:
        check_bf16_keys(g)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names for bfloat16 arithmetic


def check_bf16_keys(g, cpuinfo="/proc/cpuinfo"):
    """use_bf16 is OpenVINO's bfloat16 inference: one precision, on a CPU that computes in
    bfloat16 (without such instructions OpenVINO would emulate it, slower than float32)."""
    from ppcls.utils.threads import cpu_info

    if g["use_fp16"] or g["use_int8"]:
        raise ConfigError("Global.use_bf16 cannot be combined with use_fp16 or use_int8: choose one "
                          "precision (use_fp16 on a CPU runs oneDNN's bfloat16 kernels, use_bf16 "
                          "OpenVINO's)")
    if not g["use_openvino"]:
        raise ConfigError("Global.use_bf16 runs on Paddle Inference's OpenVINO engine: remove "
                          "use_openvino: False (or use_bf16)")
    if not set(BF16_CPU_FLAGS) & cpu_info(cpuinfo)[1]:
        raise ConfigError(f"Global.use_bf16 needs a CPU with bfloat16 instructions "
                          f"({' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo); this one has none: "
                          "remove use_bf16")


def check_gpu_build(tensorrt):
    """A one-line refusal when this Paddle cannot run on a GPU, or without TensorRT when
    use_tensorrt asks for it (Paddle's Config would log an error and run without them)."""
    import paddle
    from paddle import inference

    if not paddle.is_compiled_with_cuda():
        raise ConfigError("Global.use_gpu is True but this Paddle has no CUDA; set "
                          "-o Global.use_gpu=False or install paddlepaddle-gpu")
    if not tensorrt:
        return
    built = inference.get_trt_compile_version()
    if tuple(built) == (0, 0, 0):
        raise ConfigError("Global.use_tensorrt: this Paddle build has no TensorRT; install a "
                          "paddlepaddle-gpu build with TensorRT or run without use_tensorrt")
    try:
        inference.get_trt_runtime_version()  # loads libnvinfer
    except Exception as error:  # noqa: BLE001 - whatever the loader raises, the answer is one line
        raise ConfigError(f"Global.use_tensorrt: the TensorRT libraries cannot be loaded "
                          f"({str(error).splitlines()[0].strip()}); install TensorRT "
                          f"{'.'.join(map(str, built))} (the version this Paddle was built with) "
                          "or run without use_tensorrt") from None


def _configure_gpu(config, g, plan):
    from paddle import inference

    precision = {"fp32": inference.PrecisionType.Float32, "fp16": inference.PrecisionType.Half,
                 "int8": inference.PrecisionType.Int8}[plan.precision]
    if plan.engine == "tensorrt":
        config.enable_new_ir(False)  # the TensorRT subgraph pass runs on legacy programs only
        # float32 outside the TensorRT subgraphs, as PaddleClas's predictor does
        config.enable_use_gpu(int(g["gpu_mem"]), 0)
        # use_calib_mode=False: an INT8 model carries its scales from quant_post_static.py
        config.enable_tensorrt_engine(precision_mode=precision, max_batch_size=int(g["batch_size"]),
                                      min_subgraph_size=int(g["min_subgraph_size"]),
                                      use_calib_mode=False)
        # The exported batch dimension is -1: TensorRT 10 has no implicit-batch mode, so the
        # engine is built for batches 1..batch_size (the last batch of a folder is smaller).
        config.set_trt_dynamic_shape_info(*tensorrt_shape_ranges(plan.model_file, int(g["batch_size"])))
    else:
        config.enable_use_gpu(int(g["gpu_mem"]), 0, precision)
    # Paddle logs an error and carries on without what it could not set up: make that a refusal
    taken = config.use_gpu() and (plan.engine != "tensorrt" or (
        config.tensorrt_engine_enabled() and config.tensorrt_precision_mode() == precision))
    if not taken:
        raise ConfigError(f"Paddle Inference did not accept the GPU settings (use_gpu, "
                          f"{plan.engine}, {plan.precision}); its log above says why")


def onnxruntime_runner(g):
    import onnxruntime

    path = find_onnx_file(g["inference_model_dir"])
    check_int8(path, g["use_int8"])
    options = onnxruntime.SessionOptions()
    # ONNX Runtime at its fastest for one model on one machine: all graph optimisations
    # (its default, stated), the operators in sequence, and every thread inside them.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if g["enable_profile"]:  # ONNX Runtime writes a chrome-trace JSON and logs its name
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(g["inference_model_dir"], "onnxruntime_profile")
    options.intra_op_num_threads = int(g["cpu_num_threads"])
    options.log_severity_level = 3  # paddle2onnx leaves unused initializers; not worth a warning
    session = onnxruntime.InferenceSession(path, options, providers=onnxruntime_providers(g))
    if g["use_gpu"] and "CUDAExecutionProvider" not in session.get_providers():
        # ONNX Runtime falls back to the CPU when CUDA or cuDNN cannot be loaded
        raise ConfigError("Global.use_gpu: ONNX Runtime could not start its CUDA provider (are "
                          "the CUDA and cuDNN libraries onnxruntime-gpu needs installed?); set "
                          "-o Global.use_gpu=False to run on the CPU")
    model_input = session.get_inputs()[0]

    def run_batch(images):
        return session.run(None, {model_input.name: images})[0]

    # a dimension left open is named ('p2o.DynamicDimension.0') or None, not an int
    dims = [d if isinstance(d, int) and d > 0 else None for d in model_input.shape]
    return ModelRunner(run_batch, dims[1:] if len(dims) == 4 else None, "ONNX Runtime")


def onnxruntime_providers(g):
    """ONNX Runtime's execution providers for a deploy config, or a one-line refusal for a key
    it would ignore: use_gpu needs the CUDA provider, which only the onnxruntime-gpu package
    has; use_tensorrt and use_fp16 are Paddle Inference's (inference.onnx is float32)."""
    import onnxruntime

    for key in ("use_tensorrt", "use_fp16", "use_bf16"):
        if g[key]:
            raise ConfigError(f"Global.{key} is for the paddle backend; the onnxruntime backend "
                              f"runs inference.onnx as exported (float32): remove {key}")
    if not g["use_gpu"]:
        return ["CPUExecutionProvider"]
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(f"Global.use_gpu: this onnxruntime has no CUDA provider (it has "
                          f"{', '.join(available)}): pip install onnxruntime-gpu in its place, "
                          "or set -o Global.use_gpu=False")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def is_int8_model(model_file):
    """True for the output of deploy/slim/quant_post_static.py: a Paddle program with
    quantize operators, an ONNX model with QuantizeLinear nodes. A legacy program (.pdmodel)
    is parsed: its op-version table names quantize operators in every model."""
    with open(model_file, "rb") as f:
        data = f.read()
    if model_file.endswith(".pdmodel"):
        from paddle.base.proto import framework_pb2

        program = framework_pb2.ProgramDesc()
        program.ParseFromString(data)
        return any("quantize" in op.type for block in program.blocks for op in block.ops)
    return b"QuantizeLinear" in data or b"quantize_linear" in data or b"fake_quantize" in data \
        or b"fake_channel_wise" in data


def check_int8(model_file, use_int8):
    """use_int8 needs a quantized model; a quantized model without use_int8 still runs
    (ONNX Runtime always in INT8; Paddle simulating it in float32, slowly), so that is a warning."""
    quantized = is_int8_model(model_file)
    if use_int8 and not quantized:
        raise ConfigError(f"Global.use_int8 is True but {model_file} is not quantized: point "
                          "Global.inference_model_dir at the quant_post_static_model folder that "
                          "deploy/slim/quant_post_static.py writes")
    if quantized and not use_int8 and model_file.endswith((".pdmodel", ".json")):
        logger.warning(f"{model_file} is INT8-quantized: set -o Global.use_int8=True to run it "
                       "with oneDNN INT8 kernels (without it, it runs slower than the FP32 model)")


RUNNERS = {"paddle": paddle_runner, "onnxruntime": onnxruntime_runner}


BACKENDS = ("auto", *RUNNERS)  # auto: the engine choice may take either library


def backend_of(g):
    """The backend a deploy config's Global section asks for: PaddleClas's `use_onnx: True`
    (load <inference_model_dir>/inference.onnx) is our `backend: onnxruntime`; `auto`
    leaves it to Global.engine (ppcls/engine_choice.py)."""
    backend = "onnxruntime" if g.get("use_onnx") else g["backend"]
    if backend not in BACKENDS:
        raise ConfigError(f"Global.backend must be one of {', '.join(BACKENDS)}, got {shown(backend)}")
    return backend
