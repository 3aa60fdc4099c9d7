"""Train a model from a PaddleClas-style config.

    python tools/train.py -c configs/quick_start/MnasNet_B1_x0_5_digits.yaml
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c ...   (CPU, gloo)
    python -m paddle.distributed.launch --gpus 0,1,2,3 tools/train.py -c ...       (GPU, NCCL)
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.engine.engine import Engine  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import get_config, parse_args  # noqa: E402


def main(args):
    config = get_config(args.config, args.override)
    Engine(config, mode="train").train()


if __name__ == "__main__":
    sys.exit(run(main, parse_args(description="train a model")))
