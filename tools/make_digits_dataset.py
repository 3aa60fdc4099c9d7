"""Write scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes; shipped inside
the scikit-learn package, nothing is downloaded) as an ImageNet-format dataset:

    <out>/images/<split>/<class>/<index>.png   RGB, upscaled to --size pixels
    <out>/train_list.txt, <out>/val_list.txt   "images/train/3/0042.png 3" lines
    <out>/label_list.txt                        "3 digit 3" lines (class id, name)

The train/val split is fixed (stratified, 20% val, split seed 0): 1,437 train, 360 val.

    python tools/make_digits_dataset.py --out dataset/digits
"""

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from ppcls.utils.cli import run  # noqa: E402


def split_indices(labels, val_fraction=0.2, seed=0):
    """Stratified split: the same fraction of every class goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(members) * val_fraction))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train), sorted(val)


def to_rgb(image, size):
    """0..16 ink intensities -> dark ink on white paper, RGB, size x size."""
    gray = (255 - image * (255.0 / 16.0)).astype(np.uint8)
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def write_dataset(out, size=32):
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val = split_indices(digits.target)
    for split, indices in (("train", train), ("val", val)):
        lines = []
        for index in indices:
            label = int(digits.target[index])
            rel = f"images/{split}/{label}/{index:04d}.png"
            os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            cv2.imwrite(os.path.join(out, rel), to_rgb(digits.images[index], size))
            lines.append(f"{rel} {label}\n")
        with open(os.path.join(out, f"{split}_list.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, "label_list.txt"), "w") as f:
        f.writelines(f"{c} digit {c}\n" for c in range(10))
    return len(train), len(val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="dataset/digits")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args(argv)
    n_train, n_val = write_dataset(args.out, args.size)
    print(f"wrote {n_train} train and {n_val} val images ({args.size}x{args.size}) to {args.out}")


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:]))
