"""Pretrained weights from anywhere, into any of our MnasNet models.

`Global.pretrained_model` and `Arch.pretrained` name a local file or prefix, or an http(s)
URL (downloaded once into the cache, see download.py). The file may be one of ours, the Paddle
reproduction's, torchvision's, timm's or an `.npz`; its format is read off its content
(converter.read_checkpoint) and its naming off its keys (`detect_source`), and foreign
weights are renamed onto our tensors by the one converter.

The topology follows the weights: torchvision and timm trained the network without the
reproduction's extra stem ReLU, the reproduction with it. The stem ReLU has no parameters,
so the model is switched to the weights' topology when they are loaded, with a log line;
an `Arch.stem_relu` that the config sets explicitly and the weights contradict is an error.
"""

import os
from typing import NamedTuple

import numpy as np

from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.weights.loading import (PARAMS_SUFFIX, check_compatible, resolve_params_path,
                                   strip_params_suffix)

# What each naming means for the stem ReLU: None when the file does not say (our own).
STEM_RELU_OF_SOURCE = {"torchvision": False, "timm": False}


class Pretrained(NamedTuple):
    location: str  # what the config gave: a path, a prefix or a URL
    path: str  # the local file read
    state: dict  # tensor name -> numpy array, in the file's own naming
    source: str  # "ppcls" (ours), "reproduction", "torchvision" or "timm"


class WeightsOrigin(NamedTuple):
    """Kept on the model as `model.weights_origin` after loading: where its weights came
    from and how their source evaluated them (None: ours, the config's transforms apply)."""
    location: str
    source: str
    preprocess: object  # mnasnet_variants.Preprocess or None


def is_url(location):
    return str(location).startswith(("http://", "https://"))


def local_file(location, sha256=None, max_bytes=None):
    """The local file for a path, a prefix (`.pdparams` added) or a URL (downloaded)."""
    location = str(location)
    if is_url(location):
        from ppcls.weights.download import fetch

        return str(fetch(location, sha256=sha256, max_bytes=max_bytes))
    return location if os.path.isfile(location) else resolve_params_path(location)


def detect_source(state, where):
    """Which model wrote these tensor names: ours, timm's, torchvision's or the Paddle
    reproduction's (torchvision's names, with Paddle's [in, out] classifier)."""
    keys = set(state)
    if "stem.conv.weight" in keys:
        return "ppcls"
    if "conv_stem.weight" in keys:
        return "timm"
    if "layers.0.weight" in keys:
        classifier, head = state.get("classifier.1.weight"), state.get("layers.14.weight")
        if (classifier is not None and head is not None
                and np.shape(classifier)[1] == np.shape(head)[0]):
            return "torchvision"  # PyTorch's Linear weight is [out, in]
        return "reproduction"  # Paddle's Linear is [in, out]; its extra ReLU shifts layers
    raise WeightsError(f"{where} holds no MnasNet weights this repository knows (neither ours "
                       "nor torchvision's, timm's or the Paddle reproduction's tensor names; "
                       f"first keys: {', '.join(sorted(keys)[:3])})")


def read_pretrained(location, sha256=None, max_bytes=None):
    from ppcls.weights.converter import read_checkpoint

    path = local_file(location, sha256, max_bytes)
    state = read_checkpoint(path)
    return Pretrained(str(location), path, state, detect_source(state, path))


def stem_relu_of(pretrained):
    """The stem ReLU the weights were trained with, or None when the file does not say."""
    if pretrained.source == "reproduction":
        from ppcls.weights.converter import detect_reproduction_layout

        return bool(detect_reproduction_layout(pretrained.state.keys())["shift"])
    if pretrained.source == "ppcls":  # our checkpoints record it beside the weights
        states = os.path.splitext(pretrained.path)[0] + ".pdstates"
        if os.path.isfile(states):
            from ppcls.weights.checkpoint import read_states

            return read_states(os.path.splitext(pretrained.path)[0]).get("stem_relu")
    return STEM_RELU_OF_SOURCE.get(pretrained.source)


def follow_topology(model, pretrained, configured_stem_relu):
    """Switch `model`'s stem ReLU to what the weights were trained with. An explicit
    `Arch.stem_relu` (`configured_stem_relu` not None) that disagrees is an error."""
    wanted = stem_relu_of(pretrained)
    if wanted is None or wanted == model.stem_relu:
        return
    if configured_stem_relu is not None:
        raise WeightsError(
            f"Arch.stem_relu is {configured_stem_relu} but {pretrained.location} holds "
            f"{pretrained.source} weights, trained {'with' if wanted else 'without'} the extra "
            f"stem ReLU: remove Arch.stem_relu (or set it {wanted})")
    logger.info("%s weights: using their topology, stem_relu=%s", pretrained.source, wanted)
    model.set_stem_relu(wanted)


def to_our_names(model, pretrained):
    """The weights renamed onto `model`'s tensors (ours are returned as they are)."""
    if pretrained.source == "ppcls":
        return pretrained.state
    from ppcls.weights.converter import rename_to_model

    return rename_to_model(model, pretrained.state, pretrained.source, pretrained.path)


