"""Classify images with an exported model, in this process: the object behind
`deploy/python/predict_cls.py` and the HTTP service `deploy/serving/serve.py`.

    from ppcls.predictor import Predictor

    predictor = Predictor("inference/quick_start")            # what tools/export_model.py wrote
    predictor = Predictor("inference", batch_size=8, engine="onnxruntime")   # deploy Global keys
    predictor = Predictor(config=deploy_config)  # a deploy config as predict_cls.py's load_config returns it

    predictor.predict("demo/cat.jpg")
    # {'class_ids': [281, ...], 'scores': [0.91, ...], 'label_names': ['tabby, tabby cat', ...],
    #  'file_name': 'demo/cat.jpg'}
    predictor.predict([path, jpeg_bytes, rgb_array], topk=3)    # a list in, a list out, in order

An image is a file path, its encoded bytes (JPEG, PNG, ...) or a decoded HWC uint8 RGB
array. A result has `file_name` only for a path. An image that cannot be used (missing,
not an image, over the pixel cap, refused by the engine) gets `{'error': ...}` (and its
`file_name`) in its place and costs the others nothing. Each answer is the image's own:
batches hold images of one size, and an image of another size than the model's input is
resized to it whole (ppcls/inference.py). The engine is chosen as `Global.engine` says
(ppcls/engine_choice.py; by default the fastest on this machine, timed once).

A Predictor runs one batch at a time: threads should each have their own (`replica()`).
"""

import copy
import os

import numpy as np

from ppcls.data.postprocess import PostProcesses, SavePreLabel, Topk, build_postprocess
from ppcls.engine_choice import build_runner
from ppcls.inference import (DEPLOY_DEFAULTS, IMAGE_SOURCES, Preprocessor, apply_inference_config,
                             is_image_source, predict_files, run_each, running_precision)
from ppcls.utils.errors import ConfigError, unknown
from ppcls.utils.schema import DEPLOY_GLOBAL, check_value

# an image the preprocessing is timed on when the model leaves its size open
_SAMPLE_IMAGE_SIZE = (256, 256)


