"""Evaluate weights on DataLoader.Eval of a config.

    python tools/eval.py -c CONFIG -o Global.pretrained_model=output/MnasNet_B1_x1_0/best_model
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.engine.engine import Engine  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import get_config, parse_args  # noqa: E402


def main(args):
    config = get_config(args.config, args.override)
    if not config["Global"].get("pretrained_model"):
        print("warning: Global.pretrained_model is not set: evaluating random weights",
              file=sys.stderr)
    Engine(config, mode="eval").evaluate()


if __name__ == "__main__":
    sys.exit(run(main, parse_args(description="evaluate a model")))
