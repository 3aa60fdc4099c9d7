"""Build a DataLoader from `DataLoader.<Train|Eval>` of a PaddleClas config.

The loader yields `(images, labels)`: normalised float CHW images, as the config's
transform_ops end. Underneath, when those end with NormalizeImage (and ToCHWImage), workers
stop before it and send uint8 HWC batches, a quarter of the bytes through shared memory and
to the GPU; the training process then normalises them on the device (`DeviceNormalize`)
and applies the batch operators' Mixup/CutMix plan there (`mix_images`), with the numbers
the workers would have used. Each batch also carries the problems of samples a worker could
not read, which `BadImagePolicy` turns into an error or a logged skip."""

import copy
import ctypes
import os
import random
import signal
import sys
from typing import NamedTuple

import numpy as np
import paddle

from ppcls.data.bad_images import BadImagePolicy
from ppcls.data.dataloader import ImageNetDataset
from ppcls.data.preprocess import BATCH_OPS, NormalizeImage, ToCHWImage, build_transforms
from ppcls.data.preprocess.batch_ops import mix_images
from ppcls.data.sampler import SAMPLERS
from ppcls.utils import logger
from ppcls.utils.errors import ConfigError, DataError, unknown
from ppcls.utils.factory import check, create, create_list, split_spec
from ppcls.utils.schema import LOADER, read_section

DATASETS = {"ImageNetDataset": ImageNetDataset}
SECTION_KEYS = ("dataset", "sampler", "loader")  # of DataLoader.<Train|Eval>
SHARED_MEMORY_DIR = "/dev/shm"
# Paddle's DataLoader keeps prefetch_factor (2) batches per worker under way and as many
# per device in its queue to the training process, all in shared memory.
PREFETCH_FACTOR = 2

# Mixes a batch's first sample seed into the seed of its batch operators.
_BATCH_SEED_SALT = 0x5EED_BA7C


class Collate:
    """Stack a batch's readable samples into [images, labels, mix, problems] and apply the
    batch operators (seeded by the batch). With `mix_later`, images stay uint8 NHWC and
    `mix` is the batch operator's plan (a dict; Paddle's loader makes its array a tensor
    and passes numbers through), to apply after normalisation; otherwise the images are
    mixed here and `mix` is empty. `problems` names the unreadable samples, as strings
    that the loader passes through untensorised."""

    def __init__(self, batch_ops, mix_later):
        self.batch_ops, self.mix_later = batch_ops, mix_later

    def __call__(self, samples):
        problems = [s[3] for s in samples if s[0] is None]
        good = [s for s in samples if s[0] is not None]
        if not good:  # nothing to stack; the policy stops on an all-bad batch
            return [np.zeros((1,), np.float32), np.zeros((0,), np.int64), {}, problems]
        images = np.stack([s[0] for s in good])
        labels = np.array([s[1] for s in good], dtype=np.int64)
        mix = {}
        rng = random.Random(samples[0][2] ^ _BATCH_SEED_SALT)
        for op in self.batch_ops:
            if self.mix_later:
                labels, mix = op.plan(labels, rng, images.shape[1:3])
            else:
                images, labels = op(images, labels, rng)
        return [images, labels, mix, problems]


class DeviceNormalize:
    """NormalizeImage, moved from the workers to the device: uint8 NHWC batch in,
    (x * scale - mean) / std as NCHW float32 (float16 with output_fp16) out, computed in
    float32 with the operator's own numbers."""

    def __init__(self, op):
        self.scale = op.scale
        self.mean = op.mean.reshape(1, -1, 1, 1)
        self.std = op.std.reshape(1, -1, 1, 1)
        self.dtype = "float16" if op.dtype == np.float16 else "float32"
        self.on_device = None  # (mean, std) tensors, made where the first batch arrives

    def __call__(self, images):
        if self.on_device is None:
            self.on_device = [paddle.to_tensor(v, place=images.place)
                              for v in (self.mean, self.std)]
        mean, std = self.on_device
        x = (images.transpose([0, 3, 1, 2]).astype("float32") * self.scale - mean) / std
        return x.astype(self.dtype) if self.dtype != "float32" else x


