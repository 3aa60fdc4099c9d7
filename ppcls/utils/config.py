"""PaddleClas-style configuration: a YAML file plus `-o Key.sub.0.leaf=value` overrides.

Sections and the `Global`, `AMP` and `EMA` keys are checked here, before any work starts;
the other sections are checked by the builders that read them (`ppcls.utils.factory`).
"""

import argparse
import copy
import math
import os
import re

import yaml

from ppcls.utils.errors import ConfigError, shown, unknown

MAX_YAML_BYTES = 16 << 20  # a config, deploy config or inference.yml (an ImageNet-22k label list is 0.5 MB)
MAX_YAML_VALUES = 100_000  # values in a document once its aliases are written out
MAX_INTEGER_DIGITS = 100  # longer integers are refused while parsing (Python's limit is 4300)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; configs mean the number (PaddleClas accepts it).
    Integers too long to be a setting are refused before Python converts them."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        count = sum(c.isalnum() for c in text)  # hexadecimal and 0x prefixes count too
        if count > MAX_INTEGER_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {count} digits is too long", node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


class YamlProblem(ConfigError):
    """Why a YAML text cannot be used, phrased to follow "is" (the caller names the text)."""


def _expanded_size(value, sizes):
    """How many values `value` holds with every alias written out. An alias is the object
    it names, so each distinct list or mapping is counted once: counting a billion laughs
    costs what parsing it did."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in sizes:
        if sizes[key] is None:
            raise YamlProblem("not usable: an alias refers to a list or mapping that contains it")
        return sizes[key]
    sizes[key] = None  # being counted: meeting it again inside means it contains itself
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    sizes[key] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[key]


def yaml_load(text):
    """Parse YAML (a str, or bytes in UTF-8, or UTF-16 with a byte-order mark). Raises a
    one-line YamlProblem for invalid YAML (with line and column), nesting too deep,
    integers too long, and aliases that would expand past MAX_YAML_VALUES (the values a
    user or an error message would otherwise walk)."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise YamlProblem(f"not valid YAML ({_one_line(err)})") from None
    except RecursionError:
        raise YamlProblem("nested too deeply to be a config") from None
    size = _expanded_size(value, {})
    if size > MAX_YAML_VALUES:
        raise YamlProblem(f"too large once its YAML aliases are written out (more than "
                          f"{MAX_YAML_VALUES} values): write the values out, or use fewer aliases")
    return value


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
            "Global.keep_checkpoint_max": 0, "Global.global_batch_size": 1, "Global.seed": 0}
# Largest allowed value of integer keys; the others are at most INT32_MAX (what Paddle's
# integer attributes hold). A million epochs is far past any schedule, and keeps
# epochs x iterations x seconds within what the ETA and the schedules compute with.
INT32_MAX = 2**31 - 1
MAXIMUMS = {"Global.epochs": 1_000_000, "Global.seed": 2**32 - 1, "class_num": 1_000_000}
MAX_IMAGE_SIDE = 4096  # of Global.image_shape: the export's input and infer.py's resize target
INT64_LIMIT = 2**63  # no integer of a config may reach it (Paddle and numpy would overflow)


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
    """A YAML error on one line (its own text spans several, with a caret diagram); a text
    that is not UTF-8 is named by its byte position."""
    if isinstance(err, yaml.reader.ReaderError) and isinstance(err.character, int):
        return (f"byte {err.position} is not UTF-8 (nor UTF-16 with a byte-order mark): re-save "
                "the file as UTF-8")
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    return where + (problem if len(problem) <= 160 else problem[:160] + "...")


def parse_override(text):
    """'Global.epochs=3' -> (['Global', 'epochs'], 3). Values are YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} must look like Key.sub.leaf=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {shown(text)}: empty key component in {shown(key)}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except YamlProblem as problem:
        raise ConfigError(f"override {shown(text)}: value {shown(raw)} is {problem}") from None
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
                                  f"got {shown(value)}")
            check_range(f"{section}.{key}", value, source)
        config[section] = {k: values.get(k, copy.deepcopy(d)) for k, (_, d) in schema.items()}
    config.setdefault("Global", {k: copy.deepcopy(d) for k, (_, d) in GLOBAL_SCHEMA.items()})
    check_image_shape(config["Global"]["image_shape"], source)
    check_numbers(config, source)
    resolve_class_num(config, source)
    return config


def check_range(name, value, source):
    """A number of a typed section within MINIMUMS and MAXIMUMS (INT32_MAX for integers)."""
    if value is None or isinstance(value, (bool, str)):
        return
    least = MINIMUMS.get(name)
    most = MAXIMUMS.get(name, INT32_MAX if isinstance(value, int) else None)
    if least is not None and value < least:
        raise ConfigError(f"{source}: {name} must be at least {least}, got {shown(value)}")
    if most is not None and value > most:
        raise ConfigError(f"{source}: {name} must be at most {most}, got {shown(value)}")


def check_image_shape(shape, source):
    """[3, H, W]: the models take 3 channels, and H and W size the export's input and every
    image tools/infer.py resizes to them."""
    valid = (isinstance(shape, list) and len(shape) == 3 and shape[0] == 3
             and all(is_instance(v, (int,)) and not isinstance(v, float) for v in shape)
             and all(1 <= v <= MAX_IMAGE_SIDE for v in shape[1:]))
    if not valid:
        raise ConfigError(f"{source}: Global.image_shape must be [3, H, W] with H and W from 1 to "
                          f"{MAX_IMAGE_SIDE}, got {shown(shape)}")


def check_numbers(value, source, path=""):
    """No number anywhere in a config is infinite, NaN, or an integer past int64: each would
    make a wrong answer or a traceback far from the key that caused it."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_numbers(item, source, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(item, source, f"{path}.{index}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {_cut(path)} must be a finite number, got {shown(value)}")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT64_LIMIT:
        raise ConfigError(f"{source}: {_cut(path)}: {shown(value)} is too large")


def _cut(key_path, limit=120):
    return key_path if len(key_path) <= limit else key_path[:limit] + "..."


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
            raise ConfigError(f"{source}: {key} must be a positive integer, got {shown(value)}")
        if value is not None and value > MAXIMUMS["class_num"]:
            raise ConfigError(f"{source}: {key} must be at most {MAXIMUMS['class_num']}, got "
                              f"{shown(value)}")
    if from_arch is not None and from_global is not None and from_arch != from_global:
        raise ConfigError(f"{source}: Arch.class_num ({from_arch}) and Global.class_num "
                          f"({from_global}) differ: set one of them, or make them equal")
    class_num = from_arch or from_global or 1000
    config["Global"]["class_num"] = class_num
    if arch is not None:
        arch["class_num"] = class_num
    return class_num


def load_yaml(path):
    """A YAML file (a config, a deploy config, an inference.yml) as Python values; every
    problem is one ConfigError naming the file. At most MAX_YAML_BYTES are read."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        size = os.path.getsize(path)
        raise ConfigError(f"{path} is {size / 2**20:.1f} MiB: a config or inference.yml is at most "
                          f"{MAX_YAML_BYTES >> 20} MiB")
    try:
        return yaml_load(data) or {}
    except YamlProblem as problem:
        raise ConfigError(f"{path}: {problem}") from None


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
