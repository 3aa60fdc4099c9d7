"""Batch samplers that own an epoch's randomness.

Each epoch's order and every sample's augmentation seed are functions of (seed, epoch), so
any rank or worker sees the same plan and a resumed epoch replays exactly; `start_batch`
skips batches already trained on. All ranks must use the same seed (the engine broadcasts
rank 0's): rank r then takes positions r, r + W, r + 2W, ... of one shared permutation,
so across the W ranks every sample is trained on exactly once per epoch, except that

  - training shards are padded to equal length (every rank must step together): when W
    does not divide the N samples, the first ceil(N / W) * W - N samples of the epoch's
    permutation are trained on twice;
  - with `drop_last`, each rank leaves out its last partial batch that epoch (the
    permutation, and so which samples, changes every epoch).

Evaluation shards are contiguous and never padded, so no sample is counted twice.
"""

import math

import numpy as np
import paddle.distributed as dist

from ppcls.utils.errors import ConfigError, shown


class DistributedBatchSampler:
    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0,
                 pad=True, num_replicas=None, rank=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"sampler.batch_size must be a positive integer, got {shown(batch_size)}")
        self.dataset_size = len(dataset)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.pad = seed, pad
        self.num_replicas = num_replicas if num_replicas is not None else dist.get_world_size()
        self.rank = rank if rank is not None else dist.get_rank()
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start_batch = epoch, start_batch

    def _shard(self):
        """(indices, sample seeds) of this rank for the current epoch."""
        n, replicas = self.dataset_size, self.num_replicas
        plan = np.random.default_rng([self.seed, self.epoch])
        order = plan.permutation(n) if self.shuffle else np.arange(n)
        per_rank = math.ceil(n / replicas)
        if self.pad:
            order = np.resize(order, per_rank * replicas)  # repeats from the start
            positions = np.arange(self.rank, len(order), replicas)
        else:
            positions = np.arange(self.rank * per_rank, min((self.rank + 1) * per_rank, n))
        seeds = plan.integers(0, 2**62, size=len(order))
        return order[positions], seeds[positions]

    def epoch_indices(self):
        """The sample indices this rank trains on in the current epoch, in order."""
        return self._shard()[0][: len(self) * self.batch_size]

    def __iter__(self):
        indices, seeds = self._shard()
        batches = len(self)
        for b in range(self.start_batch, batches):
            chunk = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(i), int(s)) for i, s in zip(indices[chunk], seeds[chunk])]

    def shard_size(self):
        n = self.dataset_size
        per_rank = math.ceil(n / self.num_replicas)
        return per_rank if self.pad else max(0, min(per_rank, n - self.rank * per_rank))

    def __len__(self):
        size = self.shard_size()
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)


class BatchSampler(DistributedBatchSampler):
    """Single-process sampler (PaddleClas's `BatchSampler` name): one replica."""

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0):
        super().__init__(dataset, batch_size, shuffle, drop_last, seed, pad=False,
                         num_replicas=1, rank=0)


SAMPLERS = {"DistributedBatchSampler": DistributedBatchSampler, "BatchSampler": BatchSampler}
