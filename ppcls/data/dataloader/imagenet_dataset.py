"""A classification dataset in ImageNet list format: one `relative/path label` per line."""

import os
import random

import numpy as np
import paddle

from ppcls.data.preprocess import ToCHWImage, apply_transforms, build_transforms
from ppcls.utils.errors import ConfigError


def read_label_list(cls_label_path, image_root, delimiter=" "):
    """Parse the list file into (paths, labels); errors name the file and line."""
    if not os.path.isfile(cls_label_path):
        raise ConfigError(f"label list not found: {cls_label_path} (DataLoader.*.dataset."
                          "cls_label_path)")
    if not os.path.isdir(image_root):
        raise ConfigError(f"image_root is not a directory: {image_root} (DataLoader.*.dataset."
                          "image_root)")
    paths, labels = [], []
    with open(cls_label_path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(delimiter, 1)
            if len(parts) != 2:
                raise ConfigError(f"{cls_label_path}:{line_no}: expected 'path{delimiter}label', "
                                  f"got {line!r}")
            try:
                label = int(parts[1])
            except ValueError:
                raise ConfigError(f"{cls_label_path}:{line_no}: label {parts[1]!r} is not an "
                                  "integer") from None
            paths.append(os.path.join(image_root, parts[0].strip()))
            labels.append(label)
    if not paths:
        raise ConfigError(f"{cls_label_path} lists no images")
    return paths, np.array(labels, dtype=np.int64)


class ImageNetDataset(paddle.io.Dataset):
    """Items are `(index, sample_seed)` pairs from our samplers (or plain indices): every
    random operator draws from `random.Random(sample_seed)`, so a sample's augmentation
    does not depend on which worker loads it, or on resuming."""

    def __init__(self, image_root, cls_label_path, transform_ops=None, delimiter=" ",
                 relabel=False):
        self.image_root, self.cls_label_path = image_root, cls_label_path
        self.images, self.labels = read_label_list(cls_label_path, image_root, delimiter)
        if relabel:
            _, self.labels = np.unique(self.labels, return_inverse=True)
        self.ops = build_transforms(transform_ops, "DataLoader.dataset.transform_ops")
        # PaddleClas datasets hand out CHW images; configs end with an HWC NormalizeImage.
        self.transpose = not any(isinstance(op, ToCHWImage) for op in self.ops)

    def __len__(self):
        return len(self.images)

    def load(self, index, seed):
        path = self.images[index]
        with open(path, "rb") as f:
            data = f.read()
        try:
            img = apply_transforms(self.ops, data, random.Random(seed))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return img.transpose(2, 0, 1) if self.transpose else img

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, item)
        return self.load(index, seed), self.labels[index], seed
