"""INT8 post-training quantization of an exported model, with PaddleClas's command:

    python deploy/slim/quant_post_static.py -c CONFIG -o Global.pretrained_model=WEIGHTS \
        -o Global.save_inference_dir=DIR

reads the FP32 model in DIR (tools/export_model.py) and writes DIR/quant_post_static_model/:
  inference.pdmodel/.pdiparams  Paddle's PostTrainingQuantization (run it with
                                -o Global.use_int8=True: oneDNN INT8 kernels on CPU);
  inference.onnx                ONNX Runtime static QDQ quantization of the FP32 ONNX model
                                (run it with -o Global.use_onnx=True);
  inference.yml                 copied, so the predictor preprocesses as for the FP32 model.
Both calibrate on the same images: the first of the config's DataLoader.Eval list, evenly
spread, preprocessed as the predictor does (inference.yml's transform_ops).

Paddle's PostTrainingQuantization, not PaddleSlim: it ships with paddlepaddle, and PaddleSlim
has no release for Paddle 3.x (its last, 2.6, targets Paddle 2.6). It reads legacy programs
only, so this script runs with FLAGS_enable_pir_api=0; a model exported as a PIR program
(inference.json, Paddle 3's default) is exported again from Global.pretrained_model.
"""

import argparse
import os
import shutil
import sys
import tempfile

os.environ.setdefault("FLAGS_enable_pir_api", "0")  # before Paddle is imported: see above
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
import numpy as np  # noqa: E402

from ppcls.inference import Preprocessor, read_inference_config  # noqa: E402
from ppcls.utils import logger  # noqa: E402
from ppcls.utils.cli import run  # noqa: E402
from ppcls.utils.config import get_config  # noqa: E402
from ppcls.utils.errors import ConfigError  # noqa: E402
from ppcls.utils.text import read_lines  # noqa: E402
from ppcls.export.model_files import (INFERENCE_CONFIG, MODEL_FILES, PARAMS_FILE,  # noqa: E402
                                      find_model_files, program_input_shape)

QUANT_DIR = "quant_post_static_model"
LEGACY_MODEL = MODEL_FILES[1]  # inference.pdmodel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="INT8 post-training quantization")
    parser.add_argument("-c", "--config", required=True, help="the training YAML config")
    parser.add_argument("-o", "--override", action="append", default=[], help="e.g. -o Global.save_inference_dir=DIR")
    parser.add_argument("--algo", default="hist", choices=["KL", "hist", "avg", "mse", "abs_max", "min_max"],
                        help="activation scale search of Paddle's PTQ (default hist, PaddleSlim's default)")
    parser.add_argument("--batch_size", type=int, default=10, help="calibration images per batch")
    parser.add_argument("--batch_nums", type=int, default=10, help="calibration batches")
    parser.add_argument("--no_onnx", action="store_true", help="skip the ONNX Runtime QDQ model")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def calibration_batches(config, model_dir, batch_size, batch_nums):
    """[N, C, H, W] float32 arrays of the config's eval images, preprocessed as deployed."""
    dataset = config["DataLoader"]["Eval"]["dataset"]
    root, list_file = dataset["image_root"], dataset["cls_label_path"]
    if not os.path.isfile(list_file):
        raise ConfigError(f"DataLoader.Eval.dataset.cls_label_path {list_file} not found: the "
                          "calibration images are the eval set's")
    files = [os.path.join(root, line.split()[0]) for _, line in read_lines(list_file) if line.strip()]
    wanted = batch_size * batch_nums
    files = files[::max(1, len(files) // wanted)][:wanted]  # spread over the (sorted) classes
    ops = inference_transforms(config, model_dir)
    preprocess = Preprocessor(ops, f"{model_dir}/{INFERENCE_CONFIG}", program_input_shape(model_dir))
    images = np.stack([preprocess(f) for f in files]).astype(np.float32)
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def inference_transforms(config, model_dir):
    path = os.path.join(model_dir, INFERENCE_CONFIG)
    if os.path.isfile(path):
        return read_inference_config(path)["PreProcess"]["transform_ops"]
    logger.warning(f"{path} not found: calibrating with DataLoader.Eval's transform_ops")
    return list(config["DataLoader"]["Eval"]["dataset"]["transform_ops"]) + [{"ToCHWImage": None}]


def legacy_program_dir(config, model_dir, scratch):
    """A folder holding the FP32 model as a legacy program (what PTQ reads)."""
    find_model_files(model_dir)  # a clear error when nothing was exported
    if os.path.isfile(os.path.join(model_dir, LEGACY_MODEL)):
        return model_dir
    if not config["Global"].get("pretrained_model"):
        raise ConfigError(f"{model_dir} holds a PIR program (inference.json), which Paddle's "
                          "post-training quantization cannot read: give -o Global.pretrained_model="
                          "<weights> so it is exported again as a legacy program")
    from ppcls.export.inference_model import export_inference_model

    logger.info(f"{model_dir} is a PIR program: exporting {config['Global']['pretrained_model']} "
                "again as a legacy program for quantization")
    export_inference_model(config, scratch)
    return scratch


def quantize_paddle(fp32_dir, out_dir, batches, algo):
    import paddle
    from paddle.static.quantization import PostTrainingQuantization

    paddle.enable_static()
    ptq = PostTrainingQuantization(
        executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=fp32_dir,
        model_filename=LEGACY_MODEL, params_filename=PARAMS_FILE,
        data_loader=lambda: ({"x": batch} for batch in batches),
        batch_size=len(batches[0]), batch_nums=len(batches), algo=algo,
        # per-channel weight scales: depthwise kernels differ a lot from channel to channel
        weight_quantize_type="channel_wise_abs_max")
    ptq.quantize()
    ptq.save_quantized_model(out_dir, model_filename=LEGACY_MODEL, params_filename=PARAMS_FILE)


def quantize_onnx(fp32_onnx, out_file, batches, scratch):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's own graph optimisation first (folds each BatchNorm into its conv), so
    # the quantized convolutions are the fused ones and no BatchNorm sits between QDQ pairs
    optimized = os.path.join(scratch, "fp32_optimized.onnx")
    quant_pre_process(fp32_onnx, optimized, skip_symbolic_shape=True)  # ONNX shape inference suffices

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch}

    # U8 activations and S8 per-channel weights: the combination x86 CPUs run fastest
    quantize_static(optimized, out_file, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main(args):
    config = get_config(args.config, args.override)
    model_dir = config["Global"]["save_inference_dir"]
    out_dir = os.path.join(model_dir, QUANT_DIR)
    batches = calibration_batches(config, model_dir, args.batch_size, args.batch_nums)
    with tempfile.TemporaryDirectory() as scratch:
        fp32_dir = legacy_program_dir(config, model_dir, scratch)
        quantize_paddle(fp32_dir, out_dir, batches, args.algo)
        if not args.no_onnx:
            fp32_onnx = os.path.join(model_dir, "inference.onnx")
            if not os.path.isfile(fp32_onnx):
                from ppcls.export.onnx_model import export_onnx

                fp32_onnx = export_onnx(fp32_dir, os.path.join(scratch, "fp32.onnx"))
            quantize_onnx(fp32_onnx, os.path.join(out_dir, "inference.onnx"), batches, scratch)
    if os.path.isfile(os.path.join(model_dir, INFERENCE_CONFIG)):
        shutil.copy(os.path.join(model_dir, INFERENCE_CONFIG), out_dir)
    print(f"wrote {out_dir} (calibrated on {sum(len(b) for b in batches)} images, algo {args.algo})")


if __name__ == "__main__":
    sys.exit(run(main, parse_args()))
