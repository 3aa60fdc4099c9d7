"""The MnasNet network: the stage tables, the blocks and the classifier built from them.

Every variant is one stage table plus a width multiplier. The topology matches torchvision's
`MNASNet` (B1, version 2 stem that scales with width) and timm's `mnasnet_*` / `semnasnet_*` /
`mnasnet_small` exactly when `stem_relu=False`, so their weights convert one-to-one
(converter.py). `stem_relu=True` (the default) adds the Paddle reproduction's extra ReLU
after the first block's 1x1 projection BatchNorm.

The model's hooks for the rest of ppcls (the weights it reads, the eval transform they
need, what a checkpoint records about it) hand over to sources.py.
"""

import math
from collections import namedtuple

import paddle.nn as nn

from ppcls.arch.backbone.model_zoo.mnasnet.sources import adapt, eval_transforms_of
from ppcls.arch.backbone.model_zoo.mnasnet.variants import variant_of
from ppcls.ops.depthwise_conv import DepthwiseConv2D
from ppcls.ops.sigmoid import sigmoid
from ppcls.utils.errors import ConfigError, shown

# One row per stage. block: "ds" = depthwise separable (dw -> [SE] -> pw-linear),
# "ir" = inverted residual (pw-expand -> dw -> [SE] -> pw-linear). se: SE ratio relative to
# the block's input channels (0 = no SE). skip: whether an identity shortcut is allowed
# (it is used only when stride is 1 and channels are unchanged).
Stage = namedtuple("Stage", "block repeats kernel stride expand channels se skip")

# fmt: off
ARCHITECTURES = {
    "B1": dict(stem=32, head=1280, stages=[
        Stage("ds", 1, 3, 1, 1, 16, 0, False),
        Stage("ir", 3, 3, 2, 3, 24, 0, True),
        Stage("ir", 3, 5, 2, 3, 40, 0, True),
        Stage("ir", 3, 5, 2, 6, 80, 0, True),
        Stage("ir", 2, 3, 1, 6, 96, 0, True),
        Stage("ir", 4, 5, 2, 6, 192, 0, True),
        Stage("ir", 1, 3, 1, 6, 320, 0, True),
    ]),
    "A1": dict(stem=32, head=1280, stages=[
        Stage("ds", 1, 3, 1, 1, 16, 0, False),
        Stage("ir", 2, 3, 2, 6, 24, 0, True),
        Stage("ir", 3, 5, 2, 3, 40, 0.25, True),
        Stage("ir", 4, 3, 2, 6, 80, 0, True),
        Stage("ir", 2, 3, 1, 6, 112, 0.25, True),
        Stage("ir", 3, 5, 2, 6, 160, 0.25, True),
        Stage("ir", 1, 3, 1, 6, 320, 0, True),
    ]),
    "small": dict(stem=8, head=1280, stages=[
        Stage("ds", 1, 3, 1, 1, 8, 0, True),
        Stage("ir", 1, 3, 2, 3, 16, 0, True),
        Stage("ir", 2, 3, 2, 6, 16, 0, True),
        Stage("ir", 4, 5, 2, 6, 32, 0.25, True),
        Stage("ir", 3, 3, 1, 6, 32, 0.25, True),
        Stage("ir", 3, 5, 2, 6, 88, 0.25, True),
        Stage("ir", 1, 3, 1, 6, 144, 0, True),
    ]),
}
# fmt: on

# A features model (features_only) returns, as timm's does for its MnasNets (feature_location
# "bottleneck"), the output of each stage after which the resolution halves, and of the last
# stage: five maps at strides 2, 4, 8, 16 and 32 for every variant. out_indices numbers them
# 0-4 as timm does; by default the four at strides 4 to 32 (timm's default adds stride 2).
# (timm would also take the stem when the first stage has a stride; no MnasNet's has.)
DEFAULT_OUT_INDICES = (1, 2, 3, 4)


class FeatureInfo(list):
    """What a model's feature maps are, as timm's `feature_info`: one dict per map, in the
    order a features model returns them, with `index` (what out_indices selects), `num_chs`,
    `reduction` (the stride relative to the input), `module` (the stage whose output it is,
    e.g. "blocks.1") and `stage` (timm's stage number). `channels()`, `reduction()` and
    `module_name()` list one field, of all maps or of the one or several at `idx`."""

    def channels(self, idx=None):
        return self._field("num_chs", idx)

    def reduction(self, idx=None):
        return self._field("reduction", idx)

    def module_name(self, idx=None):
        return self._field("module", idx)

    def _field(self, key, idx):
        if idx is None:
            return [info[key] for info in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]


