"""One record per MnasNet variant: its registered names, stage table and width, the
reference networks it equals and what they publish. Every other list of variants (builders,
REFERENCE_ARCHS, the benchmarks' PyTorch twins, tests, tables) is computed from VARIANTS.
Published figures are the sources' own (we have not trained on ImageNet); None: not
published, or not found.

Standard library only, so that tools read the records without importing Paddle:
    python -c "from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANTS"
"""

import math
import re
from collections import namedtuple
from typing import Dict, NamedTuple, Optional, Tuple

# Sources of the published figures, as tools/model_summary.py prints them.
TORCHVISION = "torchvision weights metadata (torchvision/models/mnasnet.py)"
TIMM = "timm results/results-imagenet.csv"
MINDCV = "MindCV configs/mnasnet/README.md"
TF = "TF release (tensorflow/tpu models/official/mnasnet/README.md)"
REPRODUCTION = "Paddle reproduction (renmada/MnasNet-paddle README, tools/eval.py)"

# One source's ImageNet-1k result: top-1 and top-5 in %, parameters in millions as the
# source counts them, multiply-adds in millions at 224x224.
Published = namedtuple("Published", "source model top1 top5 params_m macs_m")


class Preprocess(NamedTuple):
    """How the weights were evaluated: resize the short side, centre-crop, scale to [0, 1],
    normalise. torchvision states the short side, timm the crop's fraction of it."""

    interpolation: str  # the resize filter
    resize: Optional[int] = None  # short side before the crop (torchvision)
    crop_pct: Optional[float] = None  # timm: short side = math.floor(crop / crop_pct)
    crop: int = 224
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)  # both sources' ImageNet statistics
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)


class Weights(NamedTuple):
    source: str  # "torchvision" or "timm": the checkpoint's tensor naming
    name: str  # torchvision's weights enum, or timm's model.tag (its hub repository)
    url: str
    sha256: Optional[str]  # the whole digest, where the host shows it (the hub's LFS pointer)
    sha256_prefix: Optional[str]  # the leading digits torchvision puts in its file names
    preprocess: Preprocess
    size_mb: Optional[float] = None  # the file size the source publishes, rounded

    @property
    def max_bytes(self):
        """The download's size cap: the published size with 10% to spare, as the sources
        round it and do not say whether their MB is 10**6 or 2**20 bytes; None where no size
        is published (download.py's default cap applies)."""
        return None if self.size_mb is None else math.ceil(self.size_mb * 1.1 * 2**20)


class Variant(NamedTuple):
    names: Tuple[str, ...]  # registered Arch.name; the first is ours, the rest aliases
    arch: str  # stage table: a key of network.ARCHITECTURES
    width: float  # channel multiplier
    twins: Dict[str, str]  # library -> its name for exactly this network (weights convert)
    ref_params: Optional[int]  # trainable parameters at 1000 classes per torchvision/timm
    published: Tuple[Published, ...] = ()
    weights: Tuple[Weights, ...] = ()

    @property
    def name(self):
        return self.names[0]


def _tv(enum, file, size_mb, resize=256):
    # torchvision/models/mnasnet.py: its ImageClassification preset, resize 256 unless stated,
    # and the weights' meta "_file_size" (MB). torch.hub checks a download's SHA-256 against
    # the hex digits between "-" and ".pth".
    prefix = re.search(r"-([0-9a-f]+)\.", file).group(1)
    return Weights("torchvision", enum, "https://download.pytorch.org/models/" + file, None,
                   prefix, Preprocess("bilinear", resize=resize), size_mb)


def default_preprocess(source):
    """A source's usual eval transform, for its weights of a variant it does not publish."""
    return {"torchvision": Preprocess("bilinear", resize=256),
            "timm": Preprocess("bicubic", crop_pct=0.875)}.get(source)


def _timm(tag, size_mb=None, sha256=None):
    # Preprocessing: their pretrained config in timm/models/efficientnet.py (timm's defaults).
    url = f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors"
    return Weights("timm", tag, url, sha256, None, Preprocess("bicubic", crop_pct=0.875),
                   size_mb)


