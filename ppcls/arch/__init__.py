"""Model construction from a PaddleClas-style config: `build_model(config)`.

Importing this package registers the models without importing Paddle (a builder imports
its network when called), so the registry and `check_arch` serve config checks and tools
that never build a model.

Besides being a paddle.nn.Layer, a registered model provides the hooks the rest of ppcls
calls (see the MnasNet package for one):
    adapt_state_dict(state, weights_file) -> (state, source)   ppcls.weights.load_into
    eval_transforms(configured_ops, where) -> ops               evaluation, export, infer
    checkpoint_record() -> dict                                 kept in checkpoints' .pdstates
and its builder may have `downloads(**arch_args)`: what `Arch.pretrained` will fetch, and
`features(**args)`: the backbone alone, returning feature maps (`build_features`, the API's
features_only; not a config key, since training needs the classifier).
"""

import copy
import inspect

import ppcls.arch.backbone  # noqa: F401  (registers the models)
from ppcls.arch.registry import available_models, get_model_builder
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, did_you_mean, unknown

__all__ = ["build_model", "build_features", "check_arch", "available_models",
           "pretrained_downloads"]


def check_arch(config):
    """(builder, its arguments, use_sync_bn) for the `Arch` section; ConfigError naming the
    key otherwise."""
    if "Arch" not in config or "name" not in (config["Arch"] or {}):
        raise ConfigError("config has no Arch.name; add e.g. 'Arch: {name: MnasNet_B1_x1_0}'")
    arch_config = copy.deepcopy(config["Arch"])
    name = arch_config.pop("name")
    use_sync_bn = arch_config.pop("use_sync_bn", False)
    builder = _builder_named(name, "Arch.name")
    check_arguments(builder, arch_config, name, prefix="Arch.")
    return builder, arch_config, use_sync_bn


def _builder_named(name, what):
    if name not in available_models():
        raise ConfigError(f"{what}: {unknown('model', name, available_models())}")
    return get_model_builder(name)


def check_arguments(function, arguments, owner, prefix=""):
    """ConfigError naming the first of `arguments` that `function` does not take."""
    accepted = list(inspect.signature(function).parameters)
    for key in arguments:
        if key not in accepted:
            raise ConfigError(f"{prefix}{key} is not an argument of {owner}"
                              f"{did_you_mean(key, accepted)}; allowed: {', '.join(accepted)}")


def build_model(config):
    """Build the network named by `config["Arch"]["name"]`, passing the other `Arch` keys
    as arguments. `use_sync_bn` converts BatchNorm to SyncBatchNorm on GPU only."""
    import paddle

    builder, arch_config, use_sync_bn = check_arch(config)
    model = builder(**arch_config)
    if use_sync_bn:
        if paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
            model = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("Arch.use_sync_bn is ignored: SyncBatchNorm needs GPUs")
    return model


def build_features(name, **arguments):
    """The backbone of model `name` alone: its forward returns feature maps, and it has
    `feature_info` (the builder's `features`, e.g. the MnasNet package's)."""
    builder = _builder_named(name, "model name")
    features = getattr(builder, "features", None)
    if features is None:
        raise ConfigError(f"{name} has no features_only form")
    check_arguments(features, arguments, f"{name} with features_only")
    return features(**arguments)


def pretrained_downloads(config):
    """The downloads (ppcls.weights.Download) the Arch section's own weights need
    (`Arch.pretrained`), as the model's builder names them; [] when it downloads nothing."""
    builder, arch_config, _ = check_arch(config)
    downloads = getattr(builder, "downloads", None)
    return list(downloads(**arch_config)) if downloads else []