def source_preprocess(source, variant_name):
    """The eval transform the weights' source used for this variant (its record, else the
    source's usual one), or None for our own and the reproduction's weights."""
    from ppcls.arch.backbone.model_zoo.mnasnet_variants import (VARIANT_BY_NAME,
                                                                 default_preprocess)

    variant = VARIANT_BY_NAME.get(variant_name)
    recorded = [w.preprocess for w in (variant.weights if variant else ()) if w.source == source]
    return recorded[0] if recorded else default_preprocess(source)


def load_pretrained_weights(model, location, configured_stem_relu=None, sha256=None,
                            skip_mismatched_classifier=True, max_bytes=None):
    """Read, convert and load weights from `location` into `model`. A classifier of another
    class_num stays freshly initialised, with a log line, unless told otherwise. `sha256`
    and `max_bytes` check a download (see download.fetch)."""
    pretrained = read_pretrained(location, sha256, max_bytes)
    follow_topology(model, pretrained, configured_stem_relu)
    state = to_our_names(model, pretrained)
    skip = ("fc.",) if skip_mismatched_classifier else ()
    model.set_state_dict(check_compatible(model, state, pretrained.path, skip_prefixes=skip))
    logger.info("loaded %s weights from %s", pretrained.source, pretrained.path)
    model.weights_origin = WeightsOrigin(pretrained.location, pretrained.source,
                                         source_preprocess(pretrained.source,
                                                           getattr(model, "variant_name", None)))
    return pretrained


def published_weights(variant, choice=True):
    """The variant record's published checkpoint: the first listed for `choice` True, else
    the one from source `choice` ("torchvision" or "timm")."""
    from ppcls.arch.backbone.model_zoo.mnasnet_variants import VARIANTS

    offered = [w for w in variant.weights if choice is True or w.source == choice]
    if not offered:
        having = ", ".join(f"{v.name} ({'/'.join(w.source for w in v.weights)})"
                           for v in VARIANTS if v.weights)
        which = "published weights" if choice is True else f"{choice} weights"
        raise WeightsError(f"Arch.pretrained: {variant.name} has no {which}; variants that "
                           f"have them: {having}")
    return offered[0]


def load_arch_pretrained(model, variant, pretrained, configured_stem_relu=None):
    """`Arch.pretrained`: True, "torchvision" or "timm" (the variant's published weights, the
    download checked against their digest), or a path or URL."""
    if pretrained is True or pretrained in ("torchvision", "timm"):
        weights = published_weights(variant, pretrained)
        logger.info("Arch.pretrained: %s's %s", weights.source, weights.name)
        return load_pretrained_weights(model, weights.url, configured_stem_relu,
                                       sha256=weights.sha256, max_bytes=weights.max_bytes)
    return load_pretrained_weights(model, pretrained, configured_stem_relu)


def load_weights(model, location, prefer_ema=False, configured_stem_relu=None):
    """Weights for evaluation, export and inference, all tensors required: for one of our
    checkpoints, its EMA copy (`.pdema`) when the config has EMA and it was saved; else the
    file itself. Returns "EMA" or "model"."""
    prefix = strip_params_suffix(location)
    if prefer_ema and not is_url(location) and os.path.isfile(prefix + PARAMS_SUFFIX):
        if os.path.isfile(prefix + ".pdema"):
            load_pretrained_weights(model, prefix + ".pdema", configured_stem_relu,
                                    skip_mismatched_classifier=False)
            return "EMA"
        logger.warning("EMA is configured but %s.pdema does not exist: using the model "
                       "weights", prefix)
    load_pretrained_weights(model, location, configured_stem_relu,
                            skip_mismatched_classifier=False)
    return "model"


def eval_transform_ops_for(model, configured, where):
    """The transform ops to evaluate or predict `model` with: for torchvision or timm weights
    their source's eval transform (so the published accuracy is reproduced), else the
    config's `configured` ops."""
    origin = getattr(model, "weights_origin", None)
    if origin is None or origin.preprocess is None:
        return configured
    from ppcls.data.preprocess.source_transforms import eval_transform_ops

    logger.info("%s weights: %s replaced by their source's eval transform %s", origin.source,
                where, origin.preprocess)
    return eval_transform_ops(origin.preprocess)


def urls_to_fetch(config):
    """(url, sha256, max_bytes) of every download the config's weights need:
    Global.pretrained_model and Arch.pretrained given as URLs, and Arch.pretrained
    True/"torchvision"/"timm" (checked against their record's digest and size)."""
    from ppcls.arch.backbone.model_zoo.mnasnet_variants import VARIANT_BY_NAME

    urls = []
    location = config["Global"].get("pretrained_model")
    if location and is_url(location):
        urls.append((str(location), None, None))
    arch = config["Arch"]
    pretrained = arch.get("pretrained")
    if pretrained is True or pretrained in ("torchvision", "timm"):
        weights = published_weights(VARIANT_BY_NAME[arch["name"]], pretrained)
        urls.append((weights.url, weights.sha256, weights.max_bytes))
    elif isinstance(pretrained, str) and is_url(pretrained):
        urls.append((pretrained, None, None))
    return urls
