"""Write an ImageNet-like JPEG set for loader benchmarks and tests, from the two colour
photos scikit-learn ships inside its package (china.jpg, flower.jpg, 640x427; nothing is
downloaded, and scikit-learn is already a dependency for the quick start's digits):

    <out>/<class>/<index>.jpg     folder per class (what torchvision's ImageFolder reads)
    <out>/train_list.txt          "<class>/<index>.jpg <label>" lines (PaddleClas's list)

Each image is a random region of one photo (at least a quarter of its area), flipped or not,
its colours shifted a little, resized to a random ImageNet-typical size (width 400-640,
height 300-480, by default) and saved at JPEG quality 90: real photographic content, so
decoding costs what it costs on ImageNet, and no two files are alike. Fixed by --seed.

    python tools/make_jpeg_dataset.py --out dataset/jpeg_bench --images 1024 --classes 8
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402


def source_photos():
    from sklearn.datasets import load_sample_images

    return [np.asarray(img) for img in load_sample_images().images]  # RGB uint8


def make_image(photo, rng, width_range, height_range):
    height, width = photo.shape[:2]
    fraction = rng.uniform(0.25, 1.0)
    crop_w = int(width * np.sqrt(fraction) * rng.uniform(0.8, 1.0))
    crop_h = int(height * np.sqrt(fraction) * rng.uniform(0.8, 1.0))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    region = photo[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        region = region[:, ::-1]
    shifted = region.astype(np.float32) * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-12, 12, 3)
    size = (int(rng.integers(width_range[0], width_range[1] + 1)),
            int(rng.integers(height_range[0], height_range[1] + 1)))
    image = Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))
    return image.resize(size, Image.Resampling.BICUBIC)


def write_dataset(out, images=1024, classes=8, seed=0, width_range=(400, 640),
                  height_range=(300, 480), quality=90):
    rng = np.random.default_rng(seed)
    photos = source_photos()
    lines = []
    for index in range(images):
        label = index % classes
        rel = f"class_{label:03d}/{index:05d}.jpg"
        os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
        image = make_image(photos[int(rng.integers(len(photos)))], rng, width_range, height_range)
        image.save(os.path.join(out, rel), "JPEG", quality=quality)
        lines.append(f"{rel} {label}\n")
    with open(os.path.join(out, "train_list.txt"), "w") as f:
        f.writelines(lines)
    return os.path.join(out, "train_list.txt")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dataset/jpeg_bench")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_dataset(args.out, args.images, args.classes, args.seed)
    print(f"wrote {args.images} JPEGs in {args.classes} class folders and {path}")


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
