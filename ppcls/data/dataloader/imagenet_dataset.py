"""A classification dataset in ImageNet list format: one `relative/path label` per line.

Bad input is handled in two places. Up front, when the dataset is built: the list file
must parse, every label must be an integer in [0, class_num) and every listed file must
exist; errors name the list file and line. While loading: a file that cannot be read or
decoded does not raise inside a loader worker; the sample comes back as a description of
the problem, and `ppcls.data.bad_images.BadImagePolicy` decides, in the training process,
whether to stop (naming the file) or to skip it.
"""

import os
import random

import numpy as np
import paddle

from ppcls.data.preprocess import ToCHWImage, apply_transforms, build_transforms, fuse
from ppcls.utils.errors import ConfigError, DataError, shown
from ppcls.utils.text import read_lines

POLICIES = ("fail", "skip")


def read_label_list(cls_label_path, image_root, delimiter=" "):
    """Parse the list file into (paths, labels, line numbers); errors name file and line."""
    # a config from another machine (e.g. one a checkpoint kept) names paths absent here
    key = "DataLoader.*.dataset."
    if not os.path.isfile(cls_label_path):
        raise ConfigError(f"label list not found: {cls_label_path} ({key}cls_label_path): "
                          f"give yours with -o {key}cls_label_path=<list file>")
    if not os.path.isdir(image_root):
        raise ConfigError(f"image_root is not a directory: {image_root} ({key}image_root): "
                          f"give yours with -o {key}image_root=<folder>")
    paths, labels, line_numbers = [], [], []
    for line_no, line in read_lines(cls_label_path):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(delimiter, 1)
        if len(parts) != 2:
            raise DataError(f"{cls_label_path}:{line_no}: expected 'path{delimiter}label', "
                            f"got {shown(line)}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{cls_label_path}:{line_no}: label {shown(parts[1])} is not an "
                            "integer") from None
        paths.append(os.path.join(image_root, parts[0].strip()))
        labels.append(label)
        line_numbers.append(line_no)
    if not paths:
        raise DataError(f"{cls_label_path} lists no images")
    return paths, np.array(labels, dtype=np.int64), np.array(line_numbers, dtype=np.int64)


def find_missing(paths):
    """Indices of paths that are not files. Lists each directory once instead of calling
    stat per file: about a thousand listings for ImageNet's 1.28M images."""
    by_dir = {}
    for i, path in enumerate(paths):
        by_dir.setdefault(os.path.dirname(path), []).append(i)
    missing = []
    for directory, indices in by_dir.items():
        try:
            present = {entry.name for entry in os.scandir(directory or ".")
                       if entry.is_file()}
        except OSError:  # the directory itself is missing or unreadable
            present = set()
        missing.extend(i for i in indices if os.path.basename(paths[i]) not in present)
    return sorted(missing)


