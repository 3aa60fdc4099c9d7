"""Train a model from a PaddleClas-style config.

    python tools/train.py -c configs/quick_start/MnasNet_B1_x0_5_digits.yaml
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c ...   (CPU, gloo)
    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c ...       (GPU, NCCL)
    python tools/train.py -o Global.checkpoints=output/.../latest     (resume with its config)

Without -c, a resume uses the config the checkpoint's training stored in it (-o overrides
it, e.g. -o Global.epochs=30).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.engine.engine import Engine  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import parse_args, tool_config  # noqa: E402


def arguments(argv=None):
    return parse_args(argv, description="train a model", config_from="checkpoints")


def main(args):
    config = tool_config(args)
    Engine(config, mode="train").train()


if __name__ == "__main__":
    sys.exit(run(main, arguments()))
