"""Write a weight-parity fixture (format: tests/fixtures/parity/README.md) for a torchvision
or timm MnasNet: seeded random weights, the reference's float64 eval-mode logits.

Needs torch plus torchvision or timm (not project dependencies); the tests only read the
JSON it writes.

    python tools/make_parity_fixture.py --source timm --arch mnasnet_small out.json
    python tools/make_parity_fixture.py --source timm --arch mnasnet_small --features out.json
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402

RECIPE = ("for entry in keys: rng = numpy.random.default_rng([seed, entry['index']]); "
          "value = rng.uniform(a, b, shape) if dist == 'uniform' else rng.normal(a, b, shape); "
          "cast to float32. Input: numpy.random.default_rng([seed, 999999])"
          ".standard_normal(input_shape) cast to float32. Reference evaluated in float64, "
          "eval mode. num_batches_tracked entries are omitted.")


def distribution(name, shape):
    """BN scale and variance near 1, small shifts, He-scaled weights: activations stay finite."""
    leaf = name.rsplit(".", 1)[1]
    if leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
        return "uniform", 0.5, 1.5
    if len(shape) == 1:
        return "normal", 0.0, 0.1
    fan_in = int(np.prod(shape[1:]))
    gain = 1.0 if len(shape) == 2 else 2.0
    return "normal", 0.0, math.sqrt(gain / fan_in)


def build_reference(source, arch, num_classes):
    if source == "torchvision":
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def make_fixture(source, arch, seed, num_classes=1000, input_shape=(2, 3, 224, 224)):
    import torch

    model = build_reference(source, arch, num_classes).double().eval()
    keys = seed_weights(model, seed)
    x = np.random.default_rng([seed, 999999]).standard_normal(input_shape).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).double()).numpy()
    params = sum(p.numel() for p in model.parameters())
    return dict(source=source, arch=arch, num_classes=num_classes, params=params,
                recipe=RECIPE, seed=seed, input_shape=list(input_shape), keys=keys,
                logits=logits.tolist())


def seed_weights(model, seed):
    """Set the model's tensors by the recipe; returns the fixture's `keys` entries."""
    import torch

    keys = []
    # state_dict() tensors share storage with the model: copying into them sets the weights
    # (torchvision's MNASNet refuses load_state_dict without its version metadata).
    state = {n: t for n, t in model.state_dict().items() if not n.endswith("num_batches_tracked")}
    with torch.no_grad():
        for index, (name, tensor) in enumerate(state.items()):
            shape = list(tensor.shape)
            dist, a, b = distribution(name, shape)
            rng = np.random.default_rng([seed, index])
            value = rng.uniform(a, b, shape) if dist == "uniform" else rng.normal(a, b, shape)
            tensor.copy_(torch.from_numpy(value.astype(np.float32).astype(np.float64)))
            keys.append(dict(index=index, name=name, shape=shape, dist=dist, a=a, b=b))
    return keys


FEATURE_SAMPLES = 64  # values kept of each feature map


def make_features_fixture(arch, seed, input_shape=(1, 3, 96, 96)):
    """timm's features_only model of `arch`, holding the classifier fixture's weights (the
    same seed gives the same tensors), on an input of the recipe at `input_shape`
    (numpy.random.default_rng([seed, 999998])): its feature_info and, per map, the shape,
    the largest magnitude and FEATURE_SAMPLES values at flat indices drawn by
    numpy.random.default_rng([seed, 777000 + map number]). Evaluated in float64."""
    import timm
    import torch

    classifier = build_reference("timm", arch, 1000).double().eval()
    seed_weights(classifier, seed)
    model = timm.create_model(arch, pretrained=False, features_only=True).double().eval()
    missing, _ = model.load_state_dict(classifier.state_dict(), strict=False)
    assert not missing, missing
    x = np.random.default_rng([seed, 999998]).standard_normal(input_shape).astype(np.float32)
    with torch.no_grad():
        maps = [m.numpy() for m in model(torch.from_numpy(x).double())]
    info = model.feature_info
    entries = []
    for number, feature in enumerate(maps):
        where = np.random.default_rng([seed, 777000 + number]).integers(
            0, feature.size, FEATURE_SAMPLES)
        entries.append(dict(shape=list(feature.shape), max_abs=float(np.abs(feature).max()),
                            indices=where.tolist(), values=feature.ravel()[where].tolist()))
    return dict(source="timm", arch=arch, seed=seed, input_shape=list(input_shape),
                input_recipe="numpy.random.default_rng([seed, 999998]).standard_normal("
                             "input_shape) cast to float32",
                channels=info.channels(), reduction=info.reduction(),
                modules=info.module_name(), maps=entries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, choices=("torchvision", "timm"))
    parser.add_argument("--arch", required=True, help="reference name, e.g. mnasnet0_75")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--features", action="store_true",
                        help="timm only: the features_only model's maps (make_features_fixture)")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    if args.features and args.source != "timm":
        parser.error("--features: timm is the reference for features_only")
    fixture = (make_features_fixture(args.arch, args.seed) if args.features
               else make_fixture(args.source, args.arch, args.seed))
    with open(args.out, "w") as f:
        json.dump(fixture, f)


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
