"""Reading YAML (a config, a deploy config, an inference.yml) and PaddleClas's `-o
Key.sub.0.leaf=value` overrides: bounded, and every problem one ConfigError naming the file
or the override; and writing a config back (`dump_yaml`) so that it reads back the same.
What the values must be is ppcls/utils/schema.py's business."""

import os
import re

import yaml

from ppcls.utils.errors import ConfigError, shown

# A config, deploy config or inference.yml (an ImageNet-22k label list is 0.5 MB).
MAX_YAML_BYTES = 16 << 20
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


class _Dumper(yaml.SafeDumper):
    """Writes what _Loader reads back unchanged: a string _Loader would read as a number
    (`1e5`) is quoted, as PyYAML quotes one its own loader would read as a number. Lists of
    plain values on one line (`[3, 224, 224]`), everything else in blocks, as configs are
    written."""

    def represent_list(self, data):
        flat = not any(isinstance(item, (dict, list)) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


# `1e-3` without a dot, which YAML 1.1 leaves a string
_EXPONENT_FLOAT = ("tag:yaml.org,2002:float",
                   re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                   list("-+0123456789"))
_Loader.add_implicit_resolver(*_EXPONENT_FLOAT)
_Dumper.add_implicit_resolver(*_EXPONENT_FLOAT)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Dumper.add_representer(list, _Dumper.represent_list)


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


def dump_yaml(document):
    """`document` (plain values: what yaml_load returns) as YAML text that yaml_load reads
    back equal: key order kept, non-ASCII text as it is (write it as UTF-8)."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False)


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


def load_with_overrides(path, overrides=()):
    """The YAML file `path` with the overrides applied in order."""
    config = load_yaml(path)
    for text in overrides or ():
        apply_override(config, *parse_override(text))
    return config
