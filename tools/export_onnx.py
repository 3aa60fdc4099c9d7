"""Convert an exported Paddle inference model to ONNX with paddle2onnx.

    python tools/export_onnx.py --model_dir ./inference [--save_file ./inference/inference.onnx]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from ppcls.export.model_files import ONNX_FILE  # noqa: E402
from ppcls.export.onnx_model import export_onnx  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="output of tools/export_model.py")
    parser.add_argument("--save_file", default=None, help=f"default: <model_dir>/{ONNX_FILE}")
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def export(args):
    print(f"wrote {export_onnx(args.model_dir, args.save_file, args.opset)}")


def main(argv=None):
    """Exit code 0, or 2 with one line for a model that cannot be converted (ppcls.utils.cli)."""
    return run(export, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
