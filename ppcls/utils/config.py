"""PaddleClas-style configuration: a YAML file plus `-o Key.sub.0.leaf=value` overrides.

Sections and the `Global`, `AMP` and `EMA` keys are checked here, before any work starts;
the other sections are checked by the builders that read them (`ppcls.utils.factory`).
"""

import argparse
import copy
import os
import re

import yaml

from ppcls.utils.errors import ConfigError, unknown

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; configs mean the number (PaddleClas accepts it)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_load(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)


SECTIONS = ("Global", "AMP", "EMA", "Arch", "Loss", "Optimizer", "DataLoader", "Infer",
            "Metric")

NoneType = type(None)
# key: (allowed types, default). Defaults are what a config that omits the key gets.
GLOBAL_SCHEMA = {
    # A checkpoint prefix to resume from, or `auto`: <output_dir>/<Arch.name>/latest when it
    # exists, else a fresh start (for launch --max_restart and job schedulers that rerun
    # the same command).
    "checkpoints": ((str, NoneType), None),
    "pretrained_model": ((str, NoneType), None),
    "output_dir": ((str,), "./output/"),
    "device": ((str,), "gpu"),
    "class_num": ((int, NoneType), None),
    "save_interval": ((int,), 1),
    # How many epoch_N checkpoints to keep, newest first (latest and best_model are always
    # kept); 0 keeps them all.
    "keep_checkpoint_max": ((int,), 5),
    # The global batch (processes x DataLoader.Train.sampler.batch_size) the learning rate
    # is tuned for; a run with another global batch warns once how to scale it.
    "global_batch_size": ((int, NoneType), None),
    # Also write `latest` every this many iterations inside an epoch (0: epoch ends only).
    "save_latest_steps": ((int,), 1000),
    "eval_during_train": ((bool,), True),
    "eval_interval": ((int,), 1),
    "start_eval_epoch": ((int,), 0),
    "epochs": ((int,), 1),
    "print_batch_step": ((int,), 10),
    "use_visualdl": ((bool,), False),
    "image_shape": ((list,), [3, 224, 224]),
    "save_inference_dir": ((str,), "./inference"),
    "to_static": ((bool,), False),
    "seed": ((int, NoneType), None),
    # Upstream keys accepted with the value implemented here (others refused in checks.py).
    "use_dali": ((bool,), False),
    "eval_mode": ((str,), "classification"),
    "use_multilabel": ((bool,), False),
    # TIPC's AMP switch on upstream command lines: null here; other values warn (ppcls/checks.py).
    "auto_cast": ((str, bool, NoneType), None),
}
AMP_SCHEMA = {
    "use_amp": ((bool,), True),
    "scale_loss": ((int, float), 65536.0),
    "use_dynamic_loss_scaling": ((bool,), True),
    "use_promote": ((bool,), False),
    "level": ((str,), "O1"),
    "use_fp16_test": ((bool,), False),
}
EMA_SCHEMA = {
    "decay": ((float, int), 0.9999),
}
SCHEMAS = {"Global": GLOBAL_SCHEMA, "AMP": AMP_SCHEMA, "EMA": EMA_SCHEMA}
# Smallest allowed value of numeric keys.
MINIMUMS = {"Global.epochs": 1, "Global.save_interval": 1, "Global.eval_interval": 1,
            "Global.print_batch_step": 1, "Global.save_latest_steps": 0,
            "Global.keep_checkpoint_max": 0, "Global.global_batch_size": 1}


def type_names(types):
    return " or ".join("null" if t is NoneType else t.__name__ for t in types)


def is_instance(value, types):
    """isinstance, except that bool is not an int and an int is a valid float."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _one_line(err):
    """A YAML error on one line (its own text spans several, with a caret diagram)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + str(getattr(err, "problem", None) or err).strip()


def parse_override(text):
    """'Global.epochs=3' -> (['Global', 'epochs'], 3). Values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like Key.sub.leaf=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key component in {key!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML "
                          f"({_one_line(err)})") from None
    return path, value


def apply_override(config, path, value):
    """Set config[path] = value; numeric components index lists. Creates missing dict keys
    (validation afterwards rejects unknown ones)."""
    node = config
    for depth, component in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not component.isdigit() or int(component) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: {where} is not an index of a "
                                  f"list of {len(node)} items")
            component = int(component)
        elif not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:depth])} is a "
                              f"{type(node).__name__}, not a section")
        if last:
            node[component] = value
        else:
            if isinstance(node, dict) and node.get(component) is None:
                node[component] = {}
            node = node[component]
    return config


def validate(config, source="config"):
    """Check sections and the typed sections' keys; fill their defaults. Raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    for section in config:
        if section not in SECTIONS:
            raise ConfigError(f"{source}: {unknown('section', section, SECTIONS)}")
    for section, schema in SCHEMAS.items():
        if section not in config:
            continue
        values = config[section] or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a mapping")
        for key, value in values.items():
            if key not in schema:
                raise ConfigError(f"{source}: {section}: {unknown('key', key, list(schema))}")
            types = schema[key][0]
            if not is_instance(value, types):
                raise ConfigError(f"{source}: {section}.{key} must be {type_names(types)}, "
                                  f"got {value!r}")
            least = MINIMUMS.get(f"{section}.{key}")
            if least is not None and value is not None and value < least:
                raise ConfigError(f"{source}: {section}.{key} must be at least {least}, "
                                  f"got {value!r}")
        config[section] = {k: values.get(k, copy.deepcopy(d)) for k, (_, d) in schema.items()}
    config.setdefault("Global", {k: copy.deepcopy(d) for k, (_, d) in GLOBAL_SCHEMA.items()})
    resolve_class_num(config, source)
    return config


def resolve_class_num(config, source="config"):
    """Decide the number of classes once: Arch.class_num, else Global.class_num (upstream
    PaddleClas configs set it there), else 1000; null means unset. Both keys then hold it,
    so the model, the label checks and Mixup read the same value."""
    arch = config.get("Arch")
    if arch is not None and not isinstance(arch, dict):
        raise ConfigError(f"{source}: Arch must be a mapping")
    from_arch = (arch or {}).get("class_num")
    from_global = config["Global"].get("class_num")
    for key, value in (("Arch.class_num", from_arch), ("Global.class_num", from_global)):
        if value is not None and (not is_instance(value, (int,)) or value < 1):
            raise ConfigError(f"{source}: {key} must be a positive integer, got {value!r}")
    if from_arch is not None and from_global is not None and from_arch != from_global:
        raise ConfigError(f"{source}: Arch.class_num ({from_arch}) and Global.class_num "
                          f"({from_global}) differ: set one of them, or make them equal")
    class_num = from_arch or from_global or 1000
    config["Global"]["class_num"] = class_num
    if arch is not None:
        arch["class_num"] = class_num
    return class_num


def load_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            return yaml_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None


def get_config(path, overrides=()):
    """Load `path`, apply overrides in order, validate the typed sections, then check every
    other section against what it builds (`ppcls.checks`): the one step from a config file
    to a config the tools can trust."""
    from ppcls.checks import check_config  # it imports the builders, which import this

    config = load_yaml(path)
    for text in overrides or ():
        apply_override(config, *parse_override(text))
    return check_config(validate(config, source=path), path)


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