class ImageNetDataset(paddle.io.Dataset):
    """Items are `(index, sample_seed)` pairs from our samplers (or plain indices): every
    random operator draws from `random.Random(sample_seed)`, so a sample's augmentation
    does not depend on which worker loads it, or on resuming.

    `on_bad_image`: "fail" stops at the first unreadable image, naming it; "skip" leaves it
    out of its batch and logs it. When not set, training skips and evaluation fails.
    `max_bad_fraction`: with "skip", stop anyway once more than this fraction of a pass
    over the data was unusable (a sign of a broken dataset rather than a few bad files)."""

    def __init__(self, image_root, cls_label_path, transform_ops=None, delimiter=" ",
                 relabel=False, on_bad_image: (str, type(None)) = None,
                 max_bad_fraction: float = 0.01):
        if on_bad_image not in POLICIES + (None,):
            raise ConfigError(f"DataLoader.*.dataset.on_bad_image must be one of "
                              f"{', '.join(POLICIES)}; got {shown(on_bad_image)}")
        if not 0 <= max_bad_fraction <= 1:
            raise ConfigError("DataLoader.*.dataset.max_bad_fraction must be in [0, 1], got "
                              f"{shown(max_bad_fraction)}")
        self.image_root, self.cls_label_path = image_root, cls_label_path
        self.on_bad_image = on_bad_image or "fail"
        self.max_bad_fraction = max_bad_fraction
        self.images, self.labels, self.line_numbers = read_label_list(
            cls_label_path, image_root, delimiter)
        self.listed = len(self.images)
        self.dropped = self._drop_missing_files()
        if relabel:
            _, self.labels = np.unique(self.labels, return_inverse=True)
        self.ops = fuse(build_transforms(transform_ops, "DataLoader.*.dataset.transform_ops"))
        # PaddleClas datasets hand out CHW images; configs end with an HWC NormalizeImage.
        self.transpose = not any(isinstance(op, ToCHWImage) for op in self.ops)
        self.output_shape = None  # (shape, where): see settle_output_shape

    def where(self, index):
        return f"{self.cls_label_path}:{self.line_numbers[index]}"

    def _drop_missing_files(self):
        """Missing files stop here under "fail"; under "skip" they leave the list. Returns
        the (list line, path) of each file left out."""
        missing = find_missing(self.images)
        if not missing:
            return []
        shown = "; ".join(f"{self.where(i)}: {self.images[i]}" for i in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        if self.on_bad_image == "fail":
            raise DataError(f"{len(missing)} listed image(s) not found: {shown}{more}. Fix the "
                            "list or image_root, or set DataLoader.*.dataset.on_bad_image: "
                            "skip")
        if len(missing) > self.max_bad_fraction * self.listed:
            raise DataError(f"{len(missing)} of {self.listed} listed images not found, more "
                            f"than max_bad_fraction ({self.max_bad_fraction}) allows: {shown}"
                            f"{more}. Is image_root right? To train without them, raise "
                            "DataLoader.Train.dataset.max_bad_fraction")
        dropped = [(self.where(i), self.images[i]) for i in missing]
        keep = np.setdiff1d(np.arange(self.listed), missing)
        self.images = [self.images[i] for i in keep]
        self.labels, self.line_numbers = self.labels[keep], self.line_numbers[keep]
        return dropped

    def check_labels(self, class_num, where="DataLoader.*.dataset"):
        """Every label must index one of the model's `class_num` outputs."""
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= class_num))
        if len(bad):
            shown = "; ".join(f"{self.where(i)}: label {self.labels[i]}" for i in bad[:5])
            raise DataError(f"{len(bad)} label(s) outside [0, {class_num}) in "
                            f"{where}: {shown}. Arch.class_num is {class_num}: fix the list "
                            "or set Arch.class_num")

    def __len__(self):
        return len(self.images)

    def settle_output_shape(self, tries=16):
        """Fix the shape every sample must come out at: the first readable listed image's,
        once the loader has its final operators. Without it, an image the operators leave
        at another size would fail np.stack in the loader's collate, and Paddle's DataLoader
        hangs on an exception there; with it, that image is a bad sample naming its file."""
        self.output_shape = None
        for index in range(min(len(self), tries)):
            image = self[(index, 0)][0]
            if image is not None:
                self.output_shape = (image.shape, self.where(index))
                return

    def load(self, index, seed):
        path = self.images[index]
        with open(path, "rb") as f:
            data = f.read()
        img = apply_transforms(self.ops, data, random.Random(seed))
        img = img.transpose(2, 0, 1) if self.transpose else img
        if self.output_shape is not None and img.shape != self.output_shape[0]:
            shape, where = self.output_shape
            raise ValueError(f"the transform ops make it {list(img.shape)}, but the first image "
                             f"({where}) {list(shape)}: add ResizeImage and CropImage to them so "
                             "that every image comes out one size")
        return img

    def __getitem__(self, item):
        """(image, label, seed, problem). When the file cannot be read or decoded, image is
        None and problem says why, naming the file and list line: the collate function
        passes it on instead of crashing the loader worker."""
        index, seed = item if isinstance(item, tuple) else (item, item)
        try:
            return self.load(index, seed), self.labels[index], seed, None
        except Exception as err:  # noqa: BLE001 - any failure marks the sample bad; see above
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            return None, self.labels[index], seed, f"{self.where(index)}: {self.images[index]}: {reason}"