def feature_points(stages, width):
    """The FeatureInfo of all five maps of a stage table at this width."""
    points, stride = FeatureInfo(), 2  # the stem's stride
    for index, stage in enumerate(stages):
        stride *= stage.stride
        if index + 1 == len(stages) or stages[index + 1].stride > 1:
            points.append(dict(index=len(points), num_chs=scale_channels(stage.channels, width),
                               reduction=stride, module=f"blocks.{index}", stage=index + 1))
    return points


def select_features(points, out_indices):
    """The FeatureInfo of the maps `out_indices` names (ConfigError for an index that is
    not one of them)."""
    chosen = sorted(set(out_indices)) if isinstance(out_indices, (list, tuple)) else None
    if not chosen or not all(type(i) is int and 0 <= i < len(points) for i in chosen):
        raise ConfigError(f"out_indices: {shown(out_indices)} is not a list of feature map "
                          f"numbers; choose among {', '.join(map(str, range(len(points))))} "
                          "(strides " + ", ".join(str(p['reduction']) for p in points) + ")")
    return FeatureInfo(points[i] for i in chosen)


def scale_channels(channels, multiplier, divisor=8, round_up_bias=0.9):
    """Scale a channel count and round it to a multiple of `divisor`, never rounding down
    by more than 10% (the rule shared by the TF release, torchvision and timm)."""
    value = channels * multiplier
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded if rounded >= round_up_bias * value else rounded + divisor


