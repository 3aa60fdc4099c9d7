"""Reference MnasNet checkpoints (torchvision, timm, the Paddle reproduction) in this
repository's tensor names: the key maps, the renaming that loading uses, and the conversion
to `.pdparams` that tools/convert_weights.py runs.

The mapping is derived from our own model: for every tensor our model has, we name the
tensor the reference stores for it. Conversion fails, naming the keys, unless every source
tensor is used and every target tensor is filled with the right shape. Reading the files
(any format, by content) is ppcls.weights.formats's job.
"""

import os
import re

import numpy as np

from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANTS
from ppcls.arch.registry import get_model_builder
from ppcls.utils.errors import WeightsError

SOURCES = ("torchvision", "timm", "reproduction")

# Reference model names and the variant of ours that computes the same function: a view of
# the variant records' twins.
REFERENCE_ARCHS = {(library, ref): v.name for v in VARIANTS for library, ref in v.twins.items()}
ARCH_EXAMPLES = "MnasNet_B1_x1_0 for torchvision mnasnet1_0, MnasNet_A1_x1_0 for timm semnasnet_100"

# Tensors a reference keeps that have no counterpart here (PyTorch's BN step counter).
IGNORED_SOURCE_SUFFIXES = (".num_batches_tracked",)

_TORCH_BN_NAMES = {"weight": "weight", "bias": "bias",
                   "_mean": "running_mean", "_variance": "running_var"}

# Our block parts -> timm's names, for depthwise-separable and inverted-residual blocks.
_TIMM_DS_PARTS = {"dw.conv": "conv_dw", "dw.bn": "bn1", "se.conv_reduce": "se.conv_reduce",
                  "se.conv_expand": "se.conv_expand", "project.conv": "conv_pw",
                  "project.bn": "bn2"}
_TIMM_IR_PARTS = {"expand.conv": "conv_pw", "expand.bn": "bn1", "dw.conv": "conv_dw",
                  "dw.bn": "bn2", "se.conv_reduce": "se.conv_reduce",
                  "se.conv_expand": "se.conv_expand", "project.conv": "conv_pwl",
                  "project.bn": "bn3"}
_TIMM_FIXED = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head",
               "head.bn": "bn2", "fc": "classifier"}

# torchvision's MNASNet is one `layers` Sequential; inverted-residual parts sit at these
# indices of each block's own `layers`, and the stem's depthwise-separable block at these.
_TV_IR_PARTS = {"expand.conv": 0, "expand.bn": 1, "dw.conv": 3, "dw.bn": 4,
                "project.conv": 6, "project.bn": 7}
_TV_STEM = {"stem.conv": 0, "stem.bn": 1, "blocks.0.0.dw.conv": 3, "blocks.0.0.dw.bn": 4,
            "blocks.0.0.project.conv": 6, "blocks.0.0.project.bn": 7}
_TV_FIRST_STACK = 8  # layers.8 .. layers.13 are the six inverted-residual stages
_TV_HEAD = 14  # layers.14 conv, layers.15 BN


def _block_of(module):
    match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", module)
    return (int(match.group(1)), int(match.group(2)), match.group(3)) if match else None


def _timm_module(module, ds_blocks):
    if module in _TIMM_FIXED:
        return _TIMM_FIXED[module]
    stage, index, part = _block_of(module)
    parts = _TIMM_DS_PARTS if (stage, index) in ds_blocks else _TIMM_IR_PARTS
    return f"blocks.{stage}.{index}.{parts[part]}"


def _torchvision_module(module, layout):
    """torchvision layout; `layout` carries the reproduction's index shift and head name."""
    shift = layout["shift"]
    if module in _TV_STEM:
        return f"layers.{_TV_STEM[module]}"
    if module == "head.conv":
        return f"layers.{_TV_HEAD + shift}"
    if module == "head.bn":
        return f"layers.{_TV_HEAD + 1 + shift}"
    if module == "fc":
        return layout["classifier"]
    stage, index, part = _block_of(module)
    return f"layers.{_TV_FIRST_STACK - 1 + stage + shift}.{index}.layers.{_TV_IR_PARTS[part]}"


def detect_reproduction_layout(source_keys):
    """The reproduction's MnasNet 1.0 has the extra stem ReLU as `layers.8`, which moves the
    stages to layers.9..14; its classifier is a bare Linear `classifier` (or `classifier.1`
    behind a Dropout in other versions). Read both facts off the checkpoint's keys."""
    keys = set(source_keys)
    if "layers.8.0.layers.0.weight" in keys:
        shift = 0
    elif "layers.9.0.layers.0.weight" in keys:  # layers.8 is the parameter-free ReLU
        shift = 1
    else:
        raise WeightsError("this checkpoint does not look like the reproduction's MNASNet: "
                           "no 'layers.8.0.layers.0.weight' or 'layers.9.0.layers.0.weight'")
    classifier = "classifier.1" if "classifier.1.weight" in keys else "classifier"
    return {"shift": shift, "classifier": classifier}


