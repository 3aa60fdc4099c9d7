"""Build a DataLoader from `DataLoader.<Train|Eval>` of a PaddleClas config.

The loader yields `(images, labels)`. Underneath, each batch also carries the problems of
samples a worker could not read, which `BadImagePolicy` turns into an error or a logged skip."""

import copy
import random
import signal

import numpy as np
import paddle

from ppcls.data.bad_images import BadImagePolicy
from ppcls.data.dataloader import ImageNetDataset
from ppcls.data.preprocess import BATCH_OPS
from ppcls.data.sampler import SAMPLERS
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, DataError
from ppcls.utils.factory import create, create_list, split_spec

DATASETS = {"ImageNetDataset": ImageNetDataset}
LOADER_KEYS = ("num_workers", "use_shared_memory")

# Mixes a batch's first sample seed into the seed of its batch operators.
_BATCH_SEED_SALT = 0x5EED_BA7C


class Collate:
    """Stack a batch's readable samples into [images, labels] and apply the batch operators
    (seeded by the batch). A batch with unreadable samples gets a third item, their
    problems as strings, which Paddle's loader passes through untensorised; clean batches
    keep the plain two-item form, so they cost nothing extra."""

    def __init__(self, batch_ops):
        self.batch_ops = batch_ops

    def __call__(self, samples):
        problems = [s[3] for s in samples if s[0] is None]
        good = [s for s in samples if s[0] is not None]
        if not good:  # nothing to stack; the policy stops on an all-bad batch
            return [np.zeros((1,), np.float32), np.zeros((0,), np.int64), problems]
        images = np.stack([s[0] for s in good])
        labels = np.array([s[1] for s in good], dtype=np.int64)
        if self.batch_ops:
            rng = random.Random(samples[0][2] ^ _BATCH_SEED_SALT)
            for op in self.batch_ops:
                images, labels = op(images, labels, rng)
        return [images, labels, problems] if problems else [images, labels]


def ignore_stop_signals(worker_id):
    """Loader workers ignore SIGINT and SIGTERM. Ctrl-C and `launch` signal whole process
    groups, and a worker killed by them would make Paddle abort the training process
    mid-step (from its SIGCHLD handler) before it can save `latest`. The training process
    ends its workers itself, and they exit when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ClassificationLoader:
    """A paddle DataLoader of (images, labels) batches with the bad-image policy applied."""

    def __init__(self, loader, policy):
        self.loader, self.policy = loader, policy
        self.batch_sampler, self.dataset = loader.batch_sampler, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        """Starts the loader (and its workers) now, like Paddle's; close the returned
        generator, or exhaust it, to end them."""
        self.policy.start_pass()
        return self._checked(iter(self.loader))

    def _checked(self, batches):
        try:
            for batch in batches:
                if len(batch) == 3:
                    self.policy.handle(batch[2], batch_size=len(batch[2]) + len(batch[1]))
                yield batch[0], batch[1]
        finally:
            # Now, not at garbage collection: workers ignore SIGTERM, so one still alive at
            # interpreter exit would block multiprocessing's exit handler.
            getattr(batches, "_try_shutdown_all", lambda: None)()


def build_dataset(section, where, mode):
    spec = copy.deepcopy(section.get("dataset"))
    if not spec:
        raise ConfigError(f"{where}.dataset is missing")
    name, args = split_spec(spec, f"{where}.dataset")
    batch_specs = args.pop("batch_transform_ops", None)
    if args.get("on_bad_image") is None:  # training skips bad files, evaluation counts all
        args["on_bad_image"] = "skip" if mode == "Train" else "fail"
    try:
        dataset = create(DATASETS, name, args, f"{where}.dataset", kind="dataset")
    except (ConfigError, DataError) as err:  # the dataset cannot know which section it is
        raise type(err)(str(err).replace("DataLoader.*", where)) from None
    return dataset, batch_specs


def build_dataloader(config, mode, seed, class_num):
    """`mode` is "Train" or "Eval". Training shards are padded so every rank steps together;
    evaluation shards are not, so no sample is counted twice."""
    where = f"DataLoader.{mode}"
    section = (config.get("DataLoader") or {}).get(mode)
    if not section:
        raise ConfigError(f"{where} is missing from the config")
    dataset, batch_specs = build_dataset(section, where, mode)
    dataset.check_labels(class_num, f"{where}.dataset.cls_label_path")
    if dataset.dropped:
        logger.warning("%s: left out %d listed image(s) that do not exist, first: %s", where,
                       len(dataset.dropped), "; ".join(" ".join(d) for d in dataset.dropped[:5]))
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
    loader = paddle.io.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collate(batch_ops),
        worker_init_fn=ignore_stop_signals,
        num_workers=int(loader_args.get("num_workers", 0)),
        use_shared_memory=bool(loader_args.get("use_shared_memory", True)),
        return_list=True)
    return ClassificationLoader(loader, BadImagePolicy(dataset, where, sampler.shard_size()))
