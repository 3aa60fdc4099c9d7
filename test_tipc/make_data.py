"""Write a small ImageNet-format dataset of real photos for the TIPC chain, without downloads.

Sources: the photos in demo/ (public domain / CC0) and the two sample photos scikit-learn ships
(china.jpg, flower.jpg). Each photo is one class; every image is a random crop of it, resized to
--size. Layout: <out>/images/{train,val}/<class>/<n>.jpg, train_list.txt, val_list.txt,
label_list.txt and val/ (a flat folder of the val images, for the inference sweep).

    python test_tipc/make_data.py --out test_tipc/data/lite --train_per_class 8 --val_per_class 2
"""

import argparse
import glob
import os
import shutil

import cv2
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def source_photos():
    from sklearn.datasets import load_sample_images

    photos = [(os.path.splitext(os.path.basename(p))[0], cv2.imread(p))
              for p in sorted(glob.glob(os.path.join(ROOT, "demo", "*.jpg")))]
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images):
        photos.append((os.path.splitext(os.path.basename(name))[0], image[:, :, ::-1].copy()))
    return photos


def random_crop(image, rng, size):
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 0.9))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)


def write(out, train_per_class, val_per_class, size, seed=0):
    rng = np.random.default_rng(seed)
    shutil.rmtree(out, ignore_errors=True)
    lists = {"train": [], "val": []}
    labels = []
    os.makedirs(os.path.join(out, "val"))
    for class_id, (name, image) in enumerate(source_photos()):
        labels.append(f"{class_id} {name}\n")
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = os.path.join(out, "images", split, str(class_id))
            os.makedirs(folder, exist_ok=True)
            for n in range(count):
                rel = f"images/{split}/{class_id}/{n:03d}.jpg"
                crop = random_crop(image, rng, size)
                cv2.imwrite(os.path.join(out, rel), crop)
                lists[split].append(f"{rel} {class_id}\n")
                if split == "val":
                    cv2.imwrite(os.path.join(out, "val", f"{class_id}_{n:03d}.jpg"), crop)
    for split, lines in lists.items():
        with open(os.path.join(out, f"{split}_list.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, "label_list.txt"), "w") as f:
        f.writelines(labels)
    return len(lists["train"]), len(lists["val"]), len(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train_per_class", type=int, default=8)
    parser.add_argument("--val_per_class", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    n_train, n_val, n_classes = write(args.out, args.train_per_class, args.val_per_class, args.size)
    print(f"wrote {n_train} train / {n_val} val images of {n_classes} classes to {args.out}")


if __name__ == "__main__":
    main()
