"""PaddleClas-style configuration: a YAML file plus `-o Key.sub.0.leaf=value` overrides,
resolved in one pass before any work starts (`get_config`):

    read      the file and the overrides (ppcls/utils/yaml_file.py)
    type      the typed sections, Global, AMP, EMA and Infer, by their tables, defaults
              filled in (ppcls/utils/schema.py); Global.image_shape and the number of
              classes; no number anywhere infinite or past int64
    check     every other section by the rules that build it (`check_sections`): the
              model's arguments, losses, metrics, data loaders, optimizer and schedule,
              inference transforms, each through its builder's own check

Every message starts with the config file and names the key. PaddleClas keys asking for
something not implemented here are refused by name; none is silently ignored.
"""

import argparse

from ppcls.arch import check_arch
from ppcls.data import check_dataloader
from ppcls.data.postprocess import POSTPROCESSES
from ppcls.data.preprocess import build_transforms
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.optimizer import check_optimizer
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown
from ppcls.utils.factory import check, split_spec
from ppcls.utils.schema import (GLOBAL, MAX_CLASSES, MAX_IMAGE_SIDE, TRAINING, check_numbers,
                                defaults, is_instance, read_sections)
from ppcls.utils.yaml_file import load_with_overrides


def get_config(path, overrides=()):
    """Load `path`, apply the overrides in order, type the typed sections, then check every
    other section against what it builds: the one step from a config file to a config
    the tools can trust."""
    config = load_with_overrides(path, overrides)
    validate(config, source=path)
    try:
        check_sections(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def validate(config, source="config"):
    """Type the typed sections and fill their defaults (Global always), check
    Global.image_shape and every number, and decide the number of classes. Raises a
    ConfigError starting with `source`."""
    try:
        # `Infer: null` is no Infer section (tools/infer.py says it needs one)
        no_infer = config.get("Infer") is None
        read_sections(config, {**TRAINING, "Infer": None} if no_infer else TRAINING)
        config.setdefault("Global", defaults(GLOBAL))
        check_image_shape(config["Global"]["image_shape"])
        check_numbers(config)
        resolve_class_num(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def check_sections(config):
    """The sections that name components, checked by the rules that build them."""
    _note_auto_cast(config["Global"]["auto_cast"])
    check_arch(config)
    for mode in ("Train", "Eval"):
        build_loss(config, mode)
        build_metrics(config, mode)
        check_dataloader(config, mode)
    if config.get("Optimizer") is not None:  # required only by training, which says so
        check_optimizer(config, config["Global"]["epochs"])
    infer = config.get("Infer")
    if infer:
        build_transforms(infer["transforms"], "Infer.transforms")
        if infer["PostProcess"]:
            name, args = split_spec(infer["PostProcess"], "Infer.PostProcess")
            check(POSTPROCESSES, name, args, "Infer.PostProcess", kind="post-process")


def _note_auto_cast(value):
    if value not in (None, "null"):
        logger.warning("Global.auto_cast=%s has no effect here (TIPC's switch, which the chain "
                       "script turns into AMP keys): set AMP.use_amp and AMP.level to train "
                       "with AMP", value)


def check_image_shape(shape):
    """[3, H, W]: the models take 3 channels, and H and W size the export's input and every
    image tools/infer.py resizes to them."""
    valid = (isinstance(shape, list) and len(shape) == 3 and shape[0] == 3
             and all(is_instance(v, (int,)) and not isinstance(v, float) for v in shape)
             and all(1 <= v <= MAX_IMAGE_SIDE for v in shape[1:]))
    if not valid:
        raise ConfigError(f"Global.image_shape must be [3, H, W] with H and W from 1 to "
                          f"{MAX_IMAGE_SIDE}, got {shown(shape)}")


def resolve_class_num(config):
    """Decide the number of classes once: Arch.class_num, else Global.class_num (upstream
    PaddleClas configs set it there), else 1000; null means unset. Both keys then hold it,
    so the model, the label checks and Mixup read the same value."""
    arch = config.get("Arch")
    if arch is not None and not isinstance(arch, dict):
        raise ConfigError("Arch must be a mapping")
    from_arch = (arch or {}).get("class_num")
    from_global = config["Global"].get("class_num")
    for key, value in (("Arch.class_num", from_arch), ("Global.class_num", from_global)):
        if value is not None and (not is_instance(value, (int,)) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {shown(value)}")
        if value is not None and value > MAX_CLASSES:
            raise ConfigError(f"{key} must be at most {MAX_CLASSES}, got {shown(value)}")
    if from_arch is not None and from_global is not None and from_arch != from_global:
        raise ConfigError(f"Arch.class_num ({from_arch}) and Global.class_num ({from_global}) "
                          "differ: set one of them, or make them equal")
    class_num = from_arch or from_global or 1000
    config["Global"]["class_num"] = class_num
    if arch is not None:
        arch["class_num"] = class_num
    return class_num


def parse_args(argv=None, description=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="override a key, e.g. -o Global.epochs=3 (repeatable)")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks for configuration and input errors")
    return parser.parse_args(argv)


def class_num_of(config):
    """The number of classes, as `resolve_class_num` decided it when the config was read."""
    return config["Global"]["class_num"]
