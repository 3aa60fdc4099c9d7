"""Model construction from a PaddleClas-style config: `build_model(config)`."""

import copy
import inspect

import paddle

import ppcls.arch.backbone  # noqa: F401  (registers the models)
from ppcls.arch.registry import available_models, get_model_builder
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, did_you_mean, unknown

__all__ = ["build_model", "check_arch", "available_models"]


def check_arch(config):
    """(builder, its arguments, use_sync_bn) for the `Arch` section; ConfigError naming the
    key otherwise."""
    if "Arch" not in config or "name" not in (config["Arch"] or {}):
        raise ConfigError("config has no Arch.name; add e.g. 'Arch: {name: MnasNet_B1_x1_0}'")
    arch_config = copy.deepcopy(config["Arch"])
    name = arch_config.pop("name")
    use_sync_bn = arch_config.pop("use_sync_bn", False)
    if name not in available_models():
        raise ConfigError(f"Arch.name: {unknown('model', name, available_models())}")
    builder = get_model_builder(name)
    accepted = list(inspect.signature(builder).parameters)
    for key in arch_config:
        if key not in accepted:
            raise ConfigError(f"Arch.{key} is not an argument of {name}"
                              f"{did_you_mean(key, accepted)}; allowed: {', '.join(accepted)}")
    return builder, arch_config, use_sync_bn


def build_model(config):
    """Build the network named by `config["Arch"]["name"]`, passing the other `Arch` keys
    as arguments. `use_sync_bn` converts BatchNorm to SyncBatchNorm on GPU only."""
    builder, arch_config, use_sync_bn = check_arch(config)
    model = builder(**arch_config)
    if use_sync_bn:
        if paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
            model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("Arch.use_sync_bn is ignored: SyncBatchNorm needs GPUs")
    return model
