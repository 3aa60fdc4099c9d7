"""`inference.yml`, written beside an exported model: PaddleClas's `export_for_fd` format,
the preprocessing and the labels a predictor needs (ppcls/inference.py reads it)."""

import copy
import os

import yaml

from ppcls.export.model_files import INFERENCE_CONFIG
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError


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
    # weights scored with their source's own eval transform get it, not the config's
    ops = network.eval_transforms(configured, where)
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
