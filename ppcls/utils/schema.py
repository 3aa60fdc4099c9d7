"""What a config may say, in one place: the keys of every typed section with their types,
defaults and bounds (the tables below), and `read_section`, the one function that checks a
section against its table and fills in its defaults. Training configs
(ppcls/utils/config.py), deploy configs and inference.yml (ppcls/inference.py) and the
DataLoader's `loader` keys (ppcls/data) are all read through it: a rule is written once,
and its message is the same wherever it applies. Sections whose entries name components
(Arch, Loss, Optimizer, DataLoader's dataset and sampler, Metric, PostProcess) are checked
by the builders that build them (ppcls.utils.factory.check).

A key that PaddleClas has but that asks for something not implemented here is listed with
the one value implemented and why others are not (`unsupported`): named, never ignored.
"""

import math
from typing import NamedTuple

from ppcls.utils.errors import ConfigError, shown, unknown

NoneType = type(None)
INT32_MAX = 2**31 - 1  # what Paddle's integer attributes hold: the default bound of integers
INT64_LIMIT = 2**63  # no integer of a config may reach it (Paddle and numpy would overflow)
MAX_IMAGE_SIDE = 4096  # of Global.image_shape: the export's input and infer.py's resize target
MAX_CLASSES = 1_000_000
MAX_BATCH = 4096  # images a predictor holds at once


class Key(NamedTuple):
    """One key of a section: the types its value may have (bool is not an int; an int is
    a valid float), its default, and the rules on its value: at least `least` and at most
    `most` (integers at most INT32_MAX unless `most` says otherwise), one of `choices`,
    and a list's `items` of that type. With `unsupported` (why), `choices` are the values
    implemented here of a PaddleClas key that means more upstream."""

    types: tuple
    default: object = None
    least: object = None
    most: object = None
    choices: tuple = None
    unsupported: str = None
    items: type = None


# --------------------------------------------------------------- a training config
PATHS = (str, list, NoneType)  # a file or folder, a list of them, or none (with items=str)

GLOBAL = {
    # A checkpoint prefix to resume from, or `auto`: <output_dir>/<Arch.name>/latest when it
    # exists, else a fresh start (for launch --max_restart and job schedulers that rerun
    # the same command).
    "checkpoints": Key((str, NoneType)),
    "pretrained_model": Key((str, NoneType)),
    "output_dir": Key((str,), "./output/"),
    "device": Key((str,), "gpu", choices=("cpu", "gpu")),
    # Arch.class_num or this, decided once (config.py's resolve_class_num)
    "class_num": Key((int, NoneType)),
    "save_interval": Key((int,), 1, least=1),
    # How many epoch_N checkpoints to keep, newest first (latest and best_model are always
    # kept); 0 keeps them all.
    "keep_checkpoint_max": Key((int,), 5, least=0),
    # The global batch (processes x DataLoader.Train.sampler.batch_size) the learning rate
    # is tuned for; a run with another global batch warns once how to scale it.
    "global_batch_size": Key((int, NoneType), least=1),
    # Also write `latest` every this many iterations inside an epoch (0: epoch ends only).
    "save_latest_steps": Key((int,), 1000, least=0),
    "eval_during_train": Key((bool,), True),
    "eval_interval": Key((int,), 1, least=1),
    "start_eval_epoch": Key((int,), 0),
    # A million epochs is far past any schedule, and keeps epochs x iterations x seconds
    # within what the ETA and the schedules compute with.
    "epochs": Key((int,), 1, least=1, most=1_000_000),
    "print_batch_step": Key((int,), 10, least=1),
    "use_visualdl": Key((bool,), False),
    "image_shape": Key((list,), [3, 224, 224]),  # [3, H, W]: config.py's check_image_shape
    "save_inference_dir": Key((str,), "./inference"),
    "to_static": Key((bool,), False),
    "seed": Key((int, NoneType), least=0, most=2**32 - 1),
    "use_dali": Key((bool,), False, choices=(False,), unsupported=(
        "NVIDIA DALI is not implemented here: remove it or set it False")),
    "eval_mode": Key((str,), "classification", choices=("classification",),
                     unsupported="only classification is implemented"),
    "use_multilabel": Key((bool,), False, choices=(False,),
                          unsupported="multi-label training is not implemented"),
    # TIPC's AMP switch on upstream command lines: null here; other values warn (config.py).
    "auto_cast": Key((str, bool, NoneType)),
}
AMP = {
    "use_amp": Key((bool,), True),
    "scale_loss": Key((int, float), 65536.0),
    "use_dynamic_loss_scaling": Key((bool,), True),
    "use_promote": Key((bool,), False),
    "level": Key((str,), "O1", choices=("O1", "O2")),
    "use_fp16_test": Key((bool,), False),
}
EMA = {
    "decay": Key((float, int), 0.9999),
}
INFER = {  # tools/infer.py's section
    "infer_imgs": Key(PATHS, items=str),
    "batch_size": Key((int,), 1, least=1, most=MAX_BATCH),
    "transforms": Key((list, NoneType)),
    "PostProcess": Key((dict, NoneType)),
    "save_path": Key((str, NoneType)),
}
# Every section of a training config, with its table; None: checked by its builders.
TRAINING = {"Global": GLOBAL, "AMP": AMP, "EMA": EMA, "Arch": None, "Loss": None,
            "Optimizer": None, "DataLoader": None, "Infer": INFER, "Metric": None}