# The tools list variants in this order. timm's SHA-256 digests and sizes: the "Git LFS
# Details" of each file's page on huggingface.co, e.g.
# https://huggingface.co/timm/semnasnet_100.rmsp_in1k/blob/main/model.safetensors and
# https://huggingface.co/timm/mnasnet_small.lamb_in1k/blob/ca8e2b6929aec79c74cbd9cdb8950395523d9bb6/model.safetensors;
# mnasnet_100's size from its file list, https://huggingface.co/timm/mnasnet_100.rmsp_in1k/tree/main.
# The file pages of mnasnet_100 and semnasnet_075 (for their digests) and semnasnet_075's
# file list were not found: those downloads log their SHA-256 for pinning instead.
P = Published
# fmt: off
VARIANTS = (
    Variant(("MnasNet_B1_x0_5", "mnasnet0_5"), "B1", 0.5,
            dict(torchvision="mnasnet0_5", timm="mnasnet_050"), 2_218_512,
            (P(TORCHVISION, "mnasnet0_5", 67.734, 87.490, 2.218512, 104.0),
             P(MINDCV, "mnasnet_050", 68.07, 88.09, 2.14, None)),
            (_tv("MNASNet0_5_Weights.IMAGENET1K_V1", "mnasnet0.5_top1_67.823-3ffadce67e.pth",
                 8.591),)),
    Variant(("MnasNet_B1_x0_75", "mnasnet0_75"), "B1", 0.75,
            dict(torchvision="mnasnet0_75", timm="mnasnet_075"), 3_170_208,
            (P(TORCHVISION, "mnasnet0_75", 71.180, 90.496, 3.170208, 215.0),
             P(MINDCV, "mnasnet_075", 71.81, 90.53, 3.20, None)),
            (_tv("MNASNet0_75_Weights.IMAGENET1K_V1", "mnasnet0_75-7090bc5f.pth", 12.303, 232),)),
    Variant(("MnasNet_B1_x1_0", "mnasnet1_0"), "B1", 1.0,
            dict(torchvision="mnasnet1_0", timm="mnasnet_100", reproduction="mnasnet1_0"), 4_383_312,
            (P(TORCHVISION, "mnasnet1_0", 73.456, 91.510, 4.383312, 314.0),
             P(TIMM, "mnasnet_100.rmsp_in1k", 74.650, 92.124, 4.38, None),
             P(MINDCV, "mnasnet_100", 74.28, 91.70, 4.42, None),
             P(REPRODUCTION, "mnasnet1_0", 73.43, None, None, None)),
            (_tv("MNASNet1_0_Weights.IMAGENET1K_V1", "mnasnet1.0_top1_73.512-f206786ef8.pth",
                 16.915),
             _timm("mnasnet_100.rmsp_in1k", 17.7))),
    Variant(("MnasNet_B1_x1_3", "mnasnet1_3"), "B1", 1.3,
            dict(torchvision="mnasnet1_3"), 6_282_256,
            (P(TORCHVISION, "mnasnet1_3", 76.506, 93.522, 6.282256, 526.0),
             P(MINDCV, "mnasnet_130", 75.65, 92.64, 6.33, None)),
            (_tv("MNASNet1_3_Weights.IMAGENET1K_V1", "mnasnet1_3-a4c69d6f.pth", 24.246, 232),)),
    Variant(("MnasNet_B1_x1_4",), "B1", 1.4, dict(timm="mnasnet_140"), None,
            (P(MINDCV, "mnasnet_140", 76.01, 92.83, 7.16, None),)),
    Variant(("MnasNet_A1_x0_5",), "A1", 0.5, dict(timm="semnasnet_050"), None,
            (P(TF, "mnasnet-a1 x0.5", 68.9, 88.4, 2.1, 105.2),)),
    Variant(("MnasNet_A1_x0_75",), "A1", 0.75, dict(timm="semnasnet_075"), None,
            (P(TIMM, "semnasnet_075.rmsp_in1k", 72.992, 91.138, 2.91, None),
             P(TF, "mnasnet-a1 x0.75", 73.3, 91.3, 2.9, 226.7)),
            (_timm("semnasnet_075.rmsp_in1k"),)),
    Variant(("MnasNet_A1_x1_0",), "A1", 1.0, dict(timm="semnasnet_100"), 3_887_038,
            (P(TIMM, "semnasnet_100.rmsp_in1k", 75.450, 92.594, 3.89, None),
             P(TF, "mnasnet-a1", 75.2, 92.5, 3.9, 315.2)),
            (_timm("semnasnet_100.rmsp_in1k", 15.7,
                   "af6114db10f51455c9bb5af3c1c7810aefe4e7ca16b8edeb7a52288bf1607120"),)),
    Variant(("MnasNet_A1_x1_4",), "A1", 1.4, dict(timm="semnasnet_140"), None,
            (P(TF, "mnasnet-a1 x1.4", 77.2, 93.5, 6.1, 591.5),)),
    Variant(("MnasNet_small",), "small", 1.0, dict(timm="mnasnet_small"), 2_030_264,
            (P(TIMM, "mnasnet_small.lamb_in1k", 66.196, 86.504, 2.03, None),
             P(TF, "mnasnet-small", 66.0, None, 2.0, 68.0)),
            (_timm("mnasnet_small.lamb_in1k", 8.22,
                   "ada9e8edd9ae61ed43b30e03b6602fb0ae392a9ba91f01356943b4fa9dbd08f4"),)),
)
# fmt: on
VARIANT_BY_NAME = {name: variant for variant in VARIANTS for name in variant.names}
_VARIANT_BY_TABLE = {(variant.arch, variant.width): variant for variant in VARIANTS}


def variant_of(arch, width):
    """The record of the network with this stage table and width, or None."""
    return _VARIANT_BY_TABLE.get((arch, width))


def best_published_top1(name):
    """The highest published top-1 for a variant and its source, or (None, None)."""
    entries = [p for p in VARIANT_BY_NAME[name].published if p.top1 is not None]
    best = max(entries, key=lambda p: p.top1, default=None)
    return (best.top1, best.source) if best else (None, None)
