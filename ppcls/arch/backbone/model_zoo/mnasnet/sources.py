"""Where a MnasNet's weights come from, and what follows from it.

`Global.pretrained_model` and `Arch.pretrained` name a local file or prefix, or an http(s)
URL; ppcls.weights.load_into reads it in any format and hands the tensors to the model's
`adapt_state_dict` hook, which comes here:
  - the source is read off the tensor names (`detect_source`): ours, timm's, torchvision's
    or the Paddle reproduction's; foreign names are renamed onto ours (converter.py);
  - the topology follows the weights: torchvision and timm trained the network without the
    reproduction's extra stem ReLU, the reproduction with it, and our checkpoints record it
    beside the weights. The stem ReLU has no parameters, so the model is switched to the
    weights' topology, with a log line; an `Arch.stem_relu` that the config sets explicitly
    and the weights contradict is an error;
  - the model remembers the weights' origin, so that evaluation, export and prediction use
    their source's own eval transform (`eval_transforms_of`, preprocess.py).
`Arch.pretrained: True / "torchvision" / "timm"` means the variant's published weights
(`published_weights`), downloaded with their record's digest and size.
"""

from typing import NamedTuple

import numpy as np

from ppcls.arch.backbone.model_zoo.mnasnet.converter import (detect_reproduction_layout,
                                                              rename_to_model)
from ppcls.arch.backbone.model_zoo.mnasnet.preprocess import eval_transform_ops
from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANTS, default_preprocess
from ppcls.utils import logger
from ppcls.utils.errors import WeightsError
from ppcls.weights import OURS, Download, is_url, load_into

# What each naming means for the stem ReLU: None when the file does not say (our own).
STEM_RELU_OF_SOURCE = {"torchvision": False, "timm": False}
# Arch.pretrained values that mean a variant's published weights (True: the first listed).
PUBLISHED_CHOICES = ("torchvision", "timm")


class WeightsOrigin(NamedTuple):
    """Kept on the model as `model.weights_origin` after loading: where its weights came
    from and how their source evaluated them (None: ours, the config's transforms apply)."""
    location: str
    source: str
    preprocess: object  # variants.Preprocess or None


def detect_source(state, where):
    """Which model wrote these tensor names: ours, timm's, torchvision's or the Paddle
    reproduction's (torchvision's names, with Paddle's [in, out] classifier)."""
    keys = set(state)
    if "stem.conv.weight" in keys:
        return OURS
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


def stem_relu_of(source, state, weights_file):
    """The stem ReLU the weights were trained with, or None when the file does not say."""
    if source == "reproduction":
        return bool(detect_reproduction_layout(state.keys())["shift"])
    if source == OURS:  # our checkpoints record it beside the weights
        return weights_file.recorded().get("stem_relu")
    return STEM_RELU_OF_SOURCE.get(source)


def follow_topology(model, wanted, source, location):
    """Switch `model`'s stem ReLU to `wanted` (None: keep it). An explicit `Arch.stem_relu`
    that disagrees is an error."""
    if wanted is None or wanted == model.stem_relu:
        return
    configured = model.configured_stem_relu
    if configured is not None:
        raise WeightsError(
            f"Arch.stem_relu is {configured} but {location} holds {source} weights, trained "
            f"{'with' if wanted else 'without'} the extra stem ReLU: remove Arch.stem_relu "
            f"(or set it {wanted})")
    logger.info("%s weights: using their topology, stem_relu=%s", source, wanted)
    model.set_stem_relu(wanted)


def source_preprocess(source, variant):
    """The eval transform the weights' source used for this variant (its record, else the
    source's usual one), or None for our own and the reproduction's weights."""
    recorded = [w.preprocess for w in (variant.weights if variant else ()) if w.source == source]
    return recorded[0] if recorded else default_preprocess(source)


def adapt(model, state, weights_file):
    """The model's adapt_state_dict hook (see network.MnasNet)."""
    source = detect_source(state, weights_file.path)
    follow_topology(model, stem_relu_of(source, state, weights_file), source,
                    weights_file.location)
    model.weights_origin = WeightsOrigin(weights_file.location, source,
                                         source_preprocess(source, model.variant))
    if source != OURS:
        state = rename_to_model(model, state, source, weights_file.path)
    left_out = set(model.left_out_keys())  # a features model has no classifier to load
    return {k: v for k, v in state.items() if k not in left_out}, source


def eval_transforms_of(origin, configured, where):
    """The model's eval_transforms hook (see network.MnasNet)."""
    if origin is None or origin.preprocess is None:
        return configured
    logger.info("%s weights: %s replaced by their source's eval transform %s", origin.source,
                where, origin.preprocess)
    return eval_transform_ops(origin.preprocess)


def published_weights(variant, choice=True):
    """The variant record's published checkpoint: the first listed for `choice` True, else
    the one from source `choice` ("torchvision" or "timm")."""
    offered = [w for w in variant.weights if choice is True or w.source == choice]
    if not offered:
        having = ", ".join(f"{v.name} ({'/'.join(w.source for w in v.weights)})"
                           for v in VARIANTS if v.weights)
        which = "published weights" if choice is True else f"{choice} weights"
        raise WeightsError(f"Arch.pretrained: {variant.name} has no {which}; variants that "
                           f"have them: {having}")
    return offered[0]


def _means_published(pretrained):
    return pretrained is True or pretrained in PUBLISHED_CHOICES


def pretrained_downloads(variant, pretrained):
    """The download `Arch.pretrained` needs: the published file (checked against its
    record's digest and size), a URL as given, or nothing."""
    if _means_published(pretrained):
        weights = published_weights(variant, pretrained)
        return [Download(weights.url, weights.sha256, weights.max_bytes)]
    if isinstance(pretrained, str) and is_url(pretrained):
        return [Download(pretrained)]
    return []


def load_arch_pretrained(model, variant, pretrained):
    """`Arch.pretrained`: True, "torchvision" or "timm" (the variant's published weights, the
    download checked against their digest), or a path or URL."""
    if _means_published(pretrained):
        weights = published_weights(variant, pretrained)
        logger.info("Arch.pretrained: %s's %s", weights.source, weights.name)
        return load_into(model, weights.url, sha256=weights.sha256, max_bytes=weights.max_bytes)
    return load_into(model, pretrained)
