"""Convert an exported Paddle inference model to ONNX with paddle2onnx.

    python tools/export_onnx.py --model_dir ./inference [--save_file ./inference/inference.onnx]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from ppcls.utils.errors import ConfigError  # noqa: E402
from ppcls.weights.model_files import ONNX_FILE, find_model_files  # noqa: E402


def export_onnx(model_dir, save_file=None, opset=13):
    import paddle2onnx

    model_file, params_file = find_model_files(model_dir)
    save_file = save_file or os.path.join(model_dir, ONNX_FILE)
    paddle2onnx.export(model_file, params_file, save_file=save_file, opset_version=opset,
                       enable_onnx_checker=True, optimize_tool="None")
    return save_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="output of tools/export_model.py")
    parser.add_argument("--save_file", default=None, help=f"default: <model_dir>/{ONNX_FILE}")
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args(argv)
    try:
        print(f"wrote {export_onnx(args.model_dir, args.save_file, args.opset)}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
