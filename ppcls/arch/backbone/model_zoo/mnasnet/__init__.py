"""MnasNet (Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
arXiv 1807.11626): the B1, A1 (squeeze-and-excitation) and small networks at any width,
and everything this repository knows about them, in one package:

    variants.py     one record per variant: names, stage table, width, the reference
                    networks it equals, their published accuracy and weights (standard
                    library only: importable without Paddle)
    network.py      the stage tables, the blocks, MnasNet and its hooks for the rest of
                    ppcls (adapt_state_dict, eval_transforms, checkpoint_record)
    sources.py      where weights come from: the source read off the tensor names, the
                    stem-ReLU topology they need, Arch.pretrained's published weights
    converter.py    torchvision / timm / reproduction tensor names -> ours
    preprocess.py   the eval transform each source scored its weights with

This module registers one builder per variant (below, read from the records). It imports
no Paddle: a builder imports the network when it is called, and `MnasNet` and the stage
tables are imported from network.py on first use.
"""

from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANT_BY_NAME, VARIANTS  # noqa: F401
from ppcls.arch.registry import register_model

# Names of network.py offered here, imported (with Paddle) when first asked for.
_NETWORK_NAMES = ("MnasNet", "ARCHITECTURES", "Stage", "scale_channels", "ConvBN",
                  "SqueezeExcite", "MnasBlock", "FeatureInfo", "DEFAULT_OUT_INDICES")


def __getattr__(name):
    if name in _NETWORK_NAMES:
        from ppcls.arch.backbone.model_zoo.mnasnet import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register(name):
    """Build and register the builder of the VARIANTS record `name`, under all its names.
    Its `features` attribute builds the backbone alone (ppcls.create_model's features_only):
    an API-only form, as a training config needs the classifier."""
    variant = VARIANT_BY_NAME[name]

    def build(pretrained, **network_args):
        from ppcls.arch.backbone.model_zoo.mnasnet.network import MnasNet

        model = MnasNet(arch=variant.arch, width=variant.width, **network_args)
        if pretrained:
            from ppcls.arch.backbone.model_zoo.mnasnet.sources import load_arch_pretrained

            load_arch_pretrained(model, variant, pretrained)
        return model

    def builder(pretrained=False, class_num=1000, stem_relu=None, dropout=0.2,
                bn_momentum=0.9, bn_epsilon=1e-5):
        """pretrained: True (the variant's published weights), "torchvision" or "timm" (that
        source's), or a path or URL. stem_relu: None means True unless the weights loaded
        say otherwise."""
        return build(pretrained, class_num=class_num, stem_relu=stem_relu, dropout=dropout,
                     bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)

    def features(pretrained=False, out_indices=None, stem_relu=None, bn_momentum=0.9,
                 bn_epsilon=1e-5):
        """The backbone without head and classifier: its forward returns the feature maps
        `out_indices` selects (network.MnasNet's features_only). pretrained as the
        builder's; a classifier's weights load, their head and classifier left aside."""
        return build(pretrained, features_only=True, out_indices=out_indices,
                     stem_relu=stem_relu, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)

    def downloads(pretrained=False, **_):
        """What `builder(pretrained=...)` will download (ppcls.weights.Download records),
        for the engine to fetch once per machine before any process builds the model."""
        from ppcls.arch.backbone.model_zoo.mnasnet.sources import pretrained_downloads

        return pretrained_downloads(variant, pretrained)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"MnasNet-{variant.arch} at width x{variant.width}."
    features.__name__ = features.__qualname__ = f"{name}.features"
    builder.variant = variant
    builder.downloads = downloads
    builder.features = features
    return register_model(*variant.names)(builder)


# Written out (not generated) so that editors and type checkers see every builder.
MnasNet_B1_x0_5 = _register("MnasNet_B1_x0_5")
MnasNet_B1_x0_75 = _register("MnasNet_B1_x0_75")
MnasNet_B1_x1_0 = _register("MnasNet_B1_x1_0")
MnasNet_B1_x1_3 = _register("MnasNet_B1_x1_3")
MnasNet_B1_x1_4 = _register("MnasNet_B1_x1_4")
MnasNet_A1_x0_5 = _register("MnasNet_A1_x0_5")
MnasNet_A1_x0_75 = _register("MnasNet_A1_x0_75")
MnasNet_A1_x1_0 = _register("MnasNet_A1_x1_0")
MnasNet_A1_x1_4 = _register("MnasNet_A1_x1_4")
MnasNet_small = _register("MnasNet_small")