class Predictor:
    """See the module's docstring. Attributes: `engine` ('openvino', 'onednn', 'native',
    'onnxruntime', or on a GPU 'gpu'), `backend` ('paddle' or 'onnxruntime'), `precision`
    ('fp32', 'bf16', 'fp16', 'int8'), `config` (the deploy config it runs), `class_num`."""

    def __init__(self, model_dir=None, *, config=None, **global_keys):
        if config is None:
            if model_dir is None:
                raise ConfigError("Predictor needs an exported model folder (model_dir) or a "
                                  "deploy config (config=)")
            config = default_config()
        config = copy.deepcopy(config)
        g = config["Global"] = {**DEPLOY_DEFAULTS, **(config.get("Global") or {})}
        for key, value in global_keys.items():
            if key not in DEPLOY_DEFAULTS:
                raise unknown("deploy key", key, list(DEPLOY_DEFAULTS))
            check_value(f"Global.{key}", value, DEPLOY_GLOBAL[key])  # as a deploy yaml's are
            g[key] = value
        if model_dir is not None:
            g["inference_model_dir"] = os.fspath(model_dir)
        if not g["inference_model_dir"]:
            raise ConfigError("Global.inference_model_dir is not set")
        self.config = config = apply_inference_config(config, "the deploy config")
        self.batch_size = int(g["batch_size"])
        shape = self._program_shape(g)
        self.preprocessor = Preprocessor(config["PreProcess"]["transform_ops"], "PreProcess.transform_ops",
                                         shape)
        self.postprocessor = build_postprocess(config.get("PostProcess"), "PostProcess")
        self.runner, self.engine = build_runner(g, self._sample_shape(shape))
        self.preprocessor.input_shape = self.runner.input_shape
        self.backend = "onnxruntime" if self.engine == "onnxruntime" else "paddle"
        self.precision = running_precision(g)

    def predict(self, inputs, topk=None):
        """One result for one image, a list of results for a list (or tuple) of images.
        `topk`: this many classes instead of the config's PostProcess.Topk.topk."""
        single = is_image_source(inputs)
        items = [inputs] if single else list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for item in items:
            if not is_image_source(item):
                raise TypeError(f"Predictor.predict takes {IMAGE_SOURCES}, or a list of them; got "
                                f"{type(item).__name__}")
        names = [os.fspath(item) if isinstance(item, (str, os.PathLike)) else None for item in items]
        if None in names and self._saves_pre_labels():
            raise ConfigError("PostProcess.SavePreLabel copies image files, and some images are "
                              "bytes or arrays: give file paths, or remove SavePreLabel")
        postprocess = self.postprocessor if topk is None else self._topk(topk)
        results = predict_files(items, self.preprocessor, self.runner, postprocess,
                                self.batch_size, names)
        return results[0] if single else results

    # ------------------------------------------- the steps, for callers that schedule them
    def prepare(self, image):
        """The model's input for one image (CHW float32); a ValueError or OSError says why
        the image cannot be used. Threads may call it at once."""
        return self.preprocessor.prepare(image)[0]

    def run(self, images):
        """Probabilities for each of `images` (prepared, of one shape), or an EngineFailure
        for an image the engine failed on alone."""
        return run_each(images, self.runner)

    def postprocess(self, probabilities, topk=None):
        """The result of one image's probabilities (without file_name)."""
        step = self.postprocessor if topk is None else self._topk(topk)
        result = step(np.asarray(probabilities)[None], [None])[0]
        result.pop("file_name", None)
        return result

    @property
    def class_num(self):
        """The model's number of classes (known after its first batch)."""
        if self.runner.class_num is None:
            channels, height, width = (d or s for d, s in zip(self.runner.input_shape,
                                                               (3, *_SAMPLE_IMAGE_SIZE)))
            self.runner(np.zeros((1, channels, height, width), np.float32))
        return self.runner.class_num

    @property
    def top_k_step(self):
        """The configured Topk post-process (whose k a request may change), or None."""
        main = self.postprocessor
        if isinstance(main, PostProcesses):
            main = dict(main.steps)[main.main]
        return main if isinstance(main, Topk) else None

    def replica(self):
        """Another Predictor of the same config on the same engine (no second choice), for
        another thread."""
        config = copy.deepcopy(self.config)
        config["Global"]["engine"] = self.engine if self.engine != "gpu" else "auto"
        return Predictor(config=config)

    # ---------------------------------------------------------------------------- helpers
    def _topk(self, k):
        step = self.top_k_step
        if step is None:
            raise ConfigError("topk: this model's PostProcess does not end in Topk (its "
                              "main_indicator gives one class)")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.class_num:
            raise ConfigError(f"topk must be an integer from 1 to {self.class_num} (the model's "
                              f"classes), got {k!r}")
        chosen = copy.copy(step)
        chosen.topk = k
        return chosen

    def _saves_pre_labels(self):
        steps = self.postprocessor.steps if isinstance(self.postprocessor, PostProcesses) else []
        return any(isinstance(step, SavePreLabel) for _, step in steps)

    @staticmethod
    def _program_shape(g):
        from ppcls.export.model_files import program_input_shape

        return program_input_shape(g["inference_model_dir"])

    def _sample_shape(self, shape):
        """(C, H, W) the preprocessing makes of a grey image: what `auto` times a model that
        leaves its size open on."""
        if shape and all(shape):
            return shape
        try:
            return self.preprocessor.prepare(np.full((*_SAMPLE_IMAGE_SIZE, 3), 128, np.uint8))[0].shape
        except (ValueError, OSError):
            return None


def default_config():
    """The deploy config of a model folder given alone: the deploy defaults, with the
    preprocessing and labels of its inference.yml."""
    return {"Global": dict(DEPLOY_DEFAULTS), "PostProcess": None}
