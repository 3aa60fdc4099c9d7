"""Export for deployment: the network with a softmax on top, saved by `paddle.jit.save`
with a dynamic batch dimension and the input shape of `Global.image_shape`, and beside it
`inference.yml` (PaddleClas's `export_for_fd` format) describing the preprocessing and the
labels the model needs, so a predictor does not depend on a hand-kept deploy config.

Two programs share one parameter file: `inference.json` (PIR, Paddle 3's format, read by
paddle2onnx and by Paddle Inference's oneDNN and GPU paths) and `inference.pdmodel` (the
legacy program). Paddle Inference's OpenVINO engine, which the deployed predictor uses on
CPUs, reads only the legacy program in Paddle 3.3.1; it runs MnasNet-B1 at batch 1 on two
cores in about 4 ms where oneDNN needs about 7 ms (log/benchmark).
"""

import contextlib
import copy
import filecmp
import os
import tempfile

import paddle
import paddle.nn.functional as F
import yaml

from ppcls.arch import build_model
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError
from ppcls.weights import load_weights
from ppcls.weights.model_files import INFERENCE_CONFIG, MODEL_PREFIX, PARAMS_FILE, find_model_files
from ppcls.weights.pretrained import eval_transform_ops_for


class InferenceModel(paddle.nn.Layer):
    """Class probabilities: deployment post-processing expects a softmax output."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return paddle.nn.functional.softmax(self.network(x), axis=-1)


def build_inference_network(config):
    """The configured network with `Global.pretrained_model` loaded (EMA weights when the
    config has an EMA section and the checkpoint saved them), in eval mode."""
    model = build_model(config)
    path = config["Global"].get("pretrained_model")
    if path:
        load_weights(model, path, prefer_ema=bool(config.get("EMA")),
                     configured_stem_relu=config["Arch"].get("stem_relu"))
    else:
        logger.warning("Global.pretrained_model is not set: using randomly initialised weights")
    model.eval()
    return model


def export_inference_model(config, save_dir):
    shape = config["Global"]["image_shape"]  # [3, H, W], checked with the config
    network = build_inference_network(config)
    model = InferenceModel(network)
    model.eval()
    spec = paddle.static.InputSpec([None] + list(shape), "float32", name="x")
    paddle.jit.save(model, os.path.join(save_dir, MODEL_PREFIX), input_spec=[spec])
    save_legacy_program(model, spec, save_dir)
    write_inference_config(inference_config(config, network), save_dir)
    return find_model_files(save_dir)


def save_legacy_program(model, spec, save_dir):
    """Adds `inference.pdmodel` beside the PIR program, after checking that the legacy save
    wrote the same parameter file byte for byte. If Paddle cannot record the legacy program,
    one warning says so and the export stays usable (the predictor then runs oneDNN)."""
    with tempfile.TemporaryDirectory(dir=save_dir) as tmp:
        prefix = os.path.join(tmp, MODEL_PREFIX)
        try:
            with paddle.pir_utils.OldIrGuard(), _legacy_sigmoid():
                paddle.jit.save(model, prefix, input_spec=[spec])
        except Exception as err:  # noqa: BLE001 - an optional second format; say why, go on
            logger.warning(f"export: no legacy program for the OpenVINO engine ({type(err).__name__}: "
                           f"{str(err).strip().splitlines()[-1][:200]}); the predictor will use oneDNN")
            return
        if not filecmp.cmp(prefix + ".pdiparams", os.path.join(save_dir, PARAMS_FILE), shallow=False):
            logger.warning("export: the legacy program's parameters differ from inference.pdiparams; "
                           "not writing inference.pdmodel (the predictor will use oneDNN)")
            return
        for suffix in (".pdmodel", ".pdiparams.info"):
            os.replace(prefix + suffix, os.path.join(save_dir, MODEL_PREFIX + suffix))


@contextlib.contextmanager
def _legacy_sigmoid():
    """In Paddle 3.3.1 `F.sigmoid` (the squeeze-and-excitation gate) always emits a PIR
    operation and fails while a legacy program is recorded; inside this block it appends
    the legacy `sigmoid` operator instead. Everything else records as it is."""
    original = F.sigmoid

    def sigmoid(x, name=None):
        if paddle.in_dynamic_mode() or paddle.framework.use_pir_api():
            return original(x, name)
        helper = paddle.base.layer_helper.LayerHelper("sigmoid", name=name)
        out = helper.create_variable_for_type_inference(x.dtype)
        helper.append_op(type="sigmoid", inputs={"X": [x]}, outputs={"Out": [out]})
        return out

    F.sigmoid = sigmoid
    try:
        yield
    finally:
        F.sigmoid = original


def write_inference_config(description, save_dir):
    with open(os.path.join(save_dir, INFERENCE_CONFIG), "w", encoding="utf-8") as f:
        yaml.safe_dump(description, f, sort_keys=False, allow_unicode=True)


def inference_config(config, network):
    """PaddleClas's inference.yml: Global.model_name, PreProcess.transform_ops (decoding
    left to the predictor, as in PaddleClas) and PostProcess.Topk with its label_list."""
    infer = config.get("Infer") or {}
    configured, where = infer.get("transforms"), "Infer.transforms"
    eval_ops = (((config.get("DataLoader") or {}).get("Eval") or {}).get("dataset") or {}).get("transform_ops")
    if not configured and eval_ops:  # no Infer transforms: the eval loader's, then HWC -> CHW
        configured, where = list(eval_ops) + [{"ToCHWImage": None}], "DataLoader.Eval.dataset.transform_ops"
    # torchvision/timm weights need their source's eval transform, not the config's
    ops = eval_transform_ops_for(network, configured, where)
    description = {"Global": {"model_name": config["Arch"]["name"]}}
    if ops:
        ops = [_portable(op) for op in copy.deepcopy(ops)]
        description["PreProcess"] = {"transform_ops": [op for op in ops if op is not None]}
    else:
        logger.warning(f"the config has neither Infer.transforms nor DataLoader.Eval transforms: "
                       f"{INFERENCE_CONFIG} describes no preprocessing")
    topk = {"topk": int((infer.get("PostProcess") or {}).get("topk", 5))}
    labels = label_list(infer, config["Arch"].get("class_num", 1000))
    if labels is not None:
        topk["label_list"] = labels
    description["PostProcess"] = {"Topk": topk}
    return description


def _portable(op):
    """The op as other readers of inference.yml expect it: a plain DecodeImage is dropped
    (the predictor decodes to RGB itself) and NormalizeImage.scale is a number."""
    (name, args), = op.items()
    args = dict(args or {})
    if name == "DecodeImage" and set(args.items()) <= {("to_rgb", True), ("channel_first", False)}:
        return None
    if name == "NormalizeImage":
        if isinstance(args.get("scale"), str):
            numerator, _, denominator = args["scale"].partition("/")
            args["scale"] = float(numerator) / float(denominator or 1)
        args.setdefault("channel_num", 3)
    return {name: args or None}


def label_list(infer, class_num):
    """Names by class id from Infer.PostProcess.class_id_map_file; None (with a warning)
    when there is no such file, an error when it does not name class_num classes."""
    from ppcls.data.postprocess import read_class_id_map

    path = (infer.get("PostProcess") or {}).get("class_id_map_file")
    if not path or not os.path.isfile(path):
        logger.warning(f"Infer.PostProcess.class_id_map_file {path!r} not found: "
                       f"{INFERENCE_CONFIG} gets no label_list")
        return None
    names = read_class_id_map(path)
    if sorted(names) != list(range(class_num)):
        raise ConfigError(f"{path}: names {len(names)} class ids but Arch.class_num is "
                          f"{class_num}: give one line per class id 0..{class_num - 1}")
    return [names[i] for i in range(class_num)]
