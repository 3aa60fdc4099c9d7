"""Convert a torchvision, timm or Paddle-reproduction MnasNet checkpoint to .pdparams.

    python tools/convert_weights.py --source torchvision --arch MnasNet_B1_x1_0 \
        mnasnet1.0_top1_73.512-f206786ef8.pth pretrained/MnasNet_B1_x1_0_torchvision.pdparams
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import ppcls.arch.backbone.model_zoo.mnasnet.converter as converter  # noqa: E402
from ppcls.arch.registry import available_models  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.weights import read_weights  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, choices=converter.SOURCES,
                        help="who wrote the checkpoint (its tensor naming)")
    parser.add_argument("--arch", required=True, choices=available_models(),
                        help=f"our model name, e.g. {converter.ARCH_EXAMPLES}")
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
    state, record = converter.convert_state_dict(read_weights(args.src), args.source,
                                                 args.arch, args.class_num)
    converter.save_pdparams(state, args.dst, record)
    print(f"converted {len(state)} tensors from {args.src} ({args.source}) to {args.dst}")
    print(converter.record_note(record, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