class ConvBN(nn.Layer):
    """Bias-free convolution, BatchNorm, then ReLU unless `act` is False."""

    def __init__(self, in_ch, out_ch, kernel=1, stride=1, groups=1, act=True, bn_args=None):
        super().__init__()
        if groups > 1 and groups == in_ch == out_ch:  # depthwise: our fast CPU kernel
            self.conv = DepthwiseConv2D(out_ch, kernel, stride)
        else:
            self.conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2,
                                  groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(out_ch, **(bn_args or {}))
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class SqueezeExcite(nn.Layer):
    """Global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid gate on the input."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.conv_reduce = nn.Conv2D(channels, reduced, 1)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2D(reduced, channels, 1)

    def forward(self, x):
        scale = self.conv_expand(self.act(self.conv_reduce(self.pool(x))))
        return x * sigmoid(scale)  # ppcls.ops: also recordable in a legacy program


class MnasBlock(nn.Layer):
    """One MnasNet block. `expand` is absent for depthwise-separable blocks; `se` is absent
    without squeeze-and-excitation. `project_relu` puts a ReLU after the projection BN,
    before the shortcut (the reproduction's stem ReLU)."""

    def __init__(self, in_ch, out_ch, stage, stride, bn_args, project_relu=False):
        super().__init__()
        mid_ch = in_ch * stage.expand
        self.expand = ConvBN(in_ch, mid_ch, bn_args=bn_args) if stage.block == "ir" else None
        self.dw = ConvBN(mid_ch, mid_ch, stage.kernel, stride, groups=mid_ch, bn_args=bn_args)
        # The SE width follows timm: se ratio of the input channels, computed from mid_ch.
        self.se = (
            SqueezeExcite(mid_ch, round(mid_ch * stage.se / stage.expand)) if stage.se else None
        )
        self.project = ConvBN(mid_ch, out_ch, act=project_relu, bn_args=bn_args)
        self.use_shortcut = stage.skip and stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = self.expand(x) if self.expand is not None else x
        out = self.dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return x + out if self.use_shortcut else out


class MnasNet(nn.Layer):
    """MnasNet classifier, or backbone (features_only), built from a stage table.

    Args:
        arch: "B1", "A1" or "small" (a key of ARCHITECTURES).
        width: channel multiplier for stem and stages (the 1280-wide head is fixed).
        class_num: classifier outputs.
        stem_relu: extra ReLU after the first block's projection BN (the reproduction's
            topology); False gives exactly the torchvision / timm / TF network. None (the
            default): True until weights trained without it are loaded; True or False:
            fixed, and weights of the other topology are refused.
        dropout: dropout probability before the classifier.
        bn_momentum, bn_epsilon: BatchNorm settings in Paddle's convention
            (running = momentum * running + (1 - momentum) * batch).
        features_only: build the backbone alone: no head convolution, pooling or
            classifier (class_num and dropout are then unused); the forward returns the
            list of feature maps `out_indices` selects (see DEFAULT_OUT_INDICES).
        out_indices: which of the five feature maps (0-4: strides 2, 4, 8, 16, 32) a
            features model returns; None: DEFAULT_OUT_INDICES.

    `feature_info` (a FeatureInfo) describes the maps: all five for a classifier, those
    returned for a features model.
    """

    def __init__(self, arch="B1", width=1.0, class_num=1000, stem_relu=None, dropout=0.2,
                 bn_momentum=0.9, bn_epsilon=1e-5, features_only=False, out_indices=None):
        super().__init__()
        self.variant = variant_of(arch, width)  # its record in variants.py, or None
        self.configured_stem_relu = stem_relu  # None: the weights loaded decide
        self.stem_relu = True if stem_relu is None else bool(stem_relu)
        self.weights_origin = None  # a WeightsOrigin (sources.py) once weights are loaded
        spec = ARCHITECTURES[arch]
        bn_args = dict(momentum=bn_momentum, epsilon=bn_epsilon)
        in_ch = scale_channels(spec["stem"], width)
        self.stem = ConvBN(3, in_ch, 3, stride=2, bn_args=bn_args)
        stages = []
        for stage_index, stage in enumerate(spec["stages"]):
            out_ch = scale_channels(stage.channels, width)
            blocks = []
            for repeat in range(stage.repeats):
                first_block = stage_index == 0 and repeat == 0
                blocks.append(MnasBlock(
                    in_ch, out_ch, stage, stage.stride if repeat == 0 else 1, bn_args,
                    project_relu=self.stem_relu and first_block,
                ))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.features_only = bool(features_only)
        self.feature_info = feature_points(spec["stages"], width)
        if self.features_only:
            self.feature_info = select_features(
                self.feature_info, DEFAULT_OUT_INDICES if out_indices is None else out_indices)
        else:
            if out_indices is not None:
                raise ConfigError("out_indices selects the maps of a features model: add "
                                  "features_only=True")
            self.head = ConvBN(in_ch, spec["head"], bn_args=bn_args)
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.flatten = nn.Flatten()
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(spec["head"], class_num)
        self._init_weights()

    def _init_weights(self):
        """torchvision's MNASNet initialisation: Kaiming-normal (fan_out, ReLU) convolutions,
        Kaiming-uniform (fan_out, sigmoid gain) classifier, zero biases, unit BN scale."""
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                out_ch, _, kh, kw = layer.weight.shape
                nn.initializer.Normal(0.0, math.sqrt(2.0 / (out_ch * kh * kw)))(layer.weight)
                if layer.bias is not None:
                    nn.initializer.Constant(0.0)(layer.bias)
            elif isinstance(layer, nn.Linear):
                bound = math.sqrt(3.0 / layer.weight.shape[1])  # fan_out = class_num
                nn.initializer.Uniform(-bound, bound)(layer.weight)
                nn.initializer.Constant(0.0)(layer.bias)

    def set_stem_relu(self, on):
        """Switch the parameter-free extra stem ReLU (the weights loaded decide, sources.py)."""
        self.stem_relu = bool(on)
        self.blocks[0][0].project.act = nn.ReLU() if on else None

    # ------------------------------------------------ hooks for the rest of ppcls
    def adapt_state_dict(self, state, weights_file):
        """ppcls.weights.load_into's hook: the weights of any MnasNet source (ours,
        torchvision's, timm's, the Paddle reproduction's) in our tensor names, this network
        switched to the stem ReLU they were trained with, and their origin remembered.
        Returns (state, the source's name)."""
        return adapt(self, state, weights_file)

    def eval_transforms(self, configured, where):
        """The transform ops to evaluate or predict with: for torchvision's or timm's
        weights their source's own eval transform (so their published accuracy is
        reproduced), with a log line; else `configured` (the config's ops at `where`)."""
        return eval_transforms_of(self.weights_origin, configured, where)

    def checkpoint_record(self):
        """What a checkpoint records beside these weights so that loading them restores
        this topology (read back by adapt_state_dict)."""
        return {"stem_relu": self.stem_relu}

    def left_out_keys(self):
        """The state-dict keys of the layers only a classifier has, the head convolution and
        the classifier, which a features model does not build (timm's leaves out its
        conv_head too): adapt_state_dict drops them from a classifier's weights. () for a
        classifier."""
        if not self.features_only:
            return ()
        twins = {"head": ConvBN(1, 1), "fc": nn.Linear(1, 1)}  # tiny, for their tensor names
        return tuple(f"{name}.{key}" for name, layer in twins.items()
                     for key in layer.state_dict())

    def forward_features(self, x):
        return self.head(self.blocks(self.stem(x)))

    def forward_feature_maps(self, x):
        """The feature maps feature_info names, shallowest first; the stages after the
        deepest one chosen are not run."""
        x, maps = self.stem(x), []
        wanted = {info["stage"] - 1 for info in self.feature_info}
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in wanted:
                maps.append(x)
                if len(maps) == len(wanted):
                    break
        return maps

    def forward(self, x):
        if self.features_only:
            return self.forward_feature_maps(x)
        x = self.flatten(self.avg_pool(self.forward_features(x)))
        return self.fc(self.dropout(x))
