"""Build a DataLoader from `DataLoader.<Train|Eval>` of a PaddleClas config."""

import copy
import random

import numpy as np
import paddle

from ppcls.data.dataloader import ImageNetDataset
from ppcls.data.preprocess import BATCH_OPS
from ppcls.data.sampler import SAMPLERS
from ppcls.utils.errors import ConfigError
from ppcls.utils.factory import create, create_list, split_spec

DATASETS = {"ImageNetDataset": ImageNetDataset}
LOADER_KEYS = ("num_workers", "use_shared_memory")

# Mixes a batch's first sample seed into the seed of its batch operators.
_BATCH_SEED_SALT = 0x5EED_BA7C


class Collate:
    """Stack a batch (images, labels) and apply the batch operators, seeded by the batch."""

    def __init__(self, batch_ops):
        self.batch_ops = batch_ops

    def __call__(self, samples):
        images = np.stack([s[0] for s in samples])
        labels = np.array([s[1] for s in samples], dtype=np.int64)
        if self.batch_ops:
            rng = random.Random(samples[0][2] ^ _BATCH_SEED_SALT)
            for op in self.batch_ops:
                images, labels = op(images, labels, rng)
        return [images, labels]


def build_dataset(section, where):
    spec = copy.deepcopy(section.get("dataset"))
    if not spec:
        raise ConfigError(f"{where}.dataset is missing")
    name, args = split_spec(spec, f"{where}.dataset")
    batch_specs = args.pop("batch_transform_ops", None)
    dataset = create(DATASETS, name, args, f"{where}.dataset", kind="dataset")
    return dataset, batch_specs


def build_dataloader(config, mode, seed, class_num):
    """`mode` is "Train" or "Eval". Training shards are padded so every rank steps together;
    evaluation shards are not, so no sample is counted twice."""
    where = f"DataLoader.{mode}"
    section = (config.get("DataLoader") or {}).get(mode)
    if not section:
        raise ConfigError(f"{where} is missing from the config")
    dataset, batch_specs = build_dataset(section, where)
    batch_ops = create_list(BATCH_OPS, batch_specs, f"{where}.dataset.batch_transform_ops",
                            kind="batch operator", injected={"class_num": class_num})
    sampler_name, sampler_args = split_spec(section.get("sampler") or {}, f"{where}.sampler")
    sampler = create(SAMPLERS, sampler_name, sampler_args, f"{where}.sampler", kind="sampler",
                     injected={"dataset": dataset, "seed": seed, "pad": mode == "Train"})
    loader_args = dict(section.get("loader") or {})
    for key in loader_args:
        if key not in LOADER_KEYS:
            raise ConfigError(f"{where}.loader: unknown key {key!r}; allowed: "
                              + ", ".join(LOADER_KEYS))
    return paddle.io.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collate(batch_ops),
        num_workers=int(loader_args.get("num_workers", 0)),
        use_shared_memory=bool(loader_args.get("use_shared_memory", True)),
        return_list=True)
