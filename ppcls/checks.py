"""Every section of a config checked against what it builds, before any work starts.

`ppcls.utils.config.get_config` runs `check_config` after reading the YAML, applying the
overrides and checking the typed sections (Global, AMP, EMA); each entry is checked by the
same rules as when it is built (`ppcls.utils.factory.check`: known names and arguments with
a did-you-mean, value types), and the cheap components (schedules, image and batch
operators, losses, metrics) are built once so that their own range checks run too. Every
message starts with the config file. PaddleClas keys asking for something not implemented
here are refused by name; none is silently ignored.
"""

from ppcls.arch import check_arch
from ppcls.data import BATCH_OPS, DATASETS, LOADER_KEYS
from ppcls.data.preprocess import build_transforms
from ppcls.data.postprocess import POSTPROCESSES
from ppcls.data.sampler import SAMPLERS
from ppcls.loss import build_loss
from ppcls.metric import build_metrics
from ppcls.optimizer import check_optimizer
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, shown, unknown
from ppcls.utils.factory import check, create_list, split_spec

INFER_KEYS = ("infer_imgs", "batch_size", "transforms", "PostProcess", "save_path")
# Global keys of upstream configs, with the only value this repository implements.
UPSTREAM_GLOBAL = {
    "use_dali": (False, "NVIDIA DALI is not implemented here: remove it or set it False"),
    "eval_mode": ("classification", "only classification is implemented"),
    "use_multilabel": (False, "multi-label training is not implemented"),
}


def check_config(config, source):
    try:
        _check_global(config["Global"])
        check_arch(config)
        for mode in ("Train", "Eval"):
            build_loss(config, mode)
            build_metrics(config, mode)
            _check_loader(config, mode)
        if config.get("Optimizer") is not None:  # required only by training, which says so
            check_optimizer(config, config["Global"]["epochs"])
        _check_infer(config.get("Infer"))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def _check_global(values):
    for key, (supported, why) in UPSTREAM_GLOBAL.items():
        if values.get(key, supported) != supported:
            raise ConfigError(f"Global.{key}: {shown(values[key])} is not supported ({why})")
    if values.get("auto_cast") not in (None, "null"):
        logger.warning("Global.auto_cast=%s has no effect here (TIPC's switch, which the chain "
                       "script turns into AMP keys): set AMP.use_amp and AMP.level to train "
                       "with AMP", values["auto_cast"])


def _check_loader(config, mode):
    where = f"DataLoader.{mode}"
    section = (config.get("DataLoader") or {}).get(mode)
    if not section:
        return  # required only where it is used, which says so
    for key in section:
        if key not in ("dataset", "sampler", "loader"):
            raise ConfigError(f"{where}: {unknown('key', key, ['dataset', 'sampler', 'loader'])}")
    dataset = dict(section.get("dataset") or {})
    name, args = split_spec(dataset, f"{where}.dataset")
    batch_specs = args.pop("batch_transform_ops", None)
    check(DATASETS, name, args, f"{where}.dataset", kind="dataset")
    build_transforms(args.get("transform_ops"), f"{where}.dataset.transform_ops")
    create_list(BATCH_OPS, batch_specs, f"{where}.dataset.batch_transform_ops",
                kind="batch operator", injected={"class_num": config["Global"]["class_num"]})
    sampler_name, sampler_args = split_spec(section.get("sampler") or {}, f"{where}.sampler")
    check(SAMPLERS, sampler_name, sampler_args, f"{where}.sampler", kind="sampler",
          injected=("dataset", "seed", "pad"))
    for key in section.get("loader") or {}:
        if key not in LOADER_KEYS:
            raise ConfigError(f"{where}.loader: {unknown('key', key, LOADER_KEYS)}")


def _check_infer(infer):
    if not infer:
        return
    for key in infer:
        if key not in INFER_KEYS:
            raise ConfigError(f"Infer: {unknown('key', key, INFER_KEYS)}")
    build_transforms(infer.get("transforms"), "Infer.transforms")
    if infer.get("PostProcess"):
        name, args = split_spec(infer["PostProcess"], "Infer.PostProcess")
        check(POSTPROCESSES, name, args, "Infer.PostProcess", kind="post-process")