def split_normalize(dataset):
    """When the dataset's operators end with NormalizeImage (HWC) and maybe ToCHWImage, or
    ToCHWImage and a CHW NormalizeImage, take them off the dataset, whose workers then
    give uint8 HWC images, and return the device step that replaces them; else None (an
    operator after normalisation, such as RandomErasing, keeps all of it in the workers)."""
    ops = dataset.ops
    kinds = [type(op) for op in ops[-2:]]
    if kinds == [ToCHWImage, NormalizeImage]:
        tail = 2
    elif kinds[-1:] == [NormalizeImage]:
        tail = 1
    elif kinds == [NormalizeImage, ToCHWImage]:
        tail = 2
    else:
        return None
    normalize = next(op for op in ops[-tail:] if isinstance(op, NormalizeImage))
    if (tail == 2 and kinds[0] is ToCHWImage) != (normalize.mean.shape[0] == 3):
        return None  # the order does not match the layout; leave the config's own path
    dataset.ops, dataset.transpose = ops[:-tail], False
    return DeviceNormalize(normalize)


class WorkerSetup:
    """Run in each loader worker as it starts.

    Workers ignore SIGINT and SIGTERM: Ctrl-C and `launch` signal whole process groups, and
    a worker killed by them would make Paddle abort the training process mid-step (from its
    SIGCHLD handler) before it can save `latest`. The training process ends its workers
    itself; if it is killed outright (SIGKILL, the OOM killer) it cannot, and a worker then
    waited on its pipe for good, holding its batches in /dev/shm. So each worker asks the
    kernel (Linux's PR_SET_PDEATHSIG) to kill it when the training process dies."""

    PR_SET_PDEATHSIG = 1

    def __init__(self):
        self.parent = os.getpid()  # the training process, which builds the loader

    def __call__(self, worker_id):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._die_with_parent()

    def _die_with_parent(self):
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(self.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent:  # it died before the request was in place
            os._exit(1)


class ClassificationLoader:
    """A paddle DataLoader of (images, labels) batches with the bad-image policy applied,
    normalised and mixed on the device when the workers left that to it."""

    def __init__(self, loader, policy, normalize=None):
        self.loader, self.policy, self.normalize = loader, policy, normalize
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
            for images, labels, mix, problems in batches:
                if problems:
                    self.policy.handle(problems, batch_size=len(problems) + len(labels))
                if self.normalize is not None:
                    images = mix_images(self.normalize(images), mix)
                yield images, labels
        finally:
            # Now, not at garbage collection: workers ignore SIGTERM, so one still alive at
            # interpreter exit would block multiprocessing's exit handler.
            getattr(batches, "_try_shutdown_all", lambda: None)()


def check_shared_memory(batch_bytes, num_workers, where, directory=SHARED_MEMORY_DIR):
    """One clear line, before any worker starts, when the batches in flight will not fit in
    /dev/shm (Docker's default is 64 MB): a worker that runs out of it dies of SIGBUS."""
    try:
        stat = os.statvfs(directory)
    except OSError:  # no such filesystem here: nothing to check
        return
    free = stat.f_bavail * stat.f_frsize
    need = batch_bytes * PREFETCH_FACTOR * (num_workers + 1)
    if need > free:
        raise ConfigError(
            f"{where}.loader: {num_workers} workers keep about {need / 2**20:.0f} MB of batches "
            f"in shared memory, but {directory} has {free / 2**20:.0f} MB free: enlarge it "
            f"(docker run --shm-size=...), lower num_workers or sampler.batch_size, or set "
            f"{where}.loader.use_shared_memory: False")


def sample_bytes(dataset):
    """Bytes of one sample as the workers send it (the first readable of a few), or 0."""
    for index in range(min(len(dataset), 4)):
        image = dataset[(index, 0)][0]
        if image is not None:
            return image.nbytes
    return 0


class LoaderSection(NamedTuple):
    """DataLoader.<Train|Eval> of a config, split into what builds the loader."""

    where: str  # "DataLoader.Train"
    dataset: str
    dataset_args: dict  # without batch_transform_ops
    batch_ops: list  # their config entries, or None
    sampler: str
    sampler_args: dict
    loader: dict  # LOADER's keys, typed, with their defaults


def read_loader_section(config, mode):
    """DataLoader.<mode>, every key of it known and the loader's values typed (the same
    steps, and messages, for the config check and the builder); None when absent."""
    where = f"DataLoader.{mode}"
    section = (config.get("DataLoader") or {}).get(mode)
    if not section:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping")
    for key in section:
        if key not in SECTION_KEYS:
            raise ConfigError(f"{where}: {unknown('key', key, SECTION_KEYS)}")
    spec = copy.deepcopy(section.get("dataset"))
    if not spec:
        raise ConfigError(f"{where}.dataset is missing")
    name, args = split_spec(spec, f"{where}.dataset")
    batch_ops = args.pop("batch_transform_ops", None)
    sampler, sampler_args = split_spec(section.get("sampler") or {}, f"{where}.sampler")
    loader = read_section(section.get("loader"), LOADER, f"{where}.loader")
    return LoaderSection(where, name, args, batch_ops, sampler, sampler_args, loader)


def sampler_inputs(dataset=None, seed=0, mode="Train"):
    """What the loader gives a sampler, which a config may not: the dataset, the common
    seed, and whether shards are padded (in training, so that every rank steps together)."""
    return {"dataset": dataset, "seed": seed, "pad": mode == "Train"}


def batch_operators(section, class_num):
    return create_list(BATCH_OPS, section.batch_ops, f"{section.where}.dataset.batch_transform_ops",
                       kind="batch operator", injected={"class_num": class_num})


def check_dataloader(config, mode):
    """DataLoader.<mode> checked by the rules that build it, without reading any data.
    Absent, it is required only where it is used, which says so."""
    section = read_loader_section(config, mode)
    if section is None:
        return
    where = section.where
    check(DATASETS, section.dataset, section.dataset_args, f"{where}.dataset", kind="dataset")
    build_transforms(section.dataset_args.get("transform_ops"), f"{where}.dataset.transform_ops")
    batch_operators(section, config["Global"]["class_num"])
    check(SAMPLERS, section.sampler, section.sampler_args, f"{where}.sampler", kind="sampler",
          injected=sampler_inputs())


def build_dataset(section, mode):
    args = dict(section.dataset_args)
    if args.get("on_bad_image") is None:  # training skips bad files, evaluation counts all
        args["on_bad_image"] = "skip" if mode == "Train" else "fail"
    try:
        return create(DATASETS, section.dataset, args, f"{section.where}.dataset", kind="dataset")
    except (ConfigError, DataError) as err:  # the dataset cannot know which section it is
        raise type(err)(str(err).replace("DataLoader.*", section.where)) from None


def build_dataloader(config, mode, seed, class_num, normalize_on_device=None):
    """`mode` is "Train" or "Eval". Training shards are padded so every rank steps together;
    evaluation shards are not, so no sample is counted twice. `normalize_on_device`: move
    NormalizeImage and the batch operators' mixing to the device (see the module's doc);
    by default on a GPU only: on a CPU it would only move that work from the loader workers
    into the training process."""
    section = read_loader_section(config, mode)
    if section is None:
        raise ConfigError(f"DataLoader.{mode} is missing from the config")
    where = section.where
    dataset = build_dataset(section, mode)
    dataset.check_labels(class_num, f"{where}.dataset.cls_label_path")
    if dataset.dropped:
        logger.warning("%s: left out %d listed image(s) that do not exist, first: %s", where,
                       len(dataset.dropped), "; ".join(" ".join(d) for d in dataset.dropped[:5]))
    batch_ops = batch_operators(section, class_num)
    sampler = create(SAMPLERS, section.sampler, section.sampler_args, f"{where}.sampler",
                     kind="sampler", injected=sampler_inputs(dataset, seed, mode))
    if normalize_on_device is None:
        normalize_on_device = paddle.device.get_device().startswith("gpu")
    # Plans of several batch operators in a row would not compose: those mix in the workers.
    normalize = split_normalize(dataset) if normalize_on_device and len(batch_ops) <= 1 else None
    dataset.settle_output_shape()  # with the operators the workers will run
    workers = section.loader["num_workers"]
    if section.loader["use_shared_memory"] and workers > 0:
        check_shared_memory(sample_bytes(dataset) * sampler.batch_size, workers, where)
    loader = paddle.io.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Collate(batch_ops, normalize is not None),
        worker_init_fn=WorkerSetup(), return_list=True, **section.loader)
    return ClassificationLoader(loader, BadImagePolicy(dataset, where, sampler.shard_size()),
                                normalize)
