"""Export to ONNX: the Paddle Inference model tools/export_model.py wrote, converted by
paddle2onnx into `inference.onnx` beside it (the name PaddleClas's Global.use_onnx loads)."""

import os

from ppcls.export.model_files import ONNX_FILE, find_model_files


def export_onnx(model_dir, save_file=None, opset=13):
    """Convert the exported model in `model_dir`; returns the ONNX file written (by default
    `<model_dir>/inference.onnx`)."""
    import paddle2onnx

    model_file, params_file = find_model_files(model_dir)
    save_file = save_file or os.path.join(model_dir, ONNX_FILE)
    paddle2onnx.export(model_file, params_file, save_file=save_file, opset_version=opset,
                       enable_onnx_checker=True, optimize_tool="None")
    return save_file