def build_key_map(model, source, source_keys=()):
    """Map each of `model`'s state-dict keys, and those of the classifier layers a features
    model leaves out (their source tensors are used, then dropped), to the source's key.
    Returns (map, layout)."""
    our_keys = list(model.state_dict().keys()) + list(model.left_out_keys())
    blocks = {_block_of(k)[:2] for k in our_keys if _block_of(k)}
    ds_blocks = blocks - {_block_of(k)[:2] for k in our_keys if ".expand." in k}
    if source == "timm":
        layout = None
    elif source == "torchvision":
        layout = {"shift": 0, "classifier": "classifier.1"}
    elif source == "reproduction":
        layout = detect_reproduction_layout(source_keys)
    else:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if source != "timm" and any(".se." in k for k in our_keys):
        raise WeightsError(f"{source} has no MnasNet with squeeze-and-excitation; "
                           "choose a MnasNet_B1_* --arch")

    key_map = {}
    for key in our_keys:
        module, name = key.rsplit(".", 1)
        if source == "timm":
            src_module = _timm_module(module, ds_blocks)
        else:
            src_module = _torchvision_module(module, layout)
        if source != "reproduction" and module.endswith("bn"):
            name = _TORCH_BN_NAMES[name]
        key_map[key] = f"{src_module}.{name}"
    return key_map, layout


def rename_to_model(model, source_state, source, where):
    """`source_state` (name -> array, the reference's naming) renamed onto `model`'s tensors,
    as float32 in our layout. Shapes are left for the caller to check (a classifier of
    another class_num may be skipped); tensors without a counterpart are an error."""
    key_map, _ = build_key_map(model, source, source_state.keys())
    used = set(key_map.values())
    unused = [k for k in source_state if k not in used and not k.endswith(IGNORED_SOURCE_SUFFIXES)]
    missing = [f"{src} (for {ours})" for ours, src in key_map.items() if src not in source_state]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of our tensors have no source, first: "
                        + ", ".join(missing[:4]))
    if unused:
        problems.append(f"{len(unused)} source tensors unused, first: " + ", ".join(unused[:4]))
    if problems:
        raise WeightsError(f"{where}: these {source} weights are not this variant's "
                           f"({type(model).__name__}, {len(key_map)} tensors): "
                           + " | ".join(problems) + ". Check Arch.name (width and A1/B1/small).")
    renamed = {}
    for ours, src in key_map.items():
        value = np.asarray(source_state[src], dtype=np.float32)
        if ours == "fc.weight" and source != "reproduction":
            value = value.T  # PyTorch's Linear is [out, in]; Paddle's is [in, out]
        renamed[ours] = value
    return renamed


def convert_state_dict(source_state, source, arch, class_num=1000):
    """Convert `source_state` (name -> numpy array, the reference's naming) for our model
    `arch`. Returns (state dict of float32 arrays, what to record beside them: the stem
    ReLU the weights were trained with, see save_pdparams)."""
    model = get_model_builder(arch)(class_num=class_num, stem_relu=False)
    key_map, layout = build_key_map(model, source, source_state.keys())
    converted = rename_to_model(model, source_state, source, f"the {source} checkpoint")
    target_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    mismatched = [f"{key_map[k]} {list(np.shape(source_state[key_map[k]]))} -> {k} "
                  f"{target_shapes[k]}" for k, v in converted.items()
                  if list(v.shape) != target_shapes[k]]
    if mismatched:
        raise WeightsError(
            f"the {source} checkpoint does not match {arch} (class_num={class_num}): "
            f"{len(mismatched)} shape mismatches, first: " + "; ".join(mismatched[:4])
            + ". Check --arch (width and A1/B1/small) and --class_num.")
    return converted, {"stem_relu": bool(layout and layout["shift"])}


def save_pdparams(state, path, record):
    """Write converted weights and, beside them, a `.pdstates` holding `record` (the
    topology they need), which loading then applies as for our own checkpoints."""
    import paddle

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, path)
    paddle.save(dict(record), os.path.splitext(path)[0] + ".pdstates")


def record_note(record, path):
    """One line for the user on what save_pdparams recorded beside `path`."""
    return (f"these weights need stem_relu={record['stem_relu']}, recorded in "
            f"{os.path.splitext(path)[0]}.pdstates: loading them applies it (leave "
            "Arch.stem_relu unset)")
