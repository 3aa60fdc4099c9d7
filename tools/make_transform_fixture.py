"""Write the eval-transform fixture (tests/fixtures/source_transforms.json): what each
source's OWN eval transform makes of the demo photos, for every weights record in
ppcls/arch/backbone/model_zoo/mnasnet/variants.py, so tests/test_preprocess_sources.py can
prove that `eval_transform_ops(record.preprocess)` gives the same input tensor without
PyTorch.

Needs torch, torchvision and timm (not project dependencies) and no ppcls imports beyond the
records (standard library only), so it runs in a scratch venv without Paddle:

    python tools/make_transform_fixture.py tests/fixtures/source_transforms.json

Each source is run as its users run it: the image loaded as its image folders do
(`Image.open(f).convert("RGB")`), then torchvision's `weights.transforms()` (checked equal to
Compose([Resize, CenterCrop, ToTensor, Normalize]) with the preset's numbers) or timm's
`create_transform(**resolve_data_config({}, model=m), is_training=False)`. It also checks that
each record's Preprocess states what its source's transform does.
"""

import argparse
import glob
import hashlib
import json
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ppcls.utils.cli import run  # noqa: E402
SAMPLES, SEED = 512, 20260501


def load_records():
    """Every weights record (importing the records needs no Paddle)."""
    sys.path.insert(0, ROOT)
    from ppcls.arch.backbone.model_zoo.mnasnet.variants import VARIANTS

    return [w for variant in VARIANTS for w in variant.weights]


def import_torchvision():
    """PyPI's torchvision wheels are CUDA builds: on a CPU torch their C ops do not load and
    the import fails registering fake kernels for them. The transforms are pure Python, so
    import it once more with that registration skipped for torchvision's own ops."""
    import torch

    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        real = torch.library.register_fake

        def register_fake(op, *args, **kwargs):
            if str(op).startswith("torchvision::"):
                return lambda fn: fn
            return real(op, *args, **kwargs)

        torch.library.register_fake = register_fake
        try:
            import torchvision
        finally:
            torch.library.register_fake = real
    return torchvision


def torchvision_transform(weights):
    tv = import_torchvision()
    T = tv.transforms
    enum, member = weights.name.split(".")
    preset = getattr(getattr(tv.models, enum), member).transforms()
    p = weights.preprocess
    stated = dict(resize=preset.resize_size, crop=preset.crop_size, mean=preset.mean,
                  std=preset.std, interpolation=preset.interpolation.value,
                  antialias=preset.antialias)
    recorded = dict(resize=[p.resize], crop=[p.crop], mean=list(p.mean), std=list(p.std),
                    interpolation=p.interpolation, antialias=True)
    assert stated == recorded, f"{weights.name}: record {recorded} but torchvision {stated}"
    compose = T.Compose([T.Resize(p.resize, interpolation=preset.interpolation),
                         T.CenterCrop(p.crop), T.ToTensor(), T.Normalize(p.mean, p.std)])
    return preset, compose, stated


def timm_transform(weights):
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=timm.create_model(weights.name, pretrained=False))
    p = weights.preprocess
    recorded = dict(input_size=(3, p.crop, p.crop), interpolation=p.interpolation,
                    mean=tuple(p.mean), std=tuple(p.std), crop_pct=p.crop_pct,
                    crop_mode="center")
    assert config == recorded, f"{weights.name}: record {recorded} but timm {config}"
    return create_transform(**config, is_training=False), None, config


def versions():
    import PIL
    import timm
    import torch

    return dict(torch=torch.__version__, torchvision=import_torchvision().__version__,
                timm=timm.__version__, pillow=PIL.__version__, numpy=np.__version__,
                python=platform.python_version())


def describe(tensor, preprocess, positions):
    """Statistics, sampled values and the digest of the uint8 crop the tensor encodes."""
    x = tensor.numpy().astype(np.float64)
    mean = np.array(preprocess.mean).reshape(3, 1, 1)
    std = np.array(preprocess.std).reshape(3, 1, 1)
    levels = np.rint((x * std + mean) * 255)
    # The tensor must be (uint8 / 255 - mean) / std exactly, or its digest proves nothing.
    lossless = float(np.abs((levels / 255 - mean) / std - x).max())
    assert levels.min() >= 0 and levels.max() <= 255 and lossless < 1e-5, lossless
    return dict(shape=list(x.shape), channel_mean=x.mean(axis=(1, 2)).round(7).tolist(),
                channel_std=x.std(axis=(1, 2)).round(7).tolist(),
                min=round(float(x.min()), 7), max=round(float(x.max()), 7),
                uint8_chw_sha256=hashlib.sha256(levels.astype(np.uint8).tobytes()).hexdigest(),
                values=x.reshape(-1)[positions].round(7).tolist())


def make_fixture(command, dump=None):
    import torch
    from PIL import Image

    photos = sorted(glob.glob(os.path.join(ROOT, "demo", "*.jpg")))
    presets, entries, arrays, positions = {}, [], {}, None
    for weights in load_records():
        make = torchvision_transform if weights.source == "torchvision" else timm_transform
        transform, compose, stated = make(weights)
        if repr(transform) in presets:  # weights evaluated alike share one preset
            presets[repr(transform)]["weights"].append(weights.name)
            continue
        p = weights.preprocess
        key = f"{weights.source}-{p.interpolation}-{p.resize or p.crop_pct}-{p.crop}"
        presets[repr(transform)] = dict(name=key, source=weights.source, weights=[weights.name],
                                        transform=repr(transform), stated=stated,
                                        preprocess=weights.preprocess._asdict())
        for photo in photos:
            with open(photo, "rb") as f:  # as torchvision's pil_loader and timm's readers do
                image = Image.open(f).convert("RGB")
            with torch.no_grad():
                tensor = transform(image)
                if compose is not None:
                    assert torch.equal(tensor, compose(image)), (weights.name, photo)
            if positions is None:
                positions = np.sort(np.random.default_rng(SEED).choice(
                    tensor.numel(), SAMPLES, replace=False))
            name = os.path.relpath(photo, ROOT)
            entries.append(dict(photo=name, preset=key,
                                **describe(tensor, weights.preprocess, positions)))
            arrays[f"{len(entries) - 1}"] = tensor.numpy()
    if dump:
        np.savez_compressed(dump, **arrays)
    return dict(
        made_by=command, versions=versions(),
        about="Per demo photo and per distinct source eval transform: the output tensor's "
              "shape, per-channel mean and std, min, max, the SHA-256 of the uint8 CHW image "
              "it encodes (rint((t * std + mean) * 255)), and its values at `positions` "
              "(flat indices into the CHW tensor; numpy.random.default_rng(seed).choice(n, "
              "count, replace=False), sorted). Values rounded to 7 decimals.",
        seed=SEED, positions=positions.tolist(),
        presets=list(presets.values()), entries=entries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--dump", help="also write the full tensors to this .npz (scratch)")
    args = parser.parse_args(argv)
    command = "python tools/make_transform_fixture.py " + os.path.relpath(args.out, ROOT)
    fixture = make_fixture(command, args.dump)
    with open(args.out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"{args.out}: {len(fixture['entries'])} tensors, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