SECTIONS = tuple(TRAINING)
LOADER = {  # DataLoader.<Train|Eval>.loader: paddle.io.DataLoader's arguments of these names
    "num_workers": Key((int,), 0, least=0, most=1024),
    "use_shared_memory": Key((bool,), True),
}

# ----------------------------------------------------------------- a deploy config
# PaddleClas's inference keys (accepted even where they have no effect here) and ours.
DEPLOY_GLOBAL = {
    "infer_imgs": Key(PATHS, items=str),
    "inference_model_dir": Key((str, NoneType)),
    "batch_size": Key((int,), 1, least=1, most=MAX_BATCH),
    # auto (the fastest engine allowed), paddle or onnxruntime; Global.engine names one engine
    # (values checked with the other engine keys by ppcls/engine_choice.py)
    "backend": Key((str,), "auto"),
    "engine": Key((str,), "auto"),
    "use_bf16": Key((bool,), False),  # ours: OpenVINO's bfloat16 on CPUs that have it
    "use_gpu": Key((bool,), False),
    "enable_mkldnn": Key((bool,), True),
    "use_openvino": Key((bool,), True),
    "cpu_num_threads": Key((int,), 2, least=1, most=1024),
    "benchmark": Key((bool,), False),
    "enable_benchmark": Key((bool,), False),
    "use_fp16": Key((bool,), False),
    "use_int8": Key((bool,), False),
    "ir_optim": Key((bool,), True),
    "use_tensorrt": Key((bool,), False),
    "gpu_mem": Key((int,), 8000, least=1),
    "enable_profile": Key((bool,), False),
    "min_subgraph_size": Key((int,), 15, least=1),
    "save_path": Key((str, NoneType)),
    "save_log_path": Key((str, NoneType)),
    "use_onnx": Key((bool,), False),
}
PREPROCESS = {"transform_ops": Key((list, NoneType))}
DEPLOY = {"Global": DEPLOY_GLOBAL, "PreProcess": PREPROCESS, "PostProcess": None}
# PaddleClas's inference.yml, which export writes beside a model; Hpi is PaddleX's
# high-performance inference settings (TensorRT dynamic shapes).
INFERENCE_YML = {"Global": {"model_name": Key((str, NoneType))}, "PreProcess": PREPROCESS,
                 "PostProcess": None, "Hpi": None}


def defaults(table):
    return {key: rule.default for key, rule in table.items()}


# --------------------------------------------------------------------- reading
def read_sections(document, tables):
    """`document`'s sections checked against `tables` (section -> its table, or None for a
    section its builders check): unknown sections refused, each typed section read by
    `read_section`. Messages name the key; the caller names the file."""
    if not isinstance(document, dict):
        raise ConfigError("the top level must be a mapping of sections")
    for section in document:
        if section not in tables:
            raise unknown("section", section, list(tables))
    for section, table in tables.items():
        if table is not None and section in document:
            document[section] = read_section(document[section], table, section)
    return document


def read_section(values, table, where):
    """The section `values` (a mapping, or None for an empty one) with every key known to
    `table`, every value checked by its Key, and the defaults of the keys it omits."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping")
    for key, value in values.items():
        if key not in table:
            raise ConfigError(f"{where}: {unknown('key', key, list(table))}")
        check_value(f"{where}.{key}", value, table[key])
    return {key: values[key] if key in values else _copy(rule.default)
            for key, rule in table.items()}


def _copy(default):
    return list(default) if isinstance(default, list) else default


def check_value(name, value, rule):
    if not is_instance(value, rule.types) or (
            rule.items and isinstance(value, list) and not all(is_instance(v, (rule.items,))
                                                               for v in value)):
        raise ConfigError(f"{name} must be {type_names(rule.types, rule.items)}, got "
                          f"{shown(value)}")
    if rule.choices is not None and value not in rule.choices:
        if rule.unsupported:
            raise ConfigError(f"{name}: {shown(value)} is not supported ({rule.unsupported})")
        raise ConfigError(f"{name} must be {' or '.join(map(str, rule.choices))}, got "
                          f"{shown(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        most = rule.most if rule.most is not None else INT32_MAX if isinstance(value, int) else None
        if rule.least is not None and value < rule.least:
            raise ConfigError(f"{name} must be at least {rule.least}, got {shown(value)}")
        if most is not None and value > most:
            raise ConfigError(f"{name} must be at most {most}, got {shown(value)}")


def type_names(types, items=None):
    return " or ".join("null" if t is NoneType else f"list of {items.__name__}"
                       if t is list and items else t.__name__ for t in types)


def is_instance(value, types):
    """isinstance, except that bool is not an int and an int is a valid float."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def check_numbers(value, path=""):
    """No number anywhere in a document is infinite, NaN, or an integer past int64: each
    would make a wrong answer or a traceback far from the key that caused it."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(item, f"{path}.{index}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_cut(path)} must be a finite number, got {shown(value)}")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT64_LIMIT:
        raise ConfigError(f"{_cut(path)}: {shown(value)} is too large")


def _cut(key_path, limit=120):
    return key_path if len(key_path) <= limit else key_path[:limit] + "..."
