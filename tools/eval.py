"""Evaluate weights on DataLoader.Eval of a config.

    python tools/eval.py -o Global.pretrained_model=output/quick_start/MnasNet_B1_x0_5/best_model
    python tools/eval.py -c CONFIG -o Global.pretrained_model=output/MnasNet_B1_x1_0/best_model

Without -c, the config is the one the checkpoint's training stored in it; for weights that
carry none, -o Arch.name=<model> uses configs/ImageNet/MnasNet/<model>.yaml (ImageNet's
val set). -o overrides either.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.engine.engine import Engine  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import VARIANT_CONFIG, parse_args, tool_config  # noqa: E402


def arguments(argv=None):
    return parse_args(argv, description="evaluate a model", config_from="pretrained_model")


def main(args):
    config = tool_config(args, default=VARIANT_CONFIG)
    if not config["Global"].get("pretrained_model"):
        print("warning: Global.pretrained_model is not set: evaluating random weights",
              file=sys.stderr)
    Engine(config, mode="eval").evaluate()


if __name__ == "__main__":
    sys.exit(run(main, arguments()))
