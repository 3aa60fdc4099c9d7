"""Predict images with a trained model in dygraph (one file or a whole folder).

    python tools/infer.py -c CONFIG -o Infer.infer_imgs=demo/ -o Global.pretrained_model=... \
        [-o Infer.save_path=results.json]
    python tools/infer.py -o Global.pretrained_model=output/.../best_model -o Infer.infer_imgs=...

Without -c, the config is the one the checkpoint's training stored in it; for weights that
carry none, -o Arch.name=<model> uses infer.yaml (ImageNet's transforms and labels).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import ppcls  # noqa: E402,F401  (first: its CPU defaults apply as Paddle loads)
import paddle  # noqa: E402

from ppcls.data.postprocess import build_postprocess  # noqa: E402
from ppcls.export.inference_model import InferenceModel, build_inference_network  # noqa: E402
from ppcls.inference import (ModelRunner, Preprocessor, list_images, predict_files,  # noqa: E402
                             print_results, save_results)
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import PREDICTION_CONFIG, parse_args, tool_config  # noqa: E402
from ppcls.utils.errors import ConfigError  # noqa: E402


def arguments(argv=None):
    return parse_args(argv, description="predict images", config_from="pretrained_model")


def main(args):
    config = tool_config(args, default=PREDICTION_CONFIG)
    infer = config.get("Infer")
    if not infer:
        raise ConfigError(f"{args.config or 'the stored config'} has no Infer section: add "
                          "PaddleClas's (infer_imgs, batch_size, transforms, PostProcess), e.g. "
                          "copy it from infer.yaml")
    if not infer.get("infer_imgs"):
        raise ConfigError("Infer.infer_imgs is not set: give an image or a folder, "
                          "e.g. -o Infer.infer_imgs=demo/")
    paddle.set_device(config["Global"]["device"])
    network = build_inference_network(config)
    transforms = network.eval_transforms(infer.get("transforms"), "Infer.transforms")
    model = InferenceModel(network)

    def run(images):
        with paddle.no_grad():
            return model(paddle.to_tensor(images)).numpy()

    # the input the export would fix: images of other sizes are resized to it, as the
    # deployed predictor does, so both answer alike
    input_shape = config["Global"]["image_shape"]
    results = predict_files(list_images(infer["infer_imgs"]),
                            Preprocessor(transforms, "Infer.transforms", input_shape),
                            ModelRunner(run, input_shape, "dygraph"),
                            build_postprocess(infer.get("PostProcess"), "Infer.PostProcess"),
                            infer["batch_size"])
    print_results(results)
    if infer.get("save_path"):
        save_results(results, infer["save_path"])


if __name__ == "__main__":
    sys.exit(run(main, arguments()))
