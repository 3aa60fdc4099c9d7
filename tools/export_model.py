"""Export a trained model for Paddle Inference (dynamic batch, softmax output) and, beside it,
as inference.onnx for ONNX Runtime.

    python tools/export_model.py -c CONFIG -o Global.pretrained_model=output/.../best_model \
        -o Global.save_inference_dir=./inference
    python tools/export_model.py -o Global.pretrained_model=output/.../best_model

Without -c, the config is the one the checkpoint's training stored in it; for weights that
carry none, -o Arch.name=<model> uses infer.yaml (ImageNet's transforms and labels).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
import ppcls  # noqa: E402,F401  (first: its CPU defaults apply as Paddle loads)
import paddle  # noqa: E402

from ppcls.export.inference_model import export_inference_model  # noqa: E402
from ppcls.export.model_files import ONNX_FILE  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import PREDICTION_CONFIG, parse_args, tool_config  # noqa: E402


def arguments(argv=None):
    return parse_args(argv, description="export an inference model",
                      config_from="pretrained_model")


def main(args):
    config = tool_config(args, default=PREDICTION_CONFIG)
    paddle.set_device("cpu")  # exporting needs no accelerator
    model_file, params_file = export_inference_model(config, config["Global"]["save_inference_dir"])
    onnx = os.path.join(os.path.dirname(model_file), ONNX_FILE)
    print(f"exported {model_file} and {params_file}" + (f" (and {onnx})" if os.path.isfile(onnx) else ""))


if __name__ == "__main__":
    sys.exit(run(main, arguments()))
