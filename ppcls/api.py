"""ppcls's Python API for models, offered as `ppcls.list_models` and `ppcls.create_model`
(`ppcls.Predictor`, over an exported model, is ppcls/predictor.py's).

    import ppcls
    ppcls.list_models("MnasNet_A1*")                 # names create_model takes
    model = ppcls.create_model("MnasNet_B1_x1_0", pretrained=True)   # a classifier
    backbone = ppcls.create_model("MnasNet_B1_x1_0", pretrained=True, features_only=True)
    maps = backbone(images)                          # strides 4, 8, 16, 32
    backbone.feature_info.channels()                 # [24, 40, 96, 320]

Importing ppcls (and this module) loads no Paddle: list_models reads the model registry
only, create_model imports Paddle when it builds. Models are built as a config's `Arch`
section builds them (ppcls.arch), so a name, argument or weights file that a config would
refuse is refused here with the same one-line ConfigError or WeightsError.
"""

import fnmatch

__all__ = ["list_models", "create_model"]


def list_models(pattern=None):
    """The model names create_model (and a config's Arch.name) takes, sorted; `pattern`, a
    shell-style wildcard such as "MnasNet_B1*", keeps those it matches."""
    from ppcls.arch import available_models

    names = available_models()
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def create_model(name, pretrained=False, *, class_num=None, features_only=False,
                 out_indices=None, **arch_args):
    """Build model `name` (one of list_models()), in training mode: call `.eval()` to
    predict.

    pretrained: False (fresh weights); True, "torchvision" or "timm" (the variant's
        published weights, downloaded once into the cache and checked against their
        digest); or a path (a file or checkpoint prefix in any format ppcls reads) or an
        http(s) URL. As `Arch.pretrained` in a config.
    class_num: classifier outputs, 1000 when not given. Weights with a classifier of
        another width load all but the classifier, which stays freshly initialised.
    features_only: the backbone alone: no head convolution, pooling or classifier. Its
        forward returns a list of feature maps and `model.feature_info` describes them
        (channels(), reduction(), or one dict per map). A classifier's weights load into
        it, their head and classifier left aside.
    out_indices: which feature maps a features_only model returns, numbered as timm
        numbers them: 0-4 at strides 2, 4, 8, 16 and 32. Default (1, 2, 3, 4).
    arch_args: the model's other `Arch` keys, e.g. for MnasNet stem_relu, bn_momentum,
        bn_epsilon and (classifier only) dropout.
    """
    from ppcls.arch import build_features, build_model
    from ppcls.utils.errors import ConfigError

    if features_only:
        if class_num is not None:
            raise ConfigError("class_num: a features_only model has no classifier; leave "
                              "class_num out")
        return build_features(name, pretrained=pretrained, out_indices=out_indices,
                              **arch_args)
    if out_indices is not None:
        raise ConfigError("out_indices selects the feature maps of a backbone: add "
                          "features_only=True")
    arch = {"name": name, "pretrained": pretrained, **arch_args}
    if class_num is not None:
        arch["class_num"] = class_num
    return build_model({"Arch": arch})
