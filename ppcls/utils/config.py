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

A checkpoint knows its config: training keeps the resolved config as YAML text
(`stored_config_text`) in every checkpoint's .pdstates and in config.yaml beside them. A
tool run without -c (`tool_config`) reads it from the checkpoint its -o names and resolves
it as it would a file: the same reading, typing and checks, the overrides applied last.
"""

import argparse
import os

from ppcls.arch import check_arch
from ppcls.arch.registry import available_models, get_model_builder
from ppcls.data import check_dataloader
from ppcls.data.postprocess import POSTPROCESSES
from ppcls.data.preprocess import build_transforms
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.optimizer import check_optimizer
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown, unknown
from ppcls.utils.factory import check, split_spec
from ppcls.utils.schema import (GLOBAL, MAX_CLASSES, MAX_IMAGE_SIDE, TRAINING, check_numbers,
                                defaults, is_instance, read_sections)
from ppcls.utils.yaml_file import (YamlProblem, apply_override, dump_yaml, load_yaml,
                                   parse_override, yaml_load)
from ppcls.weights import stored_config

# The repository's configs that stand in for -c for weights carrying no config (a pip
# install has none: its users give -c).
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANT_CONFIG = "configs/ImageNet/MnasNet/{name}.yaml"  # the variant's ImageNet recipe
PREDICTION_CONFIG = "infer.yaml"  # one-command prediction with published weights
# A stored config is a few kB; a larger one is not kept in the checkpoints, whose .pdstates
# is read only up to 16 MiB (ppcls.weights.formats.MAX_STATES_BYTES).
MAX_STORED_CONFIG_BYTES = 1 << 20


def get_config(path, overrides=()):
    """Load `path`, apply the overrides in order, type the typed sections, then check every
    other section against what it builds: the one step from a config file to a config
    the tools can trust."""
    return resolve(load_yaml(path), path, overrides)


def resolve(document, source, overrides=()):
    """`document` (a config as YAML reads it, from `source`: a file, or the .pdstates of a
    checkpoint) with the overrides applied in order, typed and checked."""
    for text in overrides or ():
        apply_override(document, *parse_override(text))
    validate(document, source=source)
    try:
        check_sections(document)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return document


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


def parse_args(argv=None, description=None, config_from=None):
    """-c CONFIG, -o overrides, --debug. `config_from`: the Global key (pretrained_model,
    checkpoints) naming a checkpoint whose stored config stands in for -c (`tool_config`);
    without it -c is required."""
    parser = argparse.ArgumentParser(description=description)
    config_help = "YAML config file" if config_from is None else (
        f"YAML config file (default: the config stored in the checkpoint that "
        f"-o Global.{config_from}=... names)")
    parser.add_argument("-c", "--config", required=config_from is None, help=config_help)
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="override a key, e.g. -o Global.epochs=3 (repeatable)")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks for configuration and input errors")
    parser.set_defaults(config_from=config_from)
    return parser.parse_args(argv)


def tool_config(args, default=None):
    """The config a tool runs with; the -o overrides are applied last whichever it is:

        -c CONFIG                    the file (no checkpoint's stored config is read)
        no -c                        the config stored in the checkpoint that
                                     -o Global.<args.config_from> names (in its .pdstates)
        no -c, weights without one   (published weights, a URL, a checkpoint saved before
                                     checkpoints kept their config) the repository's config
                                     `default` names for -o Arch.name (VARIANT_CONFIG or
                                     PREDICTION_CONFIG); a tool without a default needs -c

    Anything else is one ConfigError saying what to give."""
    if args.config:
        return get_config(args.config, args.override)
    key = f"Global.{args.config_from}"
    given = {".".join(path): value for path, value in map(parse_override, args.override)}
    location = given.get(key)
    if not isinstance(location, str) or location in ("", "auto"):
        raise ConfigError(f"no config: give -c CONFIG, or -o {key}=<a checkpoint saved by "
                          "tools/train.py> to use the config stored in it")
    found = stored_config(location)
    if found is not None:
        text, source = found
        logger.info("config: the one stored in %s (-c CONFIG would replace it)", source)
        return resolve(without_starting_weights(_read_stored(text, source)), source,
                       args.override)
    if default is None:
        raise ConfigError(f"{location} carries no config (it is not a checkpoint saved by "
                          "tools/train.py, or one saved before checkpoints kept theirs): "
                          "give -c CONFIG")
    arch = given.get("Arch.name")
    if not isinstance(arch, str) or not arch:
        placeholder = default.format(name="<model>")
        raise ConfigError(f"{location} carries no config (published weights, or a checkpoint "
                          f"saved before checkpoints kept theirs): give -o Arch.name=<model> "
                          f"(e.g. MnasNet_B1_x1_0) to use {placeholder} for the rest, or "
                          "-c CONFIG")
    path = repository_config(default, arch)
    logger.info("config: %s for Arch.name %s (%s carries none; -c CONFIG would replace it)",
                os.path.relpath(path, REPOSITORY), arch, location)
    return get_config(path, args.override)


def without_starting_weights(document):
    """A stored config without the weights its training started from (Arch.pretrained,
    Global.pretrained_model): the checkpoint holds every weight and its topology, so
    fetching them again would be wasted, and fails offline or where the file is gone. The
    -o overrides, applied after, may set them again."""
    if isinstance(document, dict):
        if isinstance(document.get("Arch"), dict) and document["Arch"].get("pretrained"):
            document["Arch"]["pretrained"] = False
        if isinstance(document.get("Global"), dict):
            document["Global"]["pretrained_model"] = None
    return document


def _read_stored(text, source):
    if not isinstance(text, str):
        raise ConfigError(f"{source}: its stored config is a {type(text).__name__}, not YAML "
                          "text: give -c CONFIG")
    try:
        return yaml_load(text)
    except YamlProblem as problem:
        raise ConfigError(f"{source}: its stored config is {problem}") from None


def repository_config(template, arch_name):
    """The repository's config that `template` names for the model `arch_name` (another
    name of the same model finds its variant's)."""
    models = available_models()
    if arch_name not in models:
        raise unknown("Arch.name", arch_name, models)
    builder = get_model_builder(arch_name)
    for name in [arch_name] + [n for n in models if get_model_builder(n) is builder]:
        path = os.path.join(REPOSITORY, template.format(name=name))
        if os.path.isfile(path):
            return path
    raise ConfigError(f"no {template.format(name=arch_name)} in {REPOSITORY} for Arch.name "
                      f"{arch_name}: give -c CONFIG")


def stored_config_text(config):
    """The resolved `config` as the YAML text checkpoints keep (`tool_config` reads it back
    as a file); None, with a warning, when it is longer than MAX_STORED_CONFIG_BYTES."""
    text = dump_yaml(config)
    size = len(text.encode("utf-8"))
    if size > MAX_STORED_CONFIG_BYTES:
        logger.warning("the config is %.1f MiB as YAML, more than %d MiB: it is not kept in "
                       "the checkpoints (tools given them will need -c)", size / 2**20,
                       MAX_STORED_CONFIG_BYTES >> 20)
        return None
    return text


def class_num_of(config):
    """The number of classes, as `resolve_class_num` decided it when the config was read."""
    return config["Global"]["class_num"]
