"""Convert a torchvision, timm or Paddle-reproduction MnasNet checkpoint to .pdparams.

    python tools/convert_weights.py --source torchvision --arch MnasNet_B1_x1_0 \
        mnasnet1.0_top1_73.512-f206786ef8.pth pretrained/MnasNet_B1_x1_0_torchvision.pdparams
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from ppcls.arch.registry import available_models  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.weights.converter import (  # noqa: E402
    SOURCES, convert_state_dict, read_checkpoint, save_pdparams)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, choices=SOURCES,
                        help="who wrote the checkpoint (its tensor naming)")
    parser.add_argument("--arch", required=True, choices=available_models(),
                        help="our model name, e.g. MnasNet_B1_x1_0 for torchvision mnasnet1_0, "
                             "MnasNet_A1_x1_0 for timm semnasnet_100")
    parser.add_argument("--class_num", type=int, default=1000)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("src", help="a torch.save .pth/.pt/.bin (read without torch), "
                                    ".safetensors, .npz or .pdparams, recognised by content")
    parser.add_argument("dst", help="output .pdparams path")
    return parser.parse_args(argv)


def main(argv=None):
    """Exit code 0, or 2 with one line for a checkpoint that cannot be converted (see
    ppcls.utils.cli)."""
    return run(convert, parse_args(argv))


def convert(args):
    source_state = read_checkpoint(args.src)
    state, stem_relu = convert_state_dict(source_state, args.source, args.arch, args.class_num)
    save_pdparams(state, args.dst, stem_relu)
    print(f"converted {len(state)} tensors from {args.src} ({args.source}) to {args.dst}")
    print(f"these weights need stem_relu={stem_relu}, recorded in "
          f"{os.path.splitext(args.dst)[0]}.pdstates: loading them applies it (leave "
          "Arch.stem_relu unset)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
